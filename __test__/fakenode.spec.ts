// The fake walkeeper node (harness/fakenode.ts) for receiver tests: its HTTP
// status says what its replication server serves, and both can be told to
// move on or misbehave. Checked with walkeeper's own client on real WAL.

import test, { type ExecutionContext } from 'ava';

import { formatLsn } from '../ts/lsn.js';
import { ReplicationClient, type CopyBoth } from '../ts/client/client.js';
import { neonFeedback, pgNow, type Keepalive } from '../ts/protocol/replication.js';
import {
  FAKE_NODE_OMIT,
  FIXTURE_SEG as SEG,
  makeWalFixture,
  registerCleanupHooks,
  startFakeNode,
  until,
  type FakeNode,
  type FakeNodeOptions,
  type WalFixture,
} from './harness/index.js';

registerCleanupHooks(test);

let fx: WalFixture;
let wal: Buffer;

test.before(async () => {
  fx = await makeWalFixture();
  wal = await fx.bytes();
});

test.after.always(async () => {
  await fx?.destroy();
});

async function fakeNode(t: ExecutionContext, extra: Partial<FakeNodeOptions> = {}): Promise<FakeNode> {
  const node = await startFakeNode({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: fx.systemId, ...extra });
  t.teardown(() => node.close());
  return node;
}

async function connect(t: ExecutionContext, node: FakeNode, address?: string): Promise<ReplicationClient> {
  const [host, port] = (address ?? node.pgAddress).split(':');
  const c = await ReplicationClient.connect({ host: host!, port: Number(port), applicationName: 'fakenode-test', options: `-c stream=${node.stream}` });
  t.teardown(() => c.close());
  return c;
}

async function get(node: FakeNode, path: string, init: RequestInit = {}): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${node.httpUrl}${path}`, init);
  const text = await res.text();
  return { status: res.status, body: res.headers.get('content-type')?.startsWith('application/json') ? JSON.parse(text) : text };
}

async function streamStatus(node: FakeNode): Promise<Record<string, unknown>> {
  const r = await get(node, `/v1/streams/${node.stream}`);
  if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
  return r.body as Record<string, unknown>;
}

interface Got {
  msgs: { start: bigint; end: bigint; data: Buffer }[];
  keepalives: Keepalive[];
  /** End LSN of the last XLogData (start + data length); 0n before any. */
  received(): bigint;
}

function collect(copy: CopyBoth): Got {
  const got: Got = {
    msgs: [],
    keepalives: [],
    received: () => {
      const m = got.msgs.at(-1);
      return m ? m.start + BigInt(m.data.length) : 0n;
    },
  };
  copy.onXLogData = (m) => got.msgs.push({ start: m.start, end: m.end, data: Buffer.from(m.data) });
  copy.onKeepalive = (k) => got.keepalives.push(k);
  return got;
}

const at = (lsn: bigint): number => Number(lsn - fx.firstLsn);

test('HTTP: /v1/streams/<name> describes the stream and the replication address; /healthz, the list, 404s', async (t) => {
  const node = await fakeNode(t, { stream: 'pg1', nodeId: 3, availabilityZone: 'az-b' });
  t.regex(node.httpUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  t.regex(node.pgAddress, /^127\.0\.0\.1:\d+$/);
  t.is(node.pgAddress, `${node.upstream.host}:${node.upstream.port}`);
  const s = await streamStatus(node);
  t.like(s, {
    name: 'pg1',
    state: 'active',
    node_id: 3,
    system_id: fx.systemId.toString(),
    pg_version: 15,
    tli: 1,
    segment_size: SEG,
    flush_lsn: formatLsn(fx.end),
    commit_lsn: formatLsn(fx.end),
    oldest_lsn: formatLsn(fx.firstLsn),
    pg_address: node.pgAddress,
    http_address: node.httpAddress,
    availability_zone: 'az-b',
  });
  t.is(typeof s.system_id, 'string');
  t.deepEqual(s, { ...node.status(), updated_at: s.updated_at });

  t.like((await get(node, '/healthz')).body, { status: 'ok', node_id: 3 });
  const list = await get(node, '/v1/streams');
  t.is(list.status, 200);
  t.is((list.body as { name: string }[])[0]!.name, 'pg1');
  t.is((await get(node, '/v1/streams/main')).status, 404);
  t.is((await get(node, '/nope')).status, 404);
  t.is((await get(node, '/v1/streams/pg1', { method: 'POST' })).status, 405);
  t.deepEqual(node.requests.slice(0, 3), ['GET /v1/streams/pg1', 'GET /healthz', 'GET /v1/streams']);

  const dflt = await fakeNode(t);
  t.like(await streamStatus(dflt), { name: 'main', node_id: 1, availability_zone: null });
});

test('setStatus overrides fields at any time (bigint LSNs formatted), undefined restores the default, FAKE_NODE_OMIT drops a field', async (t) => {
  const node = await fakeNode(t, { status: { node_id: 9 } });
  t.is((await streamStatus(node)).node_id, 9);
  node.setStatus({ commit_lsn: fx.firstLsn + 16n, tli: 4, pg_address: '10.0.0.1:5432', extra_field: [1, 2] });
  let s = await streamStatus(node);
  t.like(s, { commit_lsn: formatLsn(fx.firstLsn + 16n), tli: 4, pg_address: '10.0.0.1:5432', node_id: 9, flush_lsn: formatLsn(fx.end) });
  t.deepEqual(s.extra_field, [1, 2]);
  node.setStatus({ commit_lsn: undefined, system_id: 42n, availability_zone: FAKE_NODE_OMIT });
  s = await streamStatus(node);
  t.is(s.commit_lsn, formatLsn(fx.end));
  t.is(s.system_id, '42');
  t.false('availability_zone' in s);
  t.is(s.tli, 4, 'other overrides stay');
});

test('HTTP faults: an error status, a reset, a request that hangs; null answers again', async (t) => {
  const node = await fakeNode(t);
  node.setHttpFault({ status: 503 });
  t.deepEqual(await get(node, '/v1/streams/main'), { status: 503, body: { error: 'injected HTTP 503' } });
  node.setHttpFault({ status: 200, body: 'not json' });
  t.deepEqual(await get(node, '/v1/streams/main'), { status: 200, body: 'not json' });
  node.setHttpFault('reset');
  await t.throwsAsync(get(node, '/v1/streams/main'));
  node.setHttpFault('hang');
  // (fetch rejects with a DOMException, which is no Error to t.throwsAsync.)
  const outcome = await get(node, '/v1/streams/main', { signal: AbortSignal.timeout(200) }).then(
    () => 'answered',
    (e: { name?: string }) => String(e?.name),
  );
  t.is(outcome, 'TimeoutError');
  node.setHttpFault(null);
  t.is((await get(node, '/v1/streams/main')).status, 200);
  // The replication side does not care.
  const c = await connect(t, node);
  t.is((await c.identifySystem()).systemId, fx.systemId);
});

test('streaming from pg_address: IDENTIFY_SYSTEM and the whole WAL up to commit_lsn; r and z feedback land in the log', async (t) => {
  const node = await fakeNode(t, { chunk: 64 * 1024, keepaliveMs: 100 });
  const s = await streamStatus(node);
  const c = await connect(t, node, s.pg_address as string);
  const sys = await c.identifySystem();
  t.is(sys.systemId.toString(), s.system_id as string);
  t.is(formatLsn(sys.xlogpos), s.commit_lsn as string);
  t.deepEqual((await c.query('SHOW server_version_num')).rows, [['150004']]);

  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  await until(() => got.received() === fx.end, 'all the WAL');
  t.true(Buffer.concat(got.msgs.map((m) => m.data)).equals(wal));
  t.true(got.msgs.every((m) => m.end === fx.end));
  const k = await until(() => got.keepalives.some((x) => x.replyRequested), 'an idle keepalive').then(() => got.keepalives[0]!);
  t.is(k.walEnd, fx.end);

  copy.sendStatus({ write: fx.end, flush: fx.end - 100n, apply: 0n });
  copy.send(neonFeedback({ currentTimelineSize: 7n, lastReceivedLsn: fx.end, diskConsistentLsn: fx.end - 10n, remoteConsistentLsn: fx.firstLsn, replyTime: pgNow() }));
  await until(() => node.upstream.log.neon.length === 1 && node.upstream.log.status.length >= 1, 'the feedback');
  t.like(node.upstream.log.status.at(-1), { write: fx.end, flush: fx.end - 100n, apply: 0n });
  t.like(node.upstream.log.neon[0], { currentTimelineSize: 7n, lastReceivedLsn: fx.end, diskConsistentLsn: fx.end - 10n, remoteConsistentLsn: fx.firstLsn });
  t.is((await copy.end()).reason, 'clientEnd');
  t.is(node.upstream.log.startups[0]!.options, '-c stream=main');
});

test('limit plays commit_lsn: WAL and walEnd stop there, the status says so, and raising it moves running streams on', async (t) => {
  const limit1 = fx.firstLsn + BigInt(SEG) + 12_345n;
  const node = await fakeNode(t, { limit: limit1, chunk: 100_000, keepaliveMs: 100 });
  t.like(await streamStatus(node), { commit_lsn: formatLsn(limit1), flush_lsn: formatLsn(fx.end) });
  t.is(node.servedEnd, limit1);
  const c = await connect(t, node);
  t.is((await c.identifySystem()).xlogpos, limit1);

  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  await until(() => got.received() === limit1, 'WAL up to the limit');
  await until(() => got.keepalives.length >= 2, 'keepalives while held back');
  t.is(got.received(), limit1, 'nothing past the limit');
  t.true(got.msgs.every((m) => m.end === limit1));
  t.true(got.keepalives.every((k) => k.walEnd === limit1));

  const limit2 = limit1 + 3n * 100_000n + 7n;
  node.setLimit(limit2);
  t.is((await streamStatus(node)).commit_lsn, formatLsn(limit2));
  await until(() => got.received() === limit2, 'WAL up to the new limit');
  t.is(got.msgs.at(-1)!.end, limit2);

  node.setLimit(null);
  await until(() => got.received() === fx.end, 'the rest');
  t.true(Buffer.concat(got.msgs.map((m) => m.data)).equals(wal));
  t.is((await streamStatus(node)).commit_lsn, formatLsn(fx.end));
  await copy.end();

  // A start between the limit and the end of the WAL waits for the limit, as a node does.
  node.setLimit(limit1);
  const c2 = await connect(t, node);
  const from = limit1 + 50_000n;
  const copy2 = c2.startReplication(`START_REPLICATION ${formatLsn(from)} TIMELINE 1`);
  const got2 = collect(copy2);
  t.true(await copy2.started);
  await new Promise((r) => setTimeout(r, 200));
  t.is(got2.msgs.length, 0);
  node.setLimit(from + 1000n);
  await until(() => got2.received() === from + 1000n, 'WAL after the raise');
  t.true(got2.msgs[0]!.data.equals(wal.subarray(at(from), at(from) + 1000)));
  await copy2.end();
});

test('walEnd lies: XLogData and keepalives carry what walEnd() answers; a mutation can still send raw bytes mid-COPY', async (t) => {
  const node = await fakeNode(t, { chunk: 200_000, keepaliveMs: 100, walEnd: (sent) => sent - 1n });
  const c = await connect(t, node);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy);
  await until(() => got.received() === fx.end && got.keepalives.length > 0, 'everything, then a keepalive');
  t.true(got.msgs.every((m) => m.end === m.start + BigInt(m.data.length) - 1n), 'walEnd one byte short of what came');
  t.is(got.keepalives[0]!.walEnd, fx.end - 1n);
  t.is((await streamStatus(node)).commit_lsn, formatLsn(fx.end), 'the status is honest');
  await copy.end();

  node.setOptions({ walEnd: () => 0n, mutate: ({ index }) => (index === 2 ? Buffer.from('d\0\0\0\x05\x77', 'latin1') : null) });
  const c2 = await connect(t, node);
  const copy2 = c2.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got2 = collect(copy2);
  const bad = await t.throwsAsync(copy2.done);
  t.regex(bad!.message, /invalid XLogData message: 1 bytes/);
  t.is(got2.msgs.length, 2);
  t.true(got2.msgs.every((m) => m.end === 0n));
});

test('z feedback is refused by a fake upstream without neonFeedback (as PostgreSQL), and setOptions moves the status with the WAL', async (t) => {
  const node = await fakeNode(t, { stopAfter: 1, keepaliveMs: 0 });
  node.setOptions({ neonFeedback: false, tli: 2, wal: wal.subarray(0, SEG) });
  t.like(await streamStatus(node), { tli: 2, flush_lsn: formatLsn(fx.firstLsn + BigInt(SEG)), commit_lsn: formatLsn(fx.firstLsn + BigInt(SEG)) });
  const c = await connect(t, node);
  t.deepEqual(await c.identifySystem(), { systemId: fx.systemId, timeline: 2, xlogpos: fx.firstLsn + BigInt(SEG), dbname: null });
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 2`);
  const got = collect(copy);
  await until(() => got.msgs.length === 1, 'one XLogData');
  copy.send(neonFeedback({ currentTimelineSize: 1n, lastReceivedLsn: 1n, diskConsistentLsn: 1n, remoteConsistentLsn: 1n, replyTime: 1n }));
  await t.throwsAsync(copy.done, { message: /unexpected message type "z"/ });
  t.deepEqual(node.upstream.log.neon, []);
});

test('close() stops both servers and is idempotent', async (t) => {
  const node = await startFakeNode({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: fx.systemId });
  const c = await connect(t, node);
  node.setHttpFault('hang');
  const hanging = fetch(`${node.httpUrl}/v1/streams/main`).then(
    () => 'answered',
    () => 'failed',
  );
  await until(() => node.requests.length === 1, 'the request');
  await Promise.all([node.close(), node.close()]);
  t.is(await hanging, 'failed');
  await t.throwsAsync(fetch(`${node.httpUrl}/healthz`));
  await t.throwsAsync(c.identifySystem());
});
