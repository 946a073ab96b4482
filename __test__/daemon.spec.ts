// Issue 7 acceptance d, and `walkeeper status`: SIGTERM while a
// pg_receivewal streams under load — the node exits 0 within 10 s, the
// pg_receivewal got everything the node had committed, and a restart
// resumes (following the primary, serving the same directory again).

import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn, parseLsn } from '../ts/lsn.js';
import { readControlFile } from '../ts/wal/control_file.js';
import {
  compareWalDirs,
  createTempDir,
  lsnOf,
  pgToolPath,
  registerCleanupHooks,
  runCli,
  startNodeProcess,
  startPostgres,
  startReceivewal,
  until,
  type TempDir,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-daemon-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('SIGTERM during streaming: exit 0 within 10 s, pg_receivewal has all the node committed, a restart resumes; walkeeper status shows it all', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const dataDir = path.join(tmp.path, 'node');
  const node = await startNodeProcess({ dataDir, upstream: `host=127.0.0.1 port=${pg.port} user=postgres` });
  t.teardown(() => node.kill());
  const init = spawn(pgToolPath('pgbench'), ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  await new Promise((r) => init.on('exit', r));
  await until(async () => (await node.status())?.upstream?.state === 'streaming', 'the node to follow');

  // walkeeper status, as a table and as JSON.
  const table = await runCli(['status', '--http', node.httpUrl]);
  t.is(table.code, 0, table.stderr);
  t.regex(table.stdout, /^node 1 at http:\/\/127\.0\.0\.1:\d+$/m);
  t.regex(table.stdout, /^stream +state +tli +flush_lsn +commit_lsn/m);
  t.regex(table.stdout, /^main +active +1 +\d+\/[0-9A-F]+ +\d+\/[0-9A-F]+ .* streaming 127\.0\.0\.1:\d+/m);
  const json = await runCli(['status', '--http', node.httpUrl, '--json']);
  const docs = JSON.parse(json.stdout) as { name: string; flush_lsn: string }[];
  t.is(docs[0]!.name, 'main');
  t.true(parseLsn(docs[0]!.flush_lsn) > 0n);
  const down = await runCli(['status', '--http', 'http://127.0.0.1:9']);
  t.is(down.code, 1);
  t.regex(down.stderr, /^walkeeper: cannot read the node's status at http:\/\/127\.0\.0\.1:9: /);

  const dir = path.join(tmp.path, 'rw');
  const rw = startReceivewal({ host: '127.0.0.1', port: node.pgPort, dir, noLoop: true });
  t.teardown(() => rw.stop().then(() => undefined));
  await until(async () => ((await node.status())?.replicas.length ?? 0) > 0, 'pg_receivewal to connect');
  const bench = spawn(pgToolPath('pgbench'), ['-c', '2', '-T', '600', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  t.teardown(() => bench.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 1500));

  const t0 = Date.now();
  const code = await node.stop();
  const took = Date.now() - t0;
  t.is(code, 0, node.output.slice(-2000));
  t.true(took < 10_000, `stopped in ${took} ms`);
  t.log(`SIGTERM under load: exit 0 after ${took} ms`);
  const control = (await readControlFile(path.join(dataDir, 'streams', 'main')))!;
  const committed = control.commitLsn;
  // pg_receivewal ends when the node ends its stream (--no-loop) and holds all that was committed.
  const rwEnd = await rw.wait(20_000);
  t.regex(rwEnd.stderr, /(not renaming|replication stream was terminated|COPY stream ended|server closed|could not)/i);
  // Every segment of the primary from pg_receivewal's first one up to the
  // committed end must be there, equal up to it — and zeros after it: the
  // node served nothing beyond what it had committed.
  const first = (await readdir(dir)).filter((n) => /^[0-9A-F]{24}(\.partial)?$/.test(n)).sort()[0]!;
  const startLsn = BigInt(`0x${first.slice(8, 16)}`) * 0x100000000n + BigInt(`0x${first.slice(16, 24)}`) * BigInt(SEG) + 1n;
  t.deepEqual(await compareWalDirs(dir, pg.walDir, { segSize: SEG, startLsn, endLsn: committed, segments: 'theirs', partialTail: 'zeros' }), [], `pg_receivewal holds everything up to ${formatLsn(committed)}`);

  // Restart: the node resumes where it was and follows the primary again; pg_receivewal resumes too.
  await node.start();
  const back = await node.status();
  t.true(parseLsn(back!.flush_lsn) >= committed, `restarted at ${back!.flush_lsn} ≥ ${formatLsn(committed)}`);
  await until(async () => (await node.status())?.upstream?.state === 'streaming', 'the node to follow again');
  const rw2 = startReceivewal({ host: '127.0.0.1', port: node.pgPort, dir, noLoop: true });
  t.teardown(() => rw2.stop().then(() => undefined));
  bench.kill('SIGINT');
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CHECKPOINT');
  const [{ l }] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  const end = lsnOf(l);
  const same = () => compareWalDirs(dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours', partialTail: 'ignore' }).then((d) => d.length === 0, () => false);
  await until(same, 'pg_receivewal to continue to the end, identical to the primary', 60_000);
  t.pass();
});
