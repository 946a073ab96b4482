// Proves the replication helpers of the harness (standby.ts, receivewal.ts,
// proxy.ts) against real PostgreSQL 15 only: no walkeeper involved.

import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import {
  basebackup,
  compareWalDirs,
  conninfoFor,
  createReceivewalSlot,
  createTempDir,
  fmtLsn,
  freePort,
  generateWal,
  lsnOf,
  readTimelineHistory,
  registerCleanupHooks,
  segmentFileName,
  startTcpProxy,
  withPostgres,
  withReceivewal,
  withStandby,
  withTimelineSwitch,
  type PgCluster,
  type TeardownContext,
} from './harness/index.js';

registerCleanupHooks(test);

async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

async function count(pg: PgCluster, table = 't'): Promise<number> {
  const [r] = await pg.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${table}`);
  return Number(r!.n);
}

async function tempDir(t: TeardownContext, prefix: string): Promise<string> {
  const d = await createTempDir(prefix);
  t.teardown(() => d.cleanup());
  return d.path;
}

test('pg_receivewal --endpos against a real primary exits 0 and its files equal the primary segments', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1, conf: { wal_keep_size: '1GB' } });

  // createReceivewalSlot: pg_receivewal --create-slot creates the slot and exits
  const cs = await createReceivewalSlot({ host: pg.host, port: pg.port, slot: 'made_by_receivewal' });
  t.is(cs.code, 0, cs.stderr);
  t.deepEqual(await pg.query(`SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'made_by_receivewal'`), [{ slot_type: 'physical' }]);
  const again = await createReceivewalSlot({ host: pg.host, port: pg.port, slot: 'made_by_receivewal' });
  t.not(again.code, 0);
  t.regex(again.stderr, /already exists/);

  // a slot reserving WAL now, so that pg_receivewal starts well before the end
  await pg.query(`SELECT pg_create_physical_replication_slot('rs1', true)`);
  const [{ restart }] = await pg.query<{ restart: string }>(`SELECT restart_lsn::text AS restart FROM pg_replication_slots WHERE slot_name = 'rs1'`);
  await generateWal(pg, { minBytes: 3 * 1024 * 1024, switches: 1 });
  const end = await flushLsn(pg);

  const dir = path.join(await tempDir(t, 'walkeeper-rw-'), 'wal');
  // pg_receivewal stops once it has received WAL *beyond* --endpos (endpos < xlogpos):
  // on an idle server endpos = end would wait for the next record (up to ~15 s).
  const rw = withReceivewal(t, {
    host: pg.host,
    port: pg.port,
    dir,
    slot: 'rs1',
    endpos: end - 1n,
    synchronous: true,
    conninfo: { options: '-c wal_sender_timeout=30s', application_name: 'rw_endpos' },
    password: 'unused-with-trust',
  });
  const r = await rw.wait(30_000);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /starting log streaming at/);
  t.regex(r.stderr, new RegExp(`stopped log streaming at ${fmtLsn(end)} \\(timeline 1\\)`));

  const files = await rw.files();
  const first = segmentFileName(1, lsnOf(restart), pg.walSegSize);
  const last = segmentFileName(1, end, pg.walSegSize);
  t.is(files[0], first);
  t.is(files[files.length - 1], `${last}.partial`);
  t.true(files.length >= 4, files.join(' '));
  t.log(`slot restart ${restart}, end ${fmtLsn(end)}; pg_receivewal files: ${files.join(' ')}`);

  t.deepEqual(await compareWalDirs(dir, pg.walDir, { endLsn: end, segments: 'ours' }), []);
  // every primary segment from the first one received on is there
  t.deepEqual(await compareWalDirs(dir, pg.walDir, { endLsn: end, startLsn: lsnOf(restart) }), []);

  // compareWalDirs does report differences
  const bad = path.join(await tempDir(t, 'walkeeper-rw-bad-'), 'wal');
  await mkdir(bad);
  for (const f of files.slice(1)) await copyFile(path.join(dir, f), path.join(bad, f));
  const victim = path.join(bad, files[2]!);
  const buf = await readFile(victim);
  buf[5000] = buf[5000]! ^ 0xff;
  await writeFile(victim, buf);
  const partial = path.join(bad, files[files.length - 1]!);
  const pbuf = await readFile(partial);
  pbuf[pbuf.length - 1] = 1;
  await writeFile(partial, pbuf);
  const diffs = await compareWalDirs(bad, dir, { endLsn: end });
  t.is(diffs.length, 3, diffs.join('\n'));
  t.regex(diffs.join('\n'), new RegExp(`${first}: missing in ours`));
  t.regex(diffs.join('\n'), new RegExp(`${files[2]}: 1 byte\\(s\\) differ .* first at offset 0x1388`));
  t.regex(diffs.join('\n'), /ours \S+\.partial: non-zero bytes after the end LSN/);
});

test('a standby from basebackup streams from the primary; waitReplayed sees the rows', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1, conf: { wal_keep_size: '1GB' } });
  await pg.query('CREATE TABLE t (id int, v text)');
  await pg.query(`INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 100) i`);
  const dataDir = await basebackup(pg);
  const sb = await withStandby(t, dataDir, { primaryConninfo: conninfoFor(pg, { application_name: 'sb1' }) });
  t.true(await sb.inRecovery());

  await pg.query(`INSERT INTO t SELECT i, md5(i::text) FROM generate_series(101, 5000) i`);
  const lsn = await flushLsn(pg);
  await sb.waitReplayed(lsn, 20_000);
  t.true((await sb.replayLsn())! >= lsn);
  t.is(await count(sb), 5000);
  const w = await sb.walReceiver();
  t.is(w?.status, 'streaming');
  t.is(w?.receivedTli, 1);
  t.is(w?.senderPort, pg.port);
  const [rep] = await pg.query<{ application_name: string; state: string }>('SELECT application_name, state FROM pg_stat_replication');
  t.deepEqual(rep, { application_name: 'sb1', state: 'streaming' });
  t.is(await sb.systemId(), await pg.systemId());
});

test('a -X none standby whose upstream appears late: startStandby(waitReady: false), then waitReady()', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1, conf: { wal_keep_size: '1GB' } });
  await pg.query('CREATE TABLE t (id int)');
  await pg.query('INSERT INTO t SELECT generate_series(1, 1000)');
  const dataDir = await basebackup(pg, { walMethod: 'none' });
  const upstreamPort = await freePort();
  const sb = await withStandby(t, dataDir, {
    primaryConninfo: conninfoFor({ host: '127.0.0.1', port: upstreamPort }),
    waitReady: false,
    readyTimeoutMs: 20_000,
  });
  // not consistent without upstream WAL: the postmaster answers 57P03
  const err = await t.throwsAsync(sb.query('SELECT 1'));
  t.regex(err!.message, /not yet accepting connections|starting up/);
  t.is((err as Error & { code?: string }).code, '57P03');
  await t.throwsAsync(sb.waitReady(1500), { message: /timed out after 1500 ms/ });

  const proxy = await startTcpProxy(pg, { port: upstreamPort });
  t.teardown(() => proxy.close());
  const t0 = Date.now();
  await sb.waitReady(20_000);
  t.log(`consistent ${Date.now() - t0} ms after the upstream appeared (wal_retrieve_retry_interval = 1s)`);
  t.true(proxy.accepted >= 1);
  await pg.query('INSERT INTO t SELECT generate_series(1001, 2000)');
  await sb.waitReplayed(await flushLsn(pg), 20_000);
  t.is(await count(sb), 2000);
});

test('hot_standby=off: startStandby returns once the postmaster answers; promote() makes it queryable', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1 });
  await pg.query('CREATE TABLE t (id int)');
  await pg.query('INSERT INTO t SELECT generate_series(1, 10)');
  const dataDir = await basebackup(pg, { walMethod: 'fetch' });
  const sb = await withStandby(t, dataDir, { primaryConninfo: conninfoFor(pg), hotStandby: false });
  t.true(sb.running);
  // 57P03: "the database system is starting up", then "... is not accepting connections" (Hot standby mode is disabled)
  const err = await t.throwsAsync(sb.query('SELECT 1'), { message: /starting up|not accepting connections/ });
  t.is((err as Error & { code?: string }).code, '57P03');
  await sb.promote();
  t.false(await sb.inRecovery());
  t.is(await count(sb), 10);
});

test('makeTimelineSwitch: promoted pg_wal files; the spare backup follows TLI 1 -> 2 from the promoted server', async (t) => {
  const t0 = Date.now();
  const ts = await withTimelineSwitch(t);
  t.log(`makeTimelineSwitch: ${Date.now() - t0} ms`);
  const seg = ts.walSegSize;
  t.is(seg, 1024 * 1024);
  t.false(ts.primary.running);
  t.true(ts.promoted.running);
  t.false(await ts.promoted.inRecovery());

  const { files } = ts;
  t.log(`switch ${fmtLsn(ts.switchLsn)}, end ${fmtLsn(ts.endLsn)}, rows ${ts.rowsAtSpare}/${ts.rowsBefore}/${ts.rowsAfter}`);
  t.log(`promoted pg_wal: ${files.all.join(' ')}`);
  const switchSeg = segmentFileName(1, ts.switchLsn, seg);
  t.is(files.tli1Switch, `${switchSeg}.partial`);
  t.true(files.tli1.length >= 3, files.tli1.join(' '));
  t.true(files.tli1.every((f) => f.startsWith('00000001') && f < switchSeg));
  t.deepEqual(ts.tli1Segments, [...files.tli1, files.tli1Switch]);
  t.deepEqual(files.history, ['00000002.history']);
  t.is(files.tli2[0], segmentFileName(2, ts.switchLsn, seg));
  t.true(files.tli2.includes(segmentFileName(2, ts.endLsn, seg)));
  t.true(files.tli2.length >= 3, files.tli2.join(' '));
  t.true(files.all.includes('archive_status'));
  t.deepEqual(await readTimelineHistory(ts.promoted.walDir, 2), [{ tli: 1, switchLsn: ts.switchLsn, reason: 'no recovery target specified' }]);
  t.is(
    await readFile(path.join(ts.promoted.walDir, '00000002.history'), 'utf8'),
    `1\t${fmtLsn(ts.switchLsn)}\tno recovery target specified\n`,
  );
  t.true(ts.switchLsn > ts.primaryFlushLsn, 'the switch is after the old primary\'s shutdown checkpoint');
  t.is(await count(ts.promoted), ts.rowsAfter);
  t.true(ts.rowsAfter > ts.rowsBefore && ts.rowsBefore > ts.rowsAtSpare);
  // the old primary's TLI 1 WAL equals the promoted server's copy, up to the switch
  t.deepEqual(await compareWalDirs(ts.promoted.walDir, ts.primary.walDir, { timelines: [1], endLsn: ts.switchLsn, segments: 'ours' }), []);

  const t1 = Date.now();
  const spare = await withStandby(t, ts.spare, { primaryConninfo: conninfoFor(ts.promoted, { application_name: 'spare' }) });
  await spare.waitReplayed(ts.endLsn, 30_000);
  t.log(`spare started and replayed to ${fmtLsn(ts.endLsn)} in ${Date.now() - t1} ms`);
  t.is(await count(spare), ts.rowsAfter);
  const w = await spare.walReceiver();
  t.is(w?.receivedTli, 2);
  t.is(w?.status, 'streaming');
  t.true((await readdir(spare.walDir)).includes('00000002.history'));
});

test('pg_receivewal seeded with a TLI 1 segment follows the switch on the promoted server', async (t) => {
  const ts = await withTimelineSwitch(t);
  const dir = path.join(await tempDir(t, 'walkeeper-rw-tli-'), 'wal');
  await mkdir(dir);
  const seed = ts.files.tli1[0]!;
  await copyFile(path.join(ts.promoted.walDir, seed), path.join(dir, seed));

  const t0 = Date.now();
  const rw = withReceivewal(t, { host: ts.promoted.host, port: ts.promoted.port, dir, endpos: ts.endLsn - 1n, noLoop: true });
  const r = await rw.wait(30_000);
  t.is(r.code, 0, r.stderr);
  const files = await rw.files();
  t.log(`pg_receivewal (${Date.now() - t0} ms): ${files.join(' ')}`);
  t.regex(r.stderr, /starting log streaming at \S+ \(timeline 1\)/);
  t.regex(r.stderr, new RegExp(`switched to timeline 2 at ${fmtLsn(ts.switchLsn)}`));
  t.regex(r.stderr, /not renaming "[0-9A-F]{24}\.partial", segment is not complete/);

  const expected = [
    ...ts.files.tli1, // the seed plus what followed it on TLI 1
    `${segmentFileName(1, ts.switchLsn, ts.walSegSize)}.partial`,
    '00000002.history',
    ...ts.files.tli2.filter((f) => f < segmentFileName(2, ts.endLsn, ts.walSegSize)),
    `${segmentFileName(2, ts.endLsn, ts.walSegSize)}.partial`,
  ].sort();
  t.deepEqual(files, expected);
  t.deepEqual(await compareWalDirs(dir, ts.promoted.walDir, { endLsn: { 1: ts.switchLsn, 2: ts.endLsn }, segments: 'ours' }), []);
  // and nothing of the promoted server's pg_wal (from the seed on, up to its end) is missing
  t.deepEqual(await compareWalDirs(dir, ts.promoted.walDir, { endLsn: { 1: ts.switchLsn, 2: ts.endLsn }, segments: 'union' }), []);
});
