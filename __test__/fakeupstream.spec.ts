// The fake upstream primary (harness/fakeupstream.ts) is only useful if it
// behaves like a walsender where it is meant to and misbehaves exactly as
// told: checked here with walkeeper's own client and with real pg_receivewal
// on real WAL.

import path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { formatLsn, segmentFileName, segmentNumber } from '../ts/lsn.js';
import { ReplicationClient, type CopyBoth } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import { hotStandbyFeedback, keepalive, type Keepalive } from '../ts/protocol/replication.js';
import {
  compareWalDirs,
  createTempDir,
  FIXTURE_SEG as SEG,
  makeWalFixture,
  registerCleanupHooks,
  startFakeUpstream,
  startReceivewal,
  until,
  type FakeUpstream,
  type FakeUpstreamOptions,
  type TempDir,
  type WalFixture,
} from './harness/index.js';

registerCleanupHooks(test);

let fx: WalFixture;
let wal: Buffer;
let tmp: TempDir;
let dirs = 0;

test.before(async () => {
  fx = await makeWalFixture();
  wal = await fx.bytes();
  tmp = await createTempDir('walkeeper-fakeupstream-');
});

test.after.always(async () => {
  await tmp?.cleanup();
  await fx?.destroy();
});

async function upstream(t: ExecutionContext, extra: Partial<FakeUpstreamOptions> = {}): Promise<FakeUpstream> {
  const up = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: fx.systemId, ...extra });
  t.teardown(() => up.close());
  return up;
}

async function connect(t: ExecutionContext, up: FakeUpstream): Promise<ReplicationClient> {
  const c = await ReplicationClient.connect({ host: up.host, port: up.port, applicationName: 'fake-test' });
  t.teardown(() => c.close());
  return c;
}

async function pgError(t: ExecutionContext, p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  const e = await t.throwsAsync(p);
  t.true(e instanceof PgError, String(e));
  t.is((e as PgError).code, code, e?.message);
  t.regex(e!.message, re);
}

interface Got {
  msgs: { start: bigint; end: bigint; data: Buffer }[];
  keepalives: Keepalive[];
  /** Resolves once `n` XLogData messages arrived. */
  count(n: number): Promise<void>;
  keepalive(pred: (k: Keepalive) => boolean): Promise<Keepalive>;
}

function collect(copy: CopyBoth): Got {
  const got: Got = {
    msgs: [],
    keepalives: [],
    count: (n) => until(() => got.msgs.length >= n, `${n} XLogData messages (have ${got.msgs.length})`),
    keepalive: async (pred) => {
      await until(() => got.keepalives.some(pred), 'a keepalive');
      return got.keepalives.find(pred)!;
    },
  };
  copy.onXLogData = (m) => got.msgs.push({ start: m.start, end: m.end, data: Buffer.from(m.data) });
  copy.onKeepalive = (k) => got.keepalives.push(k);
  return got;
}

const walEnd = (): bigint => fx.firstLsn + BigInt(wal.length);
const at = (lsn: bigint): number => Number(lsn - fx.firstLsn);

test('the fixture: real WAL, several 1 MiB segments', (t) => {
  t.true(fx.segments.length >= 4);
  t.is(fx.firstLsn % BigInt(SEG), 0n);
  t.is(walEnd(), fx.end);
});

test('commands: IDENTIFY_SYSTEM, SHOW, slots, TIMELINE_HISTORY and errors, as a PostgreSQL 15 walsender answers them', async (t) => {
  const up = await upstream(t, { histories: { 2: '1\t0/5000000\tno recovery target specified\n' } });
  const c = await connect(t, up);
  t.is(c.serverVersion, '15.4');
  t.is(c.parameters.integer_datetimes, 'on');

  const sys = await c.identifySystem();
  t.deepEqual(sys, { systemId: fx.systemId, timeline: 1, xlogpos: fx.end, dbname: null });
  const ident = await c.query('IDENTIFY_SYSTEM');
  t.deepEqual(
    ident.fields.map((f) => [f.name, f.typeOid]),
    [
      ['systemid', 25],
      ['timeline', 23],
      ['xlogpos', 25],
      ['dbname', 25],
    ],
  );

  t.deepEqual((await c.query('SHOW wal_segment_size')).rows, [['1MB']]);
  t.deepEqual((await c.query('SHOW data_directory_mode')).rows, [['0700']]);
  await pgError(t, c.query('SHOW shared_buffers'), '42704', /unrecognized configuration parameter "shared_buffers"/);

  const missing = await c.query('READ_REPLICATION_SLOT walkeeper_1');
  t.deepEqual(
    missing.fields.map((f) => [f.name, f.typeOid]),
    [
      ['slot_type', 25],
      ['restart_lsn', 25],
      ['restart_tli', 20],
    ],
  );
  t.deepEqual(missing.rows, [[null, null, null]]);
  t.deepEqual(missing.tags, ['READ_REPLICATION_SLOT']);

  const created = await c.query('CREATE_REPLICATION_SLOT "walkeeper_1" PHYSICAL RESERVE_WAL');
  t.deepEqual(created.rows, [['walkeeper_1', '0/0', null, null]]);
  t.deepEqual(up.slots.get('walkeeper_1'), { restartLsn: fx.firstLsn });
  t.deepEqual((await c.query('READ_REPLICATION_SLOT walkeeper_1')).rows, [['physical', formatLsn(fx.firstLsn), '1']]);
  await pgError(t, c.query('CREATE_REPLICATION_SLOT walkeeper_1 PHYSICAL (RESERVE_WAL)'), '42710', /already exists/);
  await c.query('CREATE_REPLICATION_SLOT noreserve PHYSICAL');
  t.deepEqual((await c.query('READ_REPLICATION_SLOT noreserve')).rows, [['physical', null, null]]);
  await c.query('DROP_REPLICATION_SLOT noreserve');
  t.false(up.slots.has('noreserve'));

  await pgError(t, c.timelineHistory(1), '58P01', /could not open file "pg_wal\/00000001\.history"/);
  t.deepEqual(await c.timelineHistory(2), { filename: '00000002.history', content: '1\t0/5000000\tno recovery target specified\n' });

  // SQL is refused as a physical walsender refuses it; a broken replication command is a syntax error.
  await pgError(t, c.query('SELECT 1'), '0A000', /cannot execute SQL commands in WAL sender/);
  await pgError(t, c.query('START_REPLICATION'), '42601', /syntax error/);
  await pgError(t, c.query('TIMELINE_HISTORY 0'), '42601', /invalid timeline 0/);
  // ... and the connection still works after each error.
  t.is((await c.identifySystem()).systemId, fx.systemId);

  t.is(up.log.connections, 1);
  t.is(up.log.startups[0]!.application_name, 'fake-test');
  t.is(up.log.startups[0]!.replication, 'true');
  t.deepEqual(up.log.commands.slice(0, 4), ['IDENTIFY_SYSTEM', 'IDENTIFY_SYSTEM', 'SHOW wal_segment_size', 'SHOW data_directory_mode']);
  t.is(up.log.commands.at(-1), 'IDENTIFY_SYSTEM');
});

test('SHOW wal_segment_size formats 16 MiB and 1 GiB segments as PostgreSQL does', async (t) => {
  for (const [size, text] of [
    [16 << 20, '16MB'],
    [1 << 30, '1GB'],
  ] as const) {
    const up = await upstream(t, { segmentSize: size, walStart: 0n });
    const c = await connect(t, up);
    t.deepEqual((await c.query('SHOW wal_segment_size')).rows, [[text]]);
  }
});

test('START_REPLICATION streams the WAL from exactly X in chunk-sized XLogData, then asks for replies; r and h land in the log; CopyDone ends it', async (t) => {
  const up = await upstream(t, { chunk: 10_000 });
  const c = await connect(t, up);
  await c.query('CREATE_REPLICATION_SLOT "walkeeper_7" PHYSICAL RESERVE_WAL');
  const from = fx.firstLsn + 12_345n; // not on a page or chunk boundary
  const copy = c.startReplication(`START_REPLICATION SLOT "walkeeper_7" ${formatLsn(from)} TIMELINE 1`);
  const got = collect(copy);
  t.true(await copy.started);
  const n = Math.ceil((wal.length - at(from)) / 10_000);
  await got.count(n);
  const idle = await got.keepalive((k) => k.replyRequested);
  t.is(idle.walEnd, fx.end);

  t.is(got.msgs.length, n);
  t.is(got.msgs[0]!.start, from);
  let expect = from;
  for (const m of got.msgs) {
    t.is(m.start, expect);
    t.is(m.end, fx.end);
    expect += BigInt(m.data.length);
  }
  t.deepEqual(
    got.msgs.slice(0, -1).map((m) => m.data.length),
    new Array(n - 1).fill(10_000),
  );
  t.is(expect, fx.end);
  t.true(Buffer.concat(got.msgs.map((m) => m.data)).equals(wal.subarray(at(from))), 'the bytes are the WAL, unchanged');

  // A status update with replyRequested: logged, the slot advances to flush, and a keepalive answers at once.
  const flush = fx.firstLsn + BigInt(SEG);
  const before = got.keepalives.length;
  t.true(copy.sendStatus({ write: fx.end, flush, apply: 0n, replyRequested: true }));
  await until(() => up.log.status.length > 0, 'the status update');
  t.deepEqual(up.log.status, [{ write: fx.end, flush, apply: 0n, replyRequested: true }]);
  t.deepEqual(up.slots.get('walkeeper_7'), { restartLsn: flush });
  await until(() => got.keepalives.slice(before).some((k) => !k.replyRequested && k.walEnd === fx.end), 'the answering keepalive');

  t.true(copy.send(hotStandbyFeedback({ xmin: 1234, xminEpoch: 1, catalogXmin: 0, catalogXminEpoch: 0 })));
  await until(() => up.log.feedback.length > 0, 'hot standby feedback');
  t.deepEqual(up.log.feedback, [{ xmin: 1234, xminEpoch: 1 }]);

  // The slot is in use while streaming.
  const other = await connect(t, up);
  await pgError(t, other.startReplication(`START_REPLICATION SLOT walkeeper_7 ${formatLsn(from)}`).done, '55006', /is active/);

  const r = await copy.end();
  t.is(r.reason, 'clientEnd');
  t.deepEqual(r.tags, ['START_STREAMING', 'START_REPLICATION']);
  t.true(r.usable);
  t.is((await c.identifySystem()).xlogpos, fx.end);
  t.is(up.log.commands.filter((s) => s.startsWith('START_REPLICATION')).length, 2);
});

test('mutate: what it returns is what goes on the wire (corrupt, shift, drop, raw bytes)', async (t) => {
  const seen: { start: bigint; index: number; connection: number; len: number }[] = [];
  const up = await upstream(t, {
    mutate: ({ start, data, index, connection }) => {
      seen.push({ start, index, connection, len: data.length });
      if (index === 2) {
        data[100] = data[100]! ^ 0xff;
        return { start, data };
      }
      if (index === 4) return { start: start + 8n, data };
      if (index === 6) return 'drop';
      if (index === 8) return keepalive(0x1234n, 0n, false);
      if (index === 9) return { start, data: data.subarray(0, 10), walEnd: 0x42n };
      return null;
    },
    stopAfter: 12,
  });
  const c = await connect(t, up);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  // 12 produced: index 6 dropped, index 8 became a keepalive.
  await got.count(10);
  await got.keepalive((k) => k.replyRequested);
  const C = 8192n;
  const x = (i: number): bigint => fx.firstLsn + BigInt(i) * C;
  t.deepEqual(
    got.msgs.map((m) => m.start),
    [x(0), x(1), x(2), x(3), x(4) + 8n, x(5), x(7), x(9), x(10), x(11)],
  );
  const orig = (i: number): Buffer => wal.subarray(i * 8192, (i + 1) * 8192);
  t.true(got.msgs[0]!.data.equals(orig(0)));
  const corrupted = got.msgs[2]!.data;
  t.is(corrupted[100], orig(2)[100]! ^ 0xff);
  t.true(corrupted.subarray(0, 100).equals(orig(2).subarray(0, 100)));
  t.true(corrupted.subarray(101).equals(orig(2).subarray(101)));
  t.true(got.msgs[4]!.data.equals(orig(4)), 'shifted: same bytes, another start');
  t.true(got.keepalives.some((k) => k.walEnd === 0x1234n && !k.replyRequested), 'the raw message was sent as it was');
  t.is(got.msgs[7]!.data.length, 10);
  t.is(got.msgs[7]!.end, 0x42n);
  t.true(got.msgs[8]!.data.equals(orig(10)));

  t.deepEqual(
    seen.map((s) => s.index),
    [...Array(12).keys()],
  );
  t.true(seen.every((s, i) => s.start === x(i) && s.len === 8192 && s.connection === 1));
  await copy.end();
});

test('stopAfter: that many XLogData, then only keepalives, connection kept; setOptions applies to later connections', async (t) => {
  const up = await upstream(t, { stopAfter: 3, keepaliveMs: 100 });
  const c = await connect(t, up);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  await got.count(3);
  await until(() => got.keepalives.filter((k) => k.replyRequested).length >= 3, 'three idle keepalives');
  t.is(got.msgs.length, 3);
  t.true(got.keepalives.every((k) => k.walEnd === fx.end && k.replyRequested));
  t.true(copy.inCopy);
  t.is((await copy.end()).reason, 'clientEnd');

  up.setOptions({ stopAfter: undefined, keepaliveMs: 0, chunk: 1 << 20 });
  const c2 = await connect(t, up);
  const copy2 = c2.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got2 = collect(copy2);
  await got2.count(fx.segments.length);
  t.is(got2.msgs.at(-1)!.start + BigInt(got2.msgs.at(-1)!.data.length), fx.end);
  await new Promise((r) => setTimeout(r, 300));
  t.deepEqual(got2.keepalives, [], 'keepaliveMs: 0 is a silent primary');
  await copy2.end();
  t.is(up.log.connections, 2);
});

test('closeAfter: the connection ends after exactly that many XLogData (end), or is reset', async (t) => {
  const up = await upstream(t, { closeAfter: 5 });
  const c = await connect(t, up);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  const e = await t.throwsAsync(copy.done);
  t.regex(e!.message, /closed the connection/);
  t.is(got.msgs.length, 5, 'everything written before the close arrives');
  t.true(c.closed);

  up.setOptions({ closeAfter: 0 });
  const c0 = await connect(t, up);
  const copy0 = c0.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  t.true(await copy0.started);
  await t.throwsAsync(copy0.done);

  up.setOptions({ closeAfter: 3, closeMode: 'reset' });
  const c3 = await connect(t, up);
  const copy3 = c3.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  collect(copy3);
  await t.throwsAsync(copy3.done);
  t.is(up.log.connections, 3);
});

test('START_REPLICATION errors: missing slot before COPY; start beyond the end or before the WAL after CopyBothResponse', async (t) => {
  const up = await upstream(t);
  const c = await connect(t, up);
  await pgError(t, c.startReplication(`START_REPLICATION SLOT nope ${formatLsn(fx.firstLsn)}`).started, '42704', /replication slot "nope" does not exist/);

  const ahead = c.startReplication(`START_REPLICATION ${formatLsn(fx.end + 1n)} TIMELINE 1`);
  t.true(await ahead.started);
  await pgError(t, ahead.done, 'XX000', /requested starting point .* is ahead of the WAL flush position of this server/);

  const gone = fx.firstLsn - BigInt(SEG);
  const removed = c.startReplication(`START_REPLICATION ${formatLsn(gone)} TIMELINE 1`);
  t.true(await removed.started);
  await pgError(t, removed.done, '58P01', new RegExp(`requested WAL segment ${segmentFileName(1, segmentNumber(gone, SEG), SEG)} has already been removed`));

  await pgError(t, c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 2`).done, 'XX000', /requested timeline 2 is not in this server's history/);
  t.is((await c.identifySystem()).timeline, 1, 'usable after each');
});

test('an older timeline from the history streams up to its end, then CopyDone and next_tli; at its end there is no COPY', async (t) => {
  const sw = fx.firstLsn + BigInt(SEG) + 1000n;
  const up = await upstream(t, { tli: 2, histories: { 2: `1\t${formatLsn(sw)}\tno recovery target specified\n` } });
  const c = await connect(t, up);
  t.is((await c.identifySystem()).timeline, 2);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  const r = await copy.done;
  t.is(r.reason, 'serverEnd');
  t.deepEqual(r.nextTimeline, { timeline: 2, startLsn: sw });
  t.deepEqual(r.tags, ['START_STREAMING', 'START_REPLICATION']);
  const last = got.msgs.at(-1)!;
  t.is(last.start + BigInt(last.data.length), sw);
  t.true(Buffer.concat(got.msgs.map((m) => m.data)).equals(wal.subarray(0, at(sw))));

  const none = c.startReplication(`START_REPLICATION ${formatLsn(sw)} TIMELINE 1`);
  t.false(await none.started);
  t.deepEqual((await none.done).nextTimeline, { timeline: 2, startLsn: sw });
  await pgError(t, c.startReplication(`START_REPLICATION ${formatLsn(sw + 1n)} TIMELINE 1`).done, 'XX000', /not in this server's history/);
});

// ------------------------------------------------------------ pg_receivewal

function receivewalDir(): string {
  return path.join(tmp.path, `rw-${dirs++}`);
}

// pg_receivewal stops once it received WAL *beyond* --endpos (endpos < position), so endpos is the last byte's LSN.
const endpos = (): bigint => fx.end - 1n;

test('pg_receivewal --create-slot makes a slot without reserved WAL, so it starts at IDENTIFY_SYSTEM\'s segment', async (t) => {
  const up = await upstream(t);
  const dir = receivewalDir();
  const rw = startReceivewal({ host: up.host, port: up.port, dir, endpos: endpos(), noLoop: true, slot: 'walkeeper_rw', createSlot: true });
  t.teardown(() => rw.stop());
  const r = await rw.wait();
  t.is(r.code, 0, r.stderr);
  t.true(up.log.commands.includes('CREATE_REPLICATION_SLOT "walkeeper_rw" PHYSICAL'), up.log.commands.join('\n'));
  const startSeg = fx.end - (fx.end % BigInt(SEG));
  t.regex(r.stderr, new RegExp(`starting log streaming at ${formatLsn(startSeg)} \\(timeline 1\\)`));
  t.deepEqual(await compareWalDirs(dir, fx.walDir, { endLsn: fx.end, segments: 'ours', segSize: SEG }), []);
});

test('pg_receivewal (READ_REPLICATION_SLOT of a RESERVE_WAL slot, stream to endpos) writes files identical to the fixture', async (t) => {
  const up = await upstream(t);
  const c = await connect(t, up);
  await c.query('CREATE_REPLICATION_SLOT "walkeeper_rw" PHYSICAL RESERVE_WAL');
  const dir = receivewalDir();
  const rw = startReceivewal({ host: up.host, port: up.port, dir, endpos: endpos(), noLoop: true, slot: 'walkeeper_rw' });
  t.teardown(() => rw.stop());
  const r = await rw.wait();
  t.is(r.code, 0, r.stderr);
  t.deepEqual(await compareWalDirs(dir, fx.walDir, { endLsn: fx.end, segments: 'ours', segSize: SEG }), []);
  const files = await rw.files();
  const last = fx.segments.at(-1)!;
  t.deepEqual(files, [...fx.segments.slice(0, -1), fx.end % BigInt(SEG) === 0n ? last : `${last}.partial`]);

  const cmds = up.log.commands;
  t.true(cmds.some((s) => /^CREATE_REPLICATION_SLOT "walkeeper_rw" PHYSICAL/.test(s)), cmds.join('\n'));
  t.true(cmds.includes('READ_REPLICATION_SLOT walkeeper_rw'), cmds.join('\n'));
  t.true(cmds.includes(`START_REPLICATION SLOT "walkeeper_rw" ${formatLsn(fx.firstLsn)} TIMELINE 1`), cmds.join('\n'));
  // pg_receivewal reports its position as it starts; at --endpos it just sends CopyDone (no status).
  t.is(up.log.status[0]?.write, fx.firstLsn);
});

test('pg_receivewal answers the idle keepalives of a stalled upstream (stopAfter) with status updates', async (t) => {
  const up = await upstream(t, { stopAfter: 5, keepaliveMs: 200 });
  up.slots.set('walkeeper_rw', { restartLsn: fx.firstLsn });
  const rw = startReceivewal({ host: up.host, port: up.port, dir: receivewalDir(), noLoop: true, slot: 'walkeeper_rw' });
  t.teardown(() => rw.stop());
  const got = fx.firstLsn + 5n * 8192n;
  await until(() => up.log.status.some((s) => s.write === got), 'a status update at the stall point');
  const r = await rw.stop();
  t.is(r.code, 0, r.stderr);
  const st = up.log.status.find((s) => s.write === got)!;
  t.is(st.apply, 0n);
  t.false(st.replyRequested);
  t.is(up.slots.get('walkeeper_rw')!.restartLsn, up.log.status.reduce((a, s) => (s.flush !== 0n ? s.flush : a), fx.firstLsn), 'the slot follows flush');
});

test('pg_receivewal sees what mutate sends: a flipped byte lands on disk, a shifted start is refused', async (t) => {
  const bad = fx.firstLsn + 20n * 8192n + 500n;
  const up = await upstream(t, {
    mutate: ({ start, data, index }) => {
      if (index !== 20) return null;
      data[500] = data[500]! ^ 0x01;
      return { start, data };
    },
  });
  up.slots.set('walkeeper_rw', { restartLsn: fx.firstLsn });
  const dir = receivewalDir();
  const r = await startReceivewal({ host: up.host, port: up.port, dir, endpos: endpos(), noLoop: true, slot: 'walkeeper_rw' }).wait();
  t.is(r.code, 0, r.stderr);
  const diffs = await compareWalDirs(dir, fx.walDir, { endLsn: fx.end, segments: 'ours', segSize: SEG });
  t.is(diffs.length, 1, diffs.join('\n'));
  t.regex(diffs[0]!, new RegExp(`1 byte\\(s\\) differ.*\\(LSN ${formatLsn(bad)}\\)`));

  up.setOptions({ mutate: ({ start, data, index }) => (index === 3 ? { start: start + 8n, data } : null) });
  const r2 = await startReceivewal({ host: up.host, port: up.port, dir: receivewalDir(), endpos: endpos(), noLoop: true, slot: 'walkeeper_rw' }).wait();
  t.not(r2.code, 0);
  t.regex(r2.stderr, /got WAL data offset 0*[0-9a-f]+, expected 0*[0-9a-f]+/);
});

test('pg_receivewal --no-loop gives up when closeAfter hangs up', async (t) => {
  const up = await upstream(t, { closeAfter: 10 });
  up.slots.set('walkeeper_rw', { restartLsn: fx.firstLsn });
  const r = await startReceivewal({ host: up.host, port: up.port, dir: receivewalDir(), endpos: endpos(), noLoop: true, slot: 'walkeeper_rw' }).wait();
  t.not(r.code, 0);
  t.regex(r.stderr, /unexpected termination of replication stream|server closed the connection unexpectedly/);
  t.is(up.log.connections, 1);
});
