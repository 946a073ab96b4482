// Issue 4 acceptance f: an upstream that misbehaves — WAL at a
// non-contiguous position, page headers that do not fit (magic, pageaddr,
// system id), another database system — stops ingest for that stream with a
// logged error; nothing of the bad WAL is written or acknowledged, and the
// node keeps serving its other streams.

import path from 'node:path';

import test from 'ava';

import { formatLsn, importWal } from '../ts/index.js';
import { ReplicationClient } from '../ts/client/client.js';
import {
  createTempDir,
  makeWalFixture,
  startFakeUpstream,
  startTestNode,
  until,
  type FakeUpstreamOptions,
  type TempDir,
  type WalFixture,
} from './harness/index.js';

let fx: WalFixture;
let other: WalFixture;
let tmp: TempDir;
let wal: Buffer;

test.before(async () => {
  [fx, other] = await Promise.all([makeWalFixture({ minBytes: 2 * 1024 * 1024 }), makeWalFixture({ minBytes: 1024 * 1024 })]);
  tmp = await createTempDir('walkeeper-ingest-bad-');
  wal = await fx.bytes();
});
test.after.always(async () => {
  await fx?.destroy();
  await other?.destroy();
  await tmp?.cleanup();
});

const CHUNK = 8192 * 4;
let n = 0;

/**
 * A node following a fake upstream that misbehaves from message `badIndex`
 * on; a second stream ('other', imported) is served meanwhile.
 */
async function scenario(t: import('ava').ExecutionContext, mutate: FakeUpstreamOptions['mutate'], expectError: RegExp, opts: Partial<FakeUpstreamOptions> = {}) {
  const up = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: 1024 * 1024, systemId: fx.systemId, chunk: CHUNK, mutate, ...opts });
  t.teardown(() => up.close());
  const dataDir = path.join(tmp.path, `n${n++}`);
  await importWal({ dataDir, stream: 'other', walDir: other.walDir });
  const node = await startTestNode({ dataDir, upstream: up.conninfo, stream: 'main' });
  t.teardown(() => node.stop());
  const ingest = node.node.ingest('main')!;
  await until(() => ingest.state === 'failed', 'ingest to stop');
  const err = ingest.status().lastError ?? '';
  t.regex(err, expectError);
  const line = node.logs.find((l) => l.msg === 'ingest stopped');
  t.is(line?.stream, 'main', 'the log line names the stream');
  t.regex(String(line?.err), expectError);
  // The other stream is still served.
  const c = await ReplicationClient.connect({ host: node.host, port: node.port, options: '-c stream=other' });
  t.is((await c.identifySystem()).systemId, other.systemId);
  await c.close();
  return { up, node };
}

/** Nothing past `goodEnd` is on disk, flushed, or acknowledged to the upstream. */
async function nothingPast(t: import('ava').ExecutionContext, s: { up: Awaited<ReturnType<typeof startFakeUpstream>>; node: Awaited<ReturnType<typeof startTestNode>> }, goodEnd: bigint) {
  const stream = s.node.node.streams.get('main')?.stream;
  if (stream) {
    t.true(stream.flushLsn <= goodEnd, `flush ${formatLsn(stream.flushLsn)} ≤ ${formatLsn(goodEnd)}`);
    t.true((stream.store.state.writeLsn ?? 0n) <= goodEnd, `written ${formatLsn(stream.store.state.writeLsn ?? 0n)}`);
    if (stream.flushLsn > fx.firstLsn) {
      const back = Buffer.alloc(Number(stream.flushLsn - fx.firstLsn));
      await stream.store.read(1, fx.firstLsn, back);
      t.true(back.equals(wal.subarray(0, back.length)), 'what was written is the good WAL');
    }
  }
  for (const st of s.up.log.status) {
    t.true(st.flush <= goodEnd && st.write <= goodEnd, `acknowledged ${formatLsn(st.flush)}/${formatLsn(st.write)} ≤ ${formatLsn(goodEnd)}`);
  }
}

const BAD = 5;
const goodEnd = () => fx.firstLsn + BigInt(BAD * CHUNK);

test('WAL at a non-contiguous position', async (t) => {
  const s = await scenario(t, (m) => (m.index === BAD ? { start: m.start + 8192n, data: m.data } : null), /sent WAL at .*, expected .* \(not contiguous\)/);
  await nothingPast(t, s, goodEnd());
});

test('a page header with the wrong magic', async (t) => {
  const s = await scenario(
    t,
    (m) => {
      if (m.index !== BAD) return null;
      m.data.writeUInt16LE(0xd113, 8192); // a PG 16 page in PG 15 WAL
      return { start: m.start, data: m.data };
    },
    /has magic D113, expected D110/,
  );
  await nothingPast(t, s, goodEnd());
});

test('a page header with the wrong pageaddr (stale data)', async (t) => {
  const s = await scenario(
    t,
    (m) => {
      if (m.index !== BAD) return null;
      m.data.writeBigUInt64LE(m.start + 8192n - 0x100000n, 8192 + 8);
      return { start: m.start, data: m.data };
    },
    /has pageaddr/,
  );
  await nothingPast(t, s, goodEnd());
});

test('a segment from another database system mid-stream', async (t) => {
  // The first message of the second segment carries a long header with another system id.
  const secondSeg = Math.ceil((1024 * 1024) / CHUNK);
  const s = await scenario(
    t,
    (m) => {
      if (m.start % BigInt(1024 * 1024) !== 0n || m.index === 0) return null;
      m.data.writeBigUInt64LE(other.systemId, 24);
      return { start: m.start, data: m.data };
    },
    /is from database system \d+, this stream's is \d+/,
  );
  await nothingPast(t, s, fx.firstLsn + BigInt(secondSeg * CHUNK));
});

test('an upstream of another database system than the stream holds: refused before any WAL', async (t) => {
  // First follow the fixture's system, then point the same stream at an upstream that claims another system.
  const up = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: 1024 * 1024, systemId: fx.systemId, chunk: CHUNK, stopAfter: 3 });
  t.teardown(() => up.close());
  const dataDir = path.join(tmp.path, `n${n++}`);
  let node = await startTestNode({ dataDir, upstream: up.conninfo });
  await until(() => (node.node.streams.get('main')?.stream.flushLsn ?? 0n) >= fx.firstLsn + BigInt(3 * CHUNK), 'the first WAL');
  await node.stop();
  const impostor = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: 1024 * 1024, systemId: other.systemId, chunk: CHUNK });
  t.teardown(() => impostor.close());
  node = await startTestNode({ dataDir, upstream: impostor.conninfo });
  t.teardown(() => node.stop());
  const ingest = node.node.ingest('main')!;
  await until(() => ingest.state === 'failed', 'ingest to stop');
  t.regex(ingest.status().lastError!, new RegExp(`stream main holds WAL of database system ${fx.systemId}; the upstream is system ${other.systemId}; refusing its WAL`));
  t.false(impostor.log.commands.some((c) => c.startsWith('START_REPLICATION')), 'no WAL was even asked for');
  t.is(node.node.stream().flushLsn, fx.firstLsn + BigInt(3 * CHUNK));
});

test('a stalled or vanishing upstream is retried, and the stream continues where it was', async (t) => {
  const up = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: 1024 * 1024, systemId: fx.systemId, chunk: CHUNK, closeAfter: 7 });
  t.teardown(() => up.close());
  const node = await startTestNode({ dataDir: path.join(tmp.path, `n${n++}`), upstream: up.conninfo });
  t.teardown(() => node.stop());
  await until(() => up.log.connections >= 2, 'a reconnect');
  up.setOptions({ closeAfter: undefined });
  const end = fx.firstLsn + BigInt(wal.length);
  await until(() => (node.node.streams.get('main')?.stream.flushLsn ?? 0n) >= end, 'all WAL', 60_000);
  const back = Buffer.alloc(wal.length);
  await node.node.stream().store.read(1, fx.firstLsn, back);
  t.true(back.equals(wal));
  // The acknowledgement goes out right after the flush; let it arrive.
  await until(() => up.log.status.some((s) => s.flush === end), 'the end to be acknowledged');
  t.pass();
});

test("an idle upstream's keepalives that ask for a reply are answered at once with the flushed position (its wal_sender_timeout never fires)", async (t) => {
  const up = await startFakeUpstream({ wal, walStart: fx.firstLsn, segmentSize: 1024 * 1024, systemId: fx.systemId, chunk: CHUNK, stopAfter: 3, keepaliveMs: 150 });
  t.teardown(() => up.close());
  const node = await startTestNode({ dataDir: path.join(tmp.path, `n${n++}`), upstream: up.conninfo });
  t.teardown(() => node.stop());
  const held = fx.firstLsn + BigInt(3 * CHUNK);
  await until(() => (node.node.streams.get('main')?.stream.flushLsn ?? 0n) >= held, 'the first WAL');
  const before = up.log.status.length;
  // The node's own status interval is 10 s: within 1.5 s only the keepalives (every 150 ms) can draw replies.
  await new Promise((r) => setTimeout(r, 1500));
  const replies = up.log.status.slice(before);
  t.true(replies.length >= 5, `${replies.length} status updates in 1.5 s`);
  for (const s of replies) t.like(s, { write: held, flush: held, apply: held, replyRequested: false });
  t.is(node.logs.find((l) => l.msg === 'streaming from the upstream')?.pump, true);
});
