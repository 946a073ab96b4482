// Issue 4 acceptance a, b and e: a node follows a real PostgreSQL 15
// primary — byte-identical segments under pgbench, counted as a
// synchronous standby, through primary restarts and a promotion.

import { copyFile, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import {
  basebackup,
  compareWalDirs,
  createTempDir,
  lsnOf,
  registerCleanupHooks,
  runPgTool,
  startPostgres,
  startReceivewal,
  startStandby,
  startTestNode,
  until,
  type PgCluster,
  type TempDir,
  type TestNode,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-ingest-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

const conninfoOf = (pg: PgCluster) => `host=127.0.0.1 port=${pg.port} user=postgres`;

async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

async function waitFlushed(node: TestNode, lsn: bigint, what = 'the node to flush'): Promise<void> {
  await until(() => node.node.streams.get('main') !== undefined && node.node.stream('main').flushLsn >= lsn, `${what} ${formatLsn(lsn)}`, 60_000);
}

async function pgbench(pg: PgCluster, args: string[]): Promise<void> {
  await runPgTool('pgbench', [...args, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 120_000 });
}

test('under pgbench, every complete segment on the node is byte-identical to the primary, and pg_receivewal reading from the node gets the same', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB' } });
  t.teardown(() => pg.destroy());
  const node = await startTestNode({ upstream: conninfoOf(pg), dataDir: path.join(tmp.path, 'a') });
  t.teardown(() => node.stop());
  // A second node on the JavaScript path (what a TLS upstream gets: no descriptor for the Rust pump).
  const js = await startTestNode({ upstream: conninfoOf(pg), dataDir: path.join(tmp.path, 'a-js'), nodeId: 2, ingest: { pump: false } });
  t.teardown(() => js.stop());
  await pgbench(pg, ['-i', '-q', '-s', '2']);
  await pgbench(pg, ['-c', '2', '-T', '3']);
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CHECKPOINT');
  const end = await flushLsn(pg);
  await waitFlushed(node, end);
  const s = node.node.stream('main');
  t.is(s.systemId, await pg.systemId());
  // No peers: commit_lsn follows flush_lsn, at most one gathered commit_lsn write (100 ms) behind, as no client waits on it.
  await until(() => s.commitLsn === s.flushLsn, 'no peers: commit_lsn = flush_lsn', 5000);
  t.is(s.commitLsn, s.flushLsn, 'no peers: commit_lsn = flush_lsn');
  const segs = s.store.list();
  t.true(segs.length >= 5, `${segs.length} segments`);
  t.is(segs[0]!.start % BigInt(SEG), 0n);
  const diffs = await compareWalDirs(s.dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours' });
  t.deepEqual(diffs, []);
  const streaming = (n: TestNode) => n.logs.find((l) => l.msg === 'streaming from the upstream');
  t.is(streaming(node)?.pump, true, 'the node ingests through the Rust pump');
  await waitFlushed(js, end, 'the JavaScript-path node to flush');
  t.is(streaming(js)?.pump, false);
  t.deepEqual(await compareWalDirs(js.node.stream('main').dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), [], 'the JavaScript path stores the same WAL');
  // The upstream shows this node as a streaming standby with its slot.
  const reps = await pg.query<{ application_name: string; state: string; flush_lsn: string }>("SELECT application_name, state, flush_lsn::text FROM pg_stat_replication ORDER BY application_name");
  t.deepEqual(reps.map((r) => [r.application_name, r.state]), [['walkeeper_1', 'streaming'], ['walkeeper_2', 'streaming']]);
  const slots = await pg.query<{ slot_name: string; active: boolean }>("SELECT slot_name, active FROM pg_replication_slots ORDER BY slot_name");
  t.like(slots[0], { slot_name: 'walkeeper_1', active: true });
  // HTTP: upstream state and lag.
  const st = (await (await fetch(`${node.httpUrl}/v1/streams/main`)).json()) as { upstream: Record<string, unknown> };
  t.like(st.upstream, { state: 'streaming', flushed_lsn: formatLsn(s.flushLsn), connected_to: `127.0.0.1:${pg.port}` });
  t.is(typeof st.upstream.lag_bytes, 'number');
  // pg_receivewal from the node.
  const dir = path.join(tmp.path, 'rw-a');
  await mkdir(dir);
  const first = segs[0]!.name.replace('.partial', '');
  await copyFile(path.join(s.dir, first), path.join(dir, first));
  const rw = startReceivewal({ host: node.host, port: node.port, dir, endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(await compareWalDirs(dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), []);
});

test('as synchronous_standby_names: commits complete; with the node stopped a commit waits; when it is back, it completes', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { synchronous_standby_names: 'walkeeper_1', synchronous_commit: 'on' } });
  t.teardown(() => pg.destroy());
  const dataDir = path.join(tmp.path, 'b');
  let node = await startTestNode({ upstream: conninfoOf(pg), dataDir });
  t.teardown(() => node.stop());
  await pg.query('CREATE TABLE t (id int)');
  await pg.query('INSERT INTO t VALUES (1)');
  const [r] = await pg.query<{ sync_state: string }>("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walkeeper_1'");
  t.is(r?.sync_state, 'sync');
  await node.stop();
  const c = await pg.connect();
  c.on('error', () => undefined);
  t.teardown(() => c.end().catch(() => undefined));
  const [{ pid }] = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
  let done = false;
  const insert = c.query('INSERT INTO t VALUES (2)').then(() => (done = true));
  // The backend waits for the synchronous standby (wait_event SyncRep).
  for (;;) {
    const [w] = await pg.query<{ wait_event: string | null }>('SELECT wait_event FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (w?.wait_event === 'SyncRep') break;
    await new Promise((res) => setTimeout(res, 50));
  }
  t.false(done, 'the commit waits while the node is down');
  node = await startTestNode({ upstream: conninfoOf(pg), dataDir });
  await insert;
  t.true(done);
  const [{ n }] = await pg.query<{ n: string }>('SELECT count(*) AS n FROM t');
  t.is(Number(n), 2);
});

test('the primary restarted: the node reconnects and continues', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1 });
  t.teardown(() => pg.destroy());
  const node = await startTestNode({ upstream: conninfoOf(pg), dataDir: path.join(tmp.path, 'e1') });
  t.teardown(() => node.stop());
  await pg.query('CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g');
  await waitFlushed(node, await flushLsn(pg));
  await pg.stop();
  await until(() => node.node.ingest('main')!.state !== 'streaming', 'the node to notice');
  await pg.start();
  await pg.query('INSERT INTO t SELECT g FROM generate_series(1, 10000) g');
  const end = await flushLsn(pg);
  await waitFlushed(node, end, 'the node to continue to');
  t.true(node.node.ingest('main')!.status().reconnects >= 1);
  t.deepEqual(await compareWalDirs(node.node.stream().dir, pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), []);
});

test('a standby promoted to TLI 2, the node re-pointed at it: the node follows onto TLI 2 with the history file, and pg_receivewal from the node follows too', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '64MB' } });
  t.teardown(() => pg.destroy());
  await pg.query('CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g');
  const bb = await basebackup(pg);
  const s1 = await startStandby(bb, { primaryConninfo: conninfoOf(pg), conf: { wal_keep_size: '64MB' } });
  t.teardown(() => s1.destroy());
  const dataDir = path.join(tmp.path, 'e2');
  let node = await startTestNode({ upstream: conninfoOf(pg), dataDir });
  t.teardown(() => node.stop());
  await pg.query('INSERT INTO t SELECT g FROM generate_series(1, 20000) g');
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('INSERT INTO t SELECT g FROM generate_series(1, 20000) g');
  const before = await flushLsn(pg);
  await waitFlushed(node, before);
  await s1.waitReplayed(before, 60_000);
  const firstSeg = node.node.stream().store.list()[0]!.name.replace('.partial', '');
  await pg.stop();
  await node.stop();
  await s1.promote();
  await s1.query('INSERT INTO t SELECT g FROM generate_series(1, 30000) g');
  await s1.query('SELECT pg_switch_wal()');
  await s1.query('INSERT INTO t SELECT g FROM generate_series(1, 1000) g');
  const end = await flushLsn(s1);
  node = await startTestNode({ upstream: conninfoOf(s1), dataDir });
  await waitFlushed(node, end, 'the node to follow onto TLI 2 up to');
  const s = node.node.stream();
  t.is(s.tli, 2);
  const history = await s.historyFile(2);
  t.regex(history ?? '', /^1\t[0-9A-F]+\/[0-9A-F]+\t/);
  t.true((await readdir(s.dir)).includes('00000002.history'));
  const switchLsn = s.timelineEnd(1)!;
  t.deepEqual(await compareWalDirs(s.dir, s1.walDir, { segSize: SEG, endLsn: { 1: switchLsn, 2: end }, segments: 'ours' }), []);
  // pg_receivewal from the node, starting on TLI 1, follows the switch.
  const dir = path.join(tmp.path, 'rw-e2');
  await mkdir(dir);
  await copyFile(path.join(pg.walDir, firstSeg), path.join(dir, firstSeg));
  const rw = startReceivewal({ host: node.host, port: node.port, dir, endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /switched to timeline 2/);
  t.deepEqual(await compareWalDirs(dir, s1.walDir, { segSize: SEG, endLsn: { 1: switchLsn, 2: end }, segments: 'ours' }), []);
});

test("a standby of the node with hot_standby_feedback: its xmin reaches the primary's slot through the node", async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '64MB' } });
  t.teardown(() => pg.destroy());
  await pg.query('CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g');
  const bb = await basebackup(pg);
  const node = await startTestNode({ upstream: conninfoOf(pg), dataDir: path.join(tmp.path, 'h') });
  t.teardown(() => node.stop());
  await waitFlushed(node, await flushLsn(pg));
  const standby = await startStandby(bb, { primaryConninfo: node.conninfo('application_name=hs'), conf: { hot_standby_feedback: 'on', wal_receiver_status_interval: '1s' } });
  t.teardown(() => standby.destroy());
  await until(() => node.node.stream().replicas.aggregates().minXmin !== null, "the standby's xmin at the node", 60_000);
  for (;;) {
    const [s] = await pg.query<{ xmin: string | null }>("SELECT xmin::text FROM pg_replication_slots WHERE slot_name = 'walkeeper_1'");
    if (s?.xmin) {
      t.is(BigInt(s.xmin), node.node.stream().replicas.aggregates().minXmin! & 0xffffffffn);
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
});

test('--upstream with a host list and a SCRAM password: the node skips the dead host and authenticates', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, hba: ['host replication repl 127.0.0.1/32 scram-sha-256'] });
  t.teardown(() => pg.destroy());
  await pg.query("SET password_encryption = 'scram-sha-256'; CREATE ROLE repl REPLICATION LOGIN PASSWORD 's3cr3t'");
  const dead = await (await import('./harness/index.js')).freePort();
  const node = await startTestNode({
    upstream: `postgresql://repl:s3cr3t@127.0.0.1:${dead},127.0.0.1:${pg.port}/postgres?application_name=ignored&connect_timeout=5`,
    dataDir: path.join(tmp.path, 'scram'),
  });
  t.teardown(() => node.stop());
  await pg.query('CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g');
  await waitFlushed(node, await flushLsn(pg));
  const st = node.node.ingest('main')!.status();
  t.is(st.connectedTo, `127.0.0.1:${pg.port}`);
  t.notRegex(st.conninfo, /s3cr3t/, 'the password is not shown');
  const [r] = await pg.query<{ usename: string; application_name: string }>('SELECT usename, application_name FROM pg_stat_replication');
  t.like(r, { usename: 'repl', application_name: 'walkeeper_1' });
});
