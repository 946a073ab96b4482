// The sender on the wire, with walkeeper's own replication client: the
// regressions Neon had to fix (acceptance d), the commands and their
// errors, slots, feedback, and every way a stream ends.

import test from 'ava';

import { formatLsn, type Stream } from '../ts/index.js';
import { ReplicationClient, type CopyBoth } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import { hotStandbyFeedback, neonFeedback, pgNow } from '../ts/protocol/replication.js';
import { FIXTURE_SEG as SEG, makeWalFixture, startTestNode, type TestNode, type WalFixture, until } from './harness/index.js';

let fx: WalFixture;
/** Imported with the first segments only, then the rest appended: flush_lsn = end, commit_lsn below it. */
let node: TestNode;
let commitA: bigint;
let flushE: bigint;

test.before(async () => {
  fx = await makeWalFixture();
  node = await startTestNode({ importFrom: await fx.prefixDir(fx.segments.length - 2) });
  const s = node.node.stream();
  commitA = s.commitLsn;
  const bytes = await fx.bytes();
  await s.appendWal(commitA, bytes.subarray(Number(commitA - fx.firstLsn)));
  flushE = await s.flushWal();
});

test.after.always(async () => {
  await node?.stop();
  await fx?.destroy();
});

const stream = (): Stream => node.node.stream();

function connect(opts: { applicationName?: string; options?: string; password?: string } = {}): Promise<ReplicationClient> {
  return ReplicationClient.connect({ host: node.host, port: node.port, applicationName: opts.applicationName ?? 'test', options: opts.options, password: opts.password });
}

async function pgError(t: import('ava').ExecutionContext, p: Promise<unknown>, code: string, re: RegExp): Promise<PgError> {
  const e = await t.throwsAsync(p);
  t.true(e instanceof PgError, String(e));
  t.is((e as PgError).code, code, e?.message);
  t.regex(e!.message, re);
  return e as PgError;
}

/** Collects a copy's messages; resolves `reached` once WAL up to `until` arrived. */
function collect(copy: CopyBoth) {
  const got = { bytes: 0, first: -1n, last: -1n, walEnds: [] as bigint[], keepalives: [] as { walEnd: bigint; sendTime: bigint; replyRequested: boolean }[], lastSendTime: 0n, chunks: [] as Buffer[] };
  copy.onXLogData = (m) => {
    if (got.first < 0n) got.first = m.start;
    if (got.last >= 0n && m.start !== got.last) throw new Error(`gap: ${formatLsn(m.start)} after ${formatLsn(got.last)}`);
    got.last = m.start + BigInt(m.data.length);
    got.bytes += m.data.length;
    got.walEnds.push(m.end);
    got.lastSendTime = m.sendTime;
    got.chunks.push(Buffer.from(m.data));
  };
  copy.onKeepalive = (k) => {
    got.keepalives.push(k);
    got.walEnds.push(k.walEnd);
  };
  return got;
}


test.serial('the setup: commit_lsn below flush_lsn, both on record boundaries of real WAL', (t) => {
  t.true(commitA < flushE, `${formatLsn(commitA)} < ${formatLsn(flushE)}`);
  t.is(flushE, fx.end);
  t.is(stream().commitLsn, commitA);
});

test.serial('IDENTIFY_SYSTEM: commit_lsn to a regular client, flush_lsn to a recovery client (Neon bug 2)', async (t) => {
  const regular = await connect();
  const r = await regular.identifySystem();
  t.is(r.systemId, fx.systemId);
  t.is(r.timeline, 1);
  t.is(formatLsn(r.xlogpos), formatLsn(commitA));
  t.is(r.dbname, null);
  for (const c of [await connect({ applicationName: 'walkeeper_recovery' }), await connect({ applicationName: 'wal_proposer_recovery' }), await connect({ options: '-c recovery=on' })]) {
    t.is(formatLsn((await c.identifySystem()).xlogpos), formatLsn(flushE));
    await c.close();
  }
  // Startup parameters a PostgreSQL client checks.
  t.regex(regular.parameters.server_version!, /^15\.0 \(walkeeper /);
  t.is(regular.parameters.integer_datetimes, 'on');
  t.truthy(regular.backendKey);
  await regular.close();
});

test.serial('a recovery client receives exactly up to flush_lsn, then a clean end (00000 "ending streaming to")', async (t) => {
  const c = await connect({ applicationName: 'walkeeper_recovery' });
  const start = fx.firstLsn;
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)}`);
  const got = collect(copy);
  const end = await copy.done;
  t.is(end.reason, 'error');
  t.is(end.error?.code, '00000');
  t.regex(end.error!.message, /^ending streaming to walkeeper_recovery@127\.0\.0\.1:\d+ at /);
  t.is(got.first, start);
  t.is(formatLsn(got.last), formatLsn(flushE), 'exactly up to flush_lsn');
  t.true(Buffer.concat(got.chunks).equals((await fx.bytes()).subarray(0, Number(flushE - start))), 'the primary bytes');
  t.true(end.usable);
  t.is(formatLsn((await c.identifySystem()).xlogpos), formatLsn(flushE), 'the connection takes commands again');
  await c.close();
  t.is(stream().replicas.size, 0);
});

test.serial('a regular client is served exactly up to commit_lsn; idle, it gets a keepalive after ~1 s with walEnd = commit_lsn, never 0/0, reply requested (Neon bug 1)', async (t) => {
  const c = await connect();
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  await until(() => got.keepalives.length > 0, 'a keepalive');
  t.is(formatLsn(got.last), formatLsn(commitA), 'nothing past commit_lsn');
  const k = got.keepalives[0]!;
  t.is(formatLsn(k.walEnd), formatLsn(commitA));
  t.true(k.replyRequested);
  // By the server's own clock: the keepalive came 1 s (± scheduling) after the last WAL it sent.
  const idleMs = Number(k.sendTime - got.lastSendTime) / 1000;
  t.true(idleMs >= 900 && idleMs < 1500, `keepalive ${idleMs} ms after the last XLogData`);
  t.false(got.walEnds.includes(0n), 'no message ever says 0/0');
  t.true(got.walEnds.every((e) => e === commitA), 'every walEnd is commit_lsn');
  // The replica is registered, with what it reported.
  copy.sendStatus({ write: got.last, flush: got.last - 100n, apply: got.last - 200n, replyRequested: false });
  copy.send(hotStandbyFeedback({ xmin: 1234, xminEpoch: 1, catalogXmin: 0, catalogXminEpoch: 0 }));
  copy.send(neonFeedback({ lastReceivedLsn: got.last, diskConsistentLsn: got.last - 1000n, remoteConsistentLsn: got.last - 2000n, currentTimelineSize: 42n, replyTime: pgNow() }));
  await until(() => stream().replicas.list()[0]?.feedback.remoteConsistentLsn !== 0n, 'feedback');
  const [rep] = stream().replicas.list();
  t.is(rep!.feedback.flushLsn, got.last - 100n);
  t.is(rep!.feedback.xmin, 1234);
  t.is(rep!.state, 'streaming');
  const agg = stream().replicas.aggregates();
  t.is(agg.minFlushLsn, got.last - 100n);
  t.is(agg.minXmin, (1n << 32n) | 1234n);
  t.is(agg.maxRemoteConsistentLsn, got.last - 2000n);
  const http = (await (await fetch(`${node.httpUrl}/v1/streams/main`)).json()) as { replicas: Record<string, unknown>[]; commit_lsn: string; flush_lsn: string };
  t.is(http.commit_lsn, formatLsn(commitA));
  t.is(http.flush_lsn, formatLsn(flushE));
  t.is(http.replicas[0]!.application_name, 'test');
  t.is(http.replicas[0]!.flush_lsn, formatLsn(got.last - 100n));
  t.is(http.replicas[0]!.remote_consistent_lsn, formatLsn(got.last - 2000n));
  // A client's reply request is answered at once, with a keepalive that asks for nothing.
  const before = got.keepalives.length;
  copy.sendStatus({ write: got.last, flush: got.last, apply: got.last, replyRequested: true });
  await until(() => got.keepalives.length > before, 'the reply');
  t.false(got.keepalives.at(-1)!.replyRequested);
  // Client-initiated end, as pg_receivewal does at --endpos.
  const end = await copy.end();
  t.is(end.reason, 'clientEnd');
  t.deepEqual(end.tags, ['START_STREAMING', 'START_REPLICATION']);
  t.true(end.usable);
  t.is(stream().replicas.size, 0, 'unregistered when the copy ended');
  await c.close();
});

test.serial('raising commit_lsn wakes a waiting sender at once, not on a poll', async (t) => {
  // A node whose senders would otherwise wake only every 10 minutes.
  const n2 = await startTestNode({ importFrom: await fx.prefixDir(fx.segments.length - 2), sender: { keepaliveIntervalMs: 600_000 } });
  t.teardown(() => n2.stop());
  const s = n2.node.stream();
  const a = s.commitLsn;
  await s.appendWal(a, (await fx.bytes()).subarray(Number(a - fx.firstLsn)));
  await s.flushWal();
  const c = await ReplicationClient.connect({ host: n2.host, port: n2.port });
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)}`);
  const got = collect(copy);
  await until(() => got.last === a, 'WAL up to commit_lsn');
  await until(() => s.commitWatch.waiting > 0, 'the sender to wait');
  const steps = [a + (flushE - a) / 3n, flushE];
  for (const target of steps) {
    const mark = Date.now();
    s.setCommitLsn(target);
    await until(() => got.last === target, `WAL up to ${formatLsn(target)}`, 30_000);
    t.log(`commit_lsn ${formatLsn(target)} delivered after ${Date.now() - mark} ms`);
    t.is(got.walEnds.at(-1), target, 'walEnd follows commit_lsn');
  }
  t.is(got.keepalives.length, 0, 'no keepalive was needed to move');
  await copy.end();
  await c.close();
});

test.serial('commands answer as PostgreSQL 15 does, and errors leave the connection usable', async (t) => {
  const c = await connect();
  const show = async (name: string) => (await c.query(`SHOW ${name}`)).rows[0]![0];
  t.is(await show('wal_segment_size'), '1MB');
  t.is(await show('data_directory_mode'), '0700');
  t.regex((await show('server_version'))!, /^15\.0/);
  await pgError(t, c.query('SHOW shared_buffers'), '42704', /unrecognized configuration parameter "shared_buffers"/);
  await pgError(t, c.query('SELECT 1'), '0A000', /cannot execute SQL commands in WAL sender for physical replication/);
  await pgError(t, c.query(''), '0A000', /cannot execute SQL/);
  await pgError(t, c.query('START_REPLICATION 0/XYZ'), '42601', /syntax error/);
  await pgError(t, c.query('START_REPLICATION 123456789/0'), '42601', /invalid streaming start location/);
  await pgError(t, c.query('TIMELINE_HISTORY 2'), '58P01', /could not open file "pg_wal\/00000002.history"/);
  await pgError(t, c.query('BASE_BACKUP'), '0A000', /BASE_BACKUP is not supported/);
  await pgError(t, c.query('CREATE_REPLICATION_SLOT l LOGICAL pgoutput'), '0A000', /logical/);
  await pgError(t, c.query('START_REPLICATION SLOT "nope" 0/1000000'), '42704', /replication slot "nope" does not exist/);
  await pgError(t, c.query('START_REPLICATION 0/1000000 TIMELINE 3'), 'XX000', /requested timeline 3 is not in this server's history/);
  // After CopyBothResponse, as PostgreSQL does: beyond the WAL, and before the oldest segment.
  for (const [cmd, code, re] of [
    [`START_REPLICATION ${formatLsn(flushE + 8n * BigInt(SEG))}`, 'XX000', /requested starting point .* is ahead of the WAL flush position of this server/],
    ['START_REPLICATION 0/10', '58P01', /requested WAL segment 000000010000000000000000 has already been removed/],
  ] as const) {
    const copy = c.startReplication(cmd);
    t.true(await copy.started, 'CopyBothResponse first');
    await pgError(t, copy.done, code, re);
  }
  t.is((await c.identifySystem()).systemId, fx.systemId, 'still usable');
  await c.close();
});

test.serial('slots: created, read, refused when active or duplicate, persisted, and they hold WAL', async (t) => {
  const c = await connect();
  t.deepEqual((await c.query('READ_REPLICATION_SLOT s1')).rows, [[null, null, null]]);
  const created = await c.query('CREATE_REPLICATION_SLOT "s1" PHYSICAL RESERVE_WAL');
  t.deepEqual(created.rows, [['s1', '0/0', null, null]]);
  t.deepEqual(created.fields.map((f) => f.name), ['slot_name', 'consistent_point', 'snapshot_name', 'output_plugin']);
  const read = (await c.query('READ_REPLICATION_SLOT s1')).rows[0]!;
  t.is(read[0], 'physical');
  t.is(read[1], formatLsn(commitA - (commitA % BigInt(SEG))), 'reserved from the segment of commit_lsn');
  t.is(read[2], '1');
  await pgError(t, c.query('CREATE_REPLICATION_SLOT s1 PHYSICAL'), '42710', /replication slot "s1" already exists/);
  await pgError(t, c.query('CREATE_REPLICATION_SLOT "Bad-Name" PHYSICAL'), '42602', /contains invalid character/);
  await pgError(t, c.query('DROP_REPLICATION_SLOT nope'), '42704', /does not exist/);
  // In use: a second START_REPLICATION on it and a DROP are refused.
  const c2 = await connect({ applicationName: 'holder' });
  const copy = c2.startReplication(`START_REPLICATION SLOT "s1" ${formatLsn(fx.firstLsn)}`);
  const got = collect(copy);
  await until(() => got.last === commitA, 'streaming');
  await pgError(t, c.query(`START_REPLICATION SLOT "s1" ${formatLsn(fx.firstLsn)}`), '55006', /replication slot "s1" is active for holder@/);
  await pgError(t, c.query('DROP_REPLICATION_SLOT s1'), '55006', /is active/);
  // The slot holds WAL: removal stops at its restart_lsn.
  const slotSeg = Number(stream().slots.get('s1')!.restartLsn / BigInt(SEG));
  await stream().removeWalBelow(flushE);
  t.is(Number(stream().oldestLsn! / BigInt(SEG)), slotSeg, 'nothing from the slot position on was removed');
  await copy.end();
  await c2.close();
  // Temporary slots vanish with their connection.
  await c.query('CREATE_REPLICATION_SLOT "tmp1" TEMPORARY PHYSICAL (RESERVE_WAL)');
  t.true(stream().slots.has('tmp1'));
  await c.query('DROP_REPLICATION_SLOT s1');
  t.false(stream().slots.has('s1'));
  await c.close();
  await until(() => !stream().slots.has('tmp1'), 'the temporary slot to go');
  await stream().persistNow();
  t.pass();
});

test.serial('ending a copy: cancel request (57014), stream suspended (00000), node shutdown (COPY 0)', async (t) => {
  // Cancel, like pg_ctl/pg_cancel_backend would.
  const c = await connect();
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(stream().oldestLsn!)}`);
  collect(copy);
  await until(() => stream().replicas.size === 1, 'the replica');
  await c.cancel();
  await pgError(t, copy.done, '57014', /canceling statement due to user request/);
  t.is(stream().replicas.size, 0);
  // Suspend: every sender ends cleanly, new connections are refused until resumed.
  const copy2 = c.startReplication(`START_REPLICATION ${formatLsn(stream().oldestLsn!)}`);
  collect(copy2);
  await until(() => stream().replicas.size === 1, 'the replica');
  stream().suspend('maintenance');
  const end = await copy2.done;
  t.is(end.reason, 'error');
  t.is(end.error?.code, '00000');
  t.regex(end.error!.message, /^ending streaming to test@127\.0\.0\.1:\d+ at .*: maintenance$/);
  await pgError(t, connect(), '57P03', /stream "main" is suspended/);
  stream().resume();
  await c.close();
  // Shutdown: the sender waits for the client to confirm, then C "COPY 0".
  const n3 = await startTestNode({ importFrom: await fx.prefixDir(2) });
  const c3 = await ReplicationClient.connect({ host: n3.host, port: n3.port });
  const copy3 = c3.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)}`);
  const got = collect(copy3);
  copy3.onKeepalive = (k) => {
    if (k.replyRequested) copy3.sendStatus({ write: got.last, flush: got.last, apply: got.last, replyRequested: false });
  };
  await until(() => got.last === n3.node.stream().commitLsn, 'caught up');
  const stopping = n3.stop();
  const r = await copy3.done;
  t.is(r.reason, 'commandComplete');
  t.deepEqual(r.tags, ['COPY 0']);
  await stopping;
});
