// Issue 4 acceptance c and d, with nodes as separate processes: ANY 2 of
// three nodes as synchronous standbys with nodes SIGKILLed, and a node
// SIGKILLed at random moments under pgbench — nothing it acknowledged is
// ever lost, and the final WAL is byte-identical.

import { spawn } from 'node:child_process';
import path from 'node:path';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import {
  commitRecordEnds,
  compareWalDirs,
  createTempDir,
  lsnOf,
  pgToolPath,
  registerCleanupHooks,
  startNodeProcess,
  startPostgres,
  type NodeProcess,
  type PgCluster,
  type TempDir,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-crash-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

const conninfoOf = (pg: PgCluster) => `host=127.0.0.1 port=${pg.port} user=postgres`;

async function nodeFlush(n: NodeProcess): Promise<bigint> {
  for (;;) {
    const st = await n.status();
    if (st) return lsnOf(st.flush_lsn);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("ANY 2 of three nodes: with one node SIGKILLed commits keep completing; with two killed they wait", async (t) => {
  const pg = await startPostgres({
    walSegSizeMB: 1,
    conf: { synchronous_standby_names: 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)', synchronous_commit: 'on' },
  });
  t.teardown(() => pg.destroy());
  const nodes = await Promise.all(
    [1, 2, 3].map((id) => startNodeProcess({ dataDir: path.join(tmp.path, `q${id}`), nodeId: id, upstream: conninfoOf(pg) })),
  );
  t.teardown(() => Promise.all(nodes.map((n) => n.kill())));
  await pg.query('CREATE TABLE t (id int)');
  await pg.query('INSERT INTO t VALUES (1)');
  // All three streaming and counted in the quorum (a node is 'async' until it caught up).
  for (;;) {
    const rep = await pg.query<{ sync_state: string }>("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'");
    if (rep.length === 3 && rep.every((r) => r.sync_state === 'quorum')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await nodes[0]!.kill();
  await pg.query('INSERT INTO t VALUES (2)');
  await pg.query('INSERT INTO t VALUES (3)');
  t.pass('commits complete with one node down');
  await nodes[1]!.kill();
  const c = await pg.connect();
  c.on('error', () => undefined); // the server going away at the end of the test
  t.teardown(() => c.end().catch(() => undefined));
  const [{ pid }] = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
  let done = false;
  const insert = c.query('INSERT INTO t VALUES (4)').then(() => (done = true));
  await pg.waitSyncRep(pid);
  t.false(done, 'with two nodes down the commit waits');
  await nodes[1]!.start();
  await insert;
  t.true(done, 'and completes when a second node is back');
});

test('kill -9 of a node at random moments under pgbench: every commit pgbench saw acknowledged is within the restarted node, and the WAL ends byte-identical', async (t) => {
  const pg = await startPostgres({
    walSegSizeMB: 1,
    conf: { synchronous_standby_names: 'walkeeper_1', synchronous_commit: 'on', wal_keep_size: '512MB', autovacuum: 'off' },
  });
  t.teardown(() => pg.destroy());
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'd'), nodeId: 1, upstream: conninfoOf(pg) });
  t.teardown(() => node.kill());
  await pg.query('CREATE TABLE tracked (id bigserial primary key, xid bigint, v text)');
  const init = spawn(pgToolPath('pgbench'), ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  await new Promise((r) => init.on('exit', r));
  // Load: pgbench for the whole test.
  const bench = spawn(pgToolPath('pgbench'), ['-c', '2', '-T', '600', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
  t.teardown(() => bench.kill('SIGKILL'));
  // Tracked commits: the xids whose COMMIT returned, i.e. that the node acknowledged.
  const c = await pg.connect();
  c.on('error', () => undefined); // the server going away at the end of the test
  t.teardown(() => c.end().catch(() => undefined));
  const committed: bigint[] = [];
  let stop = false;
  const tracker = (async () => {
    while (!stop) {
      await c.query('BEGIN');
      const { rows } = await c.query<{ x: string }>("INSERT INTO tracked (xid, v) VALUES (txid_current(), repeat('x', 300)) RETURNING txid_current()::text AS x");
      await c.query('COMMIT');
      committed.push(BigInt(rows[0]!.x));
    }
  })();
  const checkpoints: { acked: bigint[]; flushAfterRestart: bigint }[] = [];
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 900)));
    const acked = [...committed];
    await node.kill();
    await node.start();
    checkpoints.push({ acked, flushAfterRestart: await nodeFlush(node) });
  }
  stop = true;
  bench.kill('SIGINT');
  await tracker;
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CHECKPOINT');
  const [{ l }] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  const end = lsnOf(l);
  for (;;) {
    if ((await nodeFlush(node)) >= end) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  // Where each tracked commit record ends, from the primary's own WAL.
  await pg.stop();
  const oldest = lsnOf(((await node.status()) as unknown as { oldest_lsn: string }).oldest_lsn);
  const byXid = await commitRecordEnds(pg.walDir, SEG, oldest);
  let checked = 0;
  for (const [i, cp] of checkpoints.entries()) {
    for (const x of cp.acked) {
      const e = byXid.get(x);
      t.truthy(e, `commit record of xid ${x}`);
      if (e === undefined) continue;
      if (e > cp.flushAfterRestart) t.fail(`after kill ${i + 1}: xid ${x} committed (ends ${formatLsn(e)}) but the node's flush_lsn is ${formatLsn(cp.flushAfterRestart)}`);
      checked++;
    }
  }
  t.log(`${committed.length} tracked commits; ${checked} checks over ${checkpoints.length} kills; flush after each restart: ${checkpoints.map((c) => formatLsn(c.flushAfterRestart)).join(' ')}`);
  t.true(checkpoints.every((cp) => cp.acked.length > 0), 'commits happened before every kill');
  const streamDir = path.join(tmp.path, 'd', 'streams', 'main');
  // The node also has the shutdown checkpoint the primary wrote after `end`: compare up to `end`.
  t.deepEqual(await compareWalDirs(streamDir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours', partialTail: 'ignore' }), []);
});
