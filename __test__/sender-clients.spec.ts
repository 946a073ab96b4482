// Issue 3 acceptance a and b: real pg_receivewal and a real standby cannot
// tell a walkeeper node seeded by `import` from a PostgreSQL primary.

import { copyFile, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import {
  basebackup,
  compareWalDirs,
  createReceivewalSlot,
  dropReceivewalSlot,
  createTempDir,
  generateWal,
  registerCleanupHooks,
  startPostgres,
  startReceivewal,
  startStandby,
  startTestNode,
  type PgCluster,
  type TempDir,
  type TestNode,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let primary: PgCluster;
let node: TestNode;
let tmp: TempDir;
let backupDir: string;
let rows = 0;
let firstSegno = 0;

test.before(async () => {
  tmp = await createTempDir('walkeeper-clients-');
  primary = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB' } });
  await primary.query('CREATE TABLE t (id int primary key, v text)');
  await primary.query(`INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g`);
  backupDir = await basebackup(primary, { walMethod: 'stream' });
  await primary.query(`INSERT INTO t SELECT g, repeat(md5(g::text), 20) FROM generate_series(1001, 5000) g`);
  await generateWal(primary, { minBytes: 4 * SEG, switches: 1 });
  await primary.query(`INSERT INTO t SELECT g, md5(g::text) FROM generate_series(5001, 6000) g`);
  rows = 6000;
  await primary.stop();
  node = await startTestNode({ importFrom: primary.walDir });
  firstSegno = Number(node.imported!.firstLsn / BigInt(SEG));
});

test.after.always(async () => {
  await node?.stop();
  await primary?.destroy();
  await tmp?.cleanup();
});

const segName = (segno: number) => `00000001${'0'.repeat(8)}${segno.toString(16).toUpperCase().padStart(8, '0')}`;

/** A pg_receivewal directory holding the primary's first imported segment, so that it streams every later one. */
async function seededDir(name: string): Promise<string> {
  const dir = path.join(tmp.path, name);
  await mkdir(dir);
  await copyFile(path.join(primary.walDir, segName(firstSegno)), path.join(dir, segName(firstSegno)));
  return dir;
}

test.serial('pg_receivewal without a slot writes files byte-identical to the primary, the last as .partial; --endpos exits 0', async (t) => {
  const end = node.node.stream().commitLsn;
  const dir = await seededDir('noslot');
  const rw = startReceivewal({ host: node.host, port: node.port, dir, endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  const files = await rw.files();
  const last = segName(Number((end - 1n) / BigInt(SEG)));
  t.is(files.at(-1), `${last}.partial`, files.join(' '));
  t.true(files.length >= 5, files.join(' '));
  t.deepEqual(await compareWalDirs(dir, primary.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), []);
  t.regex(r.stderr, /starting log streaming at/);
});

test.serial('pg_receivewal --create-slot, then --slot: streams, the slot follows its flushes and survives a node restart', async (t) => {
  const c = await createReceivewalSlot({ host: node.host, port: node.port, slot: 'rw_slot' });
  t.is(c.code, 0, c.stderr);
  const st = await (await fetch(`${node.httpUrl}/v1/streams/main`)).json() as { slots: { name: string; restart_lsn: string | null }[] };
  t.true(st.slots.some((s) => s.name === 'rw_slot' && s.restart_lsn === null), JSON.stringify(st.slots));
  const end = node.node.stream().commitLsn;
  const dir = await seededDir('slot');
  const rw = startReceivewal({ host: node.host, port: node.port, dir, slot: 'rw_slot', endpos: end - 1n, noLoop: true, synchronous: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(await compareWalDirs(dir, primary.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), []);
  const slot = node.node.stream().slots.get('rw_slot')!;
  t.true(slot.restartLsn > 0n && slot.restartLsn <= end, `restart_lsn ${formatLsn(slot.restartLsn)}`);
  t.is(slot.activeBy, null, 'released when pg_receivewal left');
  // Persisted: a restarted node still has the slot at the same position.
  const dataDir = node.dataDir;
  const at = slot.restartLsn;
  await node.node.stop();
  node = await startTestNode({ dataDir });
  t.is(node.node.stream().slots.get('rw_slot')?.restartLsn, at);
  // pg_receivewal --drop-slot
  const d = await dropReceivewalSlot({ host: node.host, port: node.port, slot: 'rw_slot' });
  t.is(d.code, 0, d.stderr);
  t.false(node.node.stream().slots.has('rw_slot'));
});

test.serial('pg_receivewal with --create-slot in one run streams to --endpos', async (t) => {
  const end = node.node.stream().commitLsn;
  const dir = await seededDir('createslot');
  const rw = startReceivewal({ host: node.host, port: node.port, dir, slot: 'rw_once', createSlot: true, endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(await compareWalDirs(dir, primary.walDir, { segSize: SEG, endLsn: end, segments: 'ours' }), []);
  t.true(node.node.stream().slots.has('rw_once'));
});

test.serial('a real standby streams from the node, replays to its commit_lsn and sees the rows written on the primary', async (t) => {
  const end = node.node.stream().commitLsn;
  const standby = await startStandby(backupDir, { primaryConninfo: `${node.conninfo()} application_name=standby1` });
  t.teardown(() => standby.destroy());
  await standby.waitReplayed(end, 60_000).catch(async (e: Error) => t.fail(`${e.message}\n${await standby.describe()}`));
  const [{ n }] = await standby.query<{ n: string }>('SELECT count(*) AS n FROM t');
  t.is(Number(n), rows);
  const wr = await standby.walReceiver();
  t.is(wr?.status, 'streaming');
  // The node lists it as a replica with its feedback.
  const st = await (await fetch(`${node.httpUrl}/v1/streams/main`)).json() as { replicas: { application_name: string; state: string; flush_lsn: string }[] };
  const rep = st.replicas.find((r) => r.application_name === 'standby1');
  t.truthy(rep, JSON.stringify(st.replicas));
  t.is(rep?.state, 'streaming');
  t.is(await readdir(path.join(standby.dataDir, 'pg_wal')).then((f) => f.includes(`${segName(Number((end - 1n) / BigInt(SEG)))}`)), true);
});
