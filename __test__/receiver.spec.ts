// Issue 5 acceptance b (and issue 6 e): three nodes follow one primary
// under pgbench; `walkeeper receive` follows them, given by --nodes or found
// through etcd with --broker; the node it streams from is SIGKILLed: it
// switches, writes no gap and no duplicate, and the final directory is
// byte-identical to the primary's WAL.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test, { type ExecutionContext } from 'ava';

import {
  compareWalDirs,
  createTempDir,
  lsnOf,
  pgToolPath,
  registerCleanupHooks,
  startNodeProcess,
  startPostgres,
  until,
  type TempDir,
} from './harness/index.js';
import { etcdAvailable, startEtcd, type EtcdServer } from './harness/etcd.js';

registerCleanupHooks(test);

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'dist', 'cli', 'main.js');
const SEG = 1024 * 1024;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-receive-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

async function failover(t: ExecutionContext, mode: 'nodes' | 'broker' | 'nopump'): Promise<void> {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const conninfo = `host=127.0.0.1 port=${pg.port} user=postgres`;
  let etcd: EtcdServer | null = null;
  if (mode === 'broker') {
    etcd = await startEtcd(path.join(tmp.path, mode));
    t.teardown(() => etcd!.stop());
  }
  const extraArgs = etcd ? ['--broker', etcd.endpoint] : [];
  const nodes = await Promise.all([1, 2, 3].map((id) => startNodeProcess({ dataDir: path.join(tmp.path, mode, `n${id}`), nodeId: id, upstream: conninfo, extraArgs })));
  t.teardown(() => Promise.all(nodes.map((n) => n.kill())));
  await until(() => true, '');
  for (const n of nodes) {
    for (;;) {
      const st = await n.status();
      if (st && st.upstream?.state === 'streaming') break;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const init = spawn(pgToolPath('pgbench'), ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  await new Promise((r) => init.on('exit', r));
  const bench = spawn(pgToolPath('pgbench'), ['-c', '2', '-T', '600', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  t.teardown(() => bench.kill('SIGKILL'));

  const dir = path.join(tmp.path, mode, 'received');
  const where = etcd ? ['--broker', etcd.endpoint] : ['--nodes', nodes.map((n) => n.httpUrl).join(',')];
  // nopump: the WAL goes through JavaScript (the receiver's iterator and the CLI's writer), as on Windows.
  const env = mode === 'nopump' ? { ...process.env, WALKEEPER_RECEIVE_PUMP: '0' } : process.env;
  const rx = spawn(process.execPath, [bin, 'receive', ...where, '-D', dir], { stdio: ['ignore', 'ignore', 'pipe'], env });
  t.teardown(() => rx.kill('SIGKILL'));
  let out = '';
  rx.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((r) => rx.on('exit', (c) => r(c)));
  const streamingFrom = () => [...out.matchAll(/streaming from (\S+) \(/g)].map((m) => m[1]!);
  await until(() => streamingFrom().length > 0, 'the receiver to pick a node');
  await new Promise((r) => setTimeout(r, 1500));
  const first = streamingFrom()[0]!;
  const victim = nodes.find((n) => n.httpUrl === first)!;
  const killedAt = Date.now();
  await victim.kill();
  await until(() => streamingFrom().length > 1, 'a switch', 30_000);
  const switchedAfter = Date.now() - killedAt;
  const lines = out.split('\n').filter((l) => l.includes('streaming from'));
  t.log(`switched ${switchedAfter} ms after the kill: ${lines.at(-1)}`);
  t.not(streamingFrom().at(-1), first);
  t.regex(lines.at(-1)!, /NoExistingConnection/);
  await new Promise((r) => setTimeout(r, 1500));
  bench.kill('SIGINT');
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CHECKPOINT');
  const [{ l }] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  const end = lsnOf(l);
  // Wait until the receiver's directory holds everything up to `end`.
  let diffs: string[] = ['not compared yet'];
  for (let i = 0; i < 300 && diffs.length > 0; i++) {
    diffs = await compareWalDirs(dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours', partialTail: 'ignore' });
    if (diffs.length) await new Promise((r) => setTimeout(r, 100));
  }
  rx.kill('SIGINT');
  t.is(await exited, 0, out);
  t.deepEqual(await compareWalDirs(dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours', partialTail: 'ignore' }), []);
}

test('walkeeper receive fails over when its node is SIGKILLed, with no gap or duplicate, ending byte-identical to the primary', async (t) => {
  await failover(t, 'nodes');
});

test('walkeeper receive without the Rust pump (WALKEEPER_RECEIVE_PUMP=0, the Windows path) fails over the same way', async (t) => {
  await failover(t, 'nopump');
});

test('walkeeper receive --broker finds the nodes in etcd and fails over the same way', async (t) => {
  if (!etcdAvailable()) return t.fail('etcd is not installed (apt-get install etcd-server); .ci/run installs it');
  await failover(t, 'broker');
});
