// Issue 5 acceptance c and d: a fault-injecting proxy makes a node stall,
// fall behind or go silent on WAL, and each reason fires; misbehaving nodes
// are dropped with the reason, put on cooldown, and the receiver goes on
// with the others. Every run ends with exactly the primary's WAL.

import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn, HttpStatusSource, WalReceiver, WalStore, type CandidateSource, type NodeStatus, type SwitchEvent, type WalChunk } from '../ts/index.js';
import {
  createTempDir,
  lsnOf,
  makeWalFixture,
  registerCleanupHooks,
  startFakeNode,
  startPostgres,
  startTcpProxy,
  startTestNode,
  until,
  type PgCluster,
  type TempDir,
  type TestNode,
  type WalFixture,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-rxfaults-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

/** Candidate statuses from the nodes' HTTP, with replication addresses rewritten (through a proxy) and nodes hidden until shown. */
class TestSource implements CandidateSource {
  readonly inner: HttpStatusSource;
  readonly hidden = new Set<string>();
  readonly rewrite = new Map<string, string>();
  constructor(urls: string[]) {
    this.inner = new HttpStatusSource(urls, 'main', 100);
  }
  start(onStatus: (s: NodeStatus) => void, onError: (id: string, e: Error) => void): void {
    this.inner.start((s) => {
      if (this.hidden.has(s.nodeId)) return;
      onStatus({ ...s, pgAddress: this.rewrite.get(s.nodeId) ?? s.pgAddress });
    }, onError);
  }
  stop(): void {
    this.inner.stop();
  }
}

/**
 * Consumes a receiver, checking contiguity; the bytes received, in order.
 * With `store` (the receiver's sink: walkeeper receive's Rust pump), the WAL
 * goes into the store instead, and bytes() reads it back from there.
 */
function collect(rx: WalReceiver, store?: WalStore) {
  const got = { chunks: [] as Buffer[], first: null as bigint | null, next: null as bigint | null, switches: [] as SwitchEvent[], errors: [] as string[] };
  rx.on('switch', (e) => got.switches.push(e));
  rx.on('error', (e) => got.errors.push(e.message));
  if (store) {
    rx.on('connect', (e) => (got.first ??= e.startLsn));
    rx.on('progress', (p) => (got.next = p.received));
  }
  const bytes = async (): Promise<Buffer> => {
    if (!store) return Buffer.concat(got.chunks);
    const out = Buffer.alloc(Number(got.next! - got.first!));
    for (let off = 0; off < out.length; ) {
      const n = await store.read(store.state.tli, got.first! + BigInt(off), out.subarray(off));
      if (n <= 0) throw new Error(`the store ends at ${formatLsn(got.first! + BigInt(off))}`);
      off += n;
    }
    return out;
  };
  const done = (async () => {
    for await (const c of rx as AsyncIterable<WalChunk>) {
      if (got.next !== null && c.startLsn !== got.next) throw new Error(`gap or duplicate: ${formatLsn(c.startLsn)} after ${formatLsn(got.next)}`);
      got.first ??= c.startLsn;
      got.next = c.endLsn;
      got.chunks.push(Buffer.from(c.data));
      rx.ack(c.endLsn);
    }
  })();
  return { got, done, bytes };
}

/** A store in a fresh directory, for a receiver's sink. */
async function sinkStore(name: string): Promise<WalStore> {
  return WalStore.open(path.join(tmp.path, `${name}-sink-${Math.random().toString(36).slice(2)}`), SEG, 1);
}

async function primaryBytes(pg: PgCluster, from: bigint, to: bigint): Promise<Buffer> {
  const names = new Set(await readdir(pg.walDir));
  const parts: Buffer[] = [];
  for (let seg = Number(from / BigInt(SEG)); BigInt(seg) * BigInt(SEG) < to; seg++) {
    const name = `00000001${'0'.repeat(8)}${seg.toString(16).toUpperCase().padStart(8, '0')}`;
    if (!names.has(name)) throw new Error(`${name} is gone from pg_wal`);
    parts.push(await readFile(path.join(pg.walDir, name)));
  }
  const all = Buffer.concat(parts);
  const base = BigInt(Math.floor(Number(from / BigInt(SEG)))) * BigInt(SEG);
  return all.subarray(Number(from - base), Number(to - base));
}

async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

interface Cluster {
  pg: PgCluster;
  a: TestNode;
  b: TestNode;
  upA: Awaited<ReturnType<typeof startTcpProxy>>;
  rxA: Awaited<ReturnType<typeof startTcpProxy>>;
}

/** A primary; node A follows it through a proxy (upA) and is reached by the receiver through another (rxA); node B is direct. */
async function cluster(t: import('ava').ExecutionContext, name: string): Promise<Cluster> {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB' } });
  t.teardown(() => pg.destroy());
  const upA = await startTcpProxy({ host: '127.0.0.1', port: pg.port });
  t.teardown(() => upA.close());
  const a = await startTestNode({ dataDir: path.join(tmp.path, `${name}-a`), nodeId: 1, upstream: `host=127.0.0.1 port=${upA.port} user=postgres` });
  t.teardown(() => a.stop());
  const b = await startTestNode({ dataDir: path.join(tmp.path, `${name}-b`), nodeId: 2, upstream: `host=127.0.0.1 port=${pg.port} user=postgres` });
  t.teardown(() => b.stop());
  const rxA = await startTcpProxy({ host: '127.0.0.1', port: a.port });
  t.teardown(() => rxA.close());
  await pg.query('CREATE TABLE t (id int, v text)');
  const f = await flushLsn(pg);
  await until(() => [a, b].every((n) => (n.node.streams.get('main')?.stream.commitLsn ?? 0n) >= f), 'both nodes to follow');
  return { pg, a, b, upA, rxA };
}

async function write(pg: PgCluster, mib: number): Promise<void> {
  await pg.query(`INSERT INTO t SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, ${Math.ceil((mib * 1048576) / 1100)}) g`);
}

/** Runs a receiver connected to A, applies `fault`, expects a switch to B for `reason`, then checks the WAL. */
async function scenario(t: import('ava').ExecutionContext, name: string, policy: Record<string, unknown>, fault: (c: Cluster) => Promise<void>, reason: string, sink = false) {
  const c = await cluster(t, name);
  const store = sink ? await sinkStore(name) : undefined;
  const source = new TestSource([c.a.httpUrl, c.b.httpUrl]);
  source.rewrite.set(c.a.httpUrl, c.rxA.address);
  source.hidden.add(c.b.httpUrl);
  const rx = new WalReceiver({ source, policy: { connectTimeoutMs: 10_000, laggingWalTimeoutMs: 60_000, ...policy }, sink: store ? { store } : undefined });
  const { got, done, bytes } = collect(rx, store);
  await write(c.pg, 0.5);
  await until(() => got.next !== null && got.next >= c.a.node.stream().commitLsn, 'the receiver to stream from A');
  t.is(got.switches.length, 1);
  t.is(got.switches[0]!.to, c.a.httpUrl);
  source.hidden.delete(c.b.httpUrl);
  await fault(c);
  await until(() => got.switches.length > 1, `a switch (${reason})`, 30_000);
  const sw = got.switches[1]!;
  t.is(sw.reason.kind as string, reason, sw.description);
  t.is(sw.from, c.a.httpUrl);
  t.is(sw.to, c.b.httpUrl);
  t.log(sw.description);
  // Heal, write more, and check that everything received is the primary's WAL.
  c.upA.resume();
  c.rxA.resume();
  await write(c.pg, 1);
  const end = await flushLsn(c.pg);
  await until(() => got.next !== null && got.next >= end, 'the receiver to catch up', 30_000);
  await rx.stop();
  await done;
  const want = await primaryBytes(c.pg, got.first!, got.next!);
  t.true((await bytes()).equals(want), 'byte-identical to the primary, no gap, no duplicate');
  if (store) t.is(got.chunks.length, 0, 'with a sink, the WAL does not reach the iterator');
}

// Each on the iterator path (WAL handed to the caller) and on walkeeper
// receive's path (the Rust pump writing into a directory).
const faults: { name: string; title: string; policy: Record<string, unknown>; fault: (c: Cluster) => Promise<void>; reason: string }[] = [
  {
    name: 'nokeepalives',
    title: 'a stalled node (no message for the connect timeout) triggers NoKeepAlives',
    policy: { connectTimeoutMs: 2000 },
    fault: async (c) => c.rxA.stall(),
    reason: 'NoKeepAlives',
  },
  {
    name: 'lagging',
    title: 'a node held behind by more than the lag threshold triggers LaggingWal',
    policy: { maxLsnWalLag: 1n << 20n },
    fault: async (c) => {
      c.upA.stall();
      await write(c.pg, 3);
    },
    reason: 'LaggingWal',
  },
  {
    name: 'nowal',
    title: 'a node silent on WAL while another has more triggers NoWalTimeout',
    policy: { laggingWalTimeoutMs: 2000, maxLsnWalLag: 1n << 30n },
    fault: async (c) => {
      c.upA.stall();
      await write(c.pg, 0.3);
    },
    reason: 'NoWalTimeout',
  },
];
for (const sink of [false, true]) {
  for (const f of faults) {
    test(`${sink ? 'pump: ' : ''}${f.title}`, (t) => scenario(t, sink ? `${f.name}-sink` : f.name, f.policy, f.fault, f.reason, sink));
  }
}

// --- d: misbehaving nodes ------------------------------------------------------

let fx: WalFixture;
let other: WalFixture;
let wal: Buffer;

test.before(async () => {
  [fx, other] = await Promise.all([makeWalFixture({ minBytes: 2 * SEG }), makeWalFixture({ minBytes: SEG })]);
  wal = await fx.bytes();
});
test.after.always(async () => {
  await fx?.destroy();
  await other?.destroy();
});

async function badNodeScenario(t: import('ava').ExecutionContext, bad: Parameters<typeof startFakeNode>[0], expect: RegExp, sink = false) {
  const end = fx.firstLsn + BigInt(wal.length);
  const good = await startFakeNode({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: fx.systemId, nodeId: 1, limit: end - 8192n * 4n, chunk: 65536 });
  t.teardown(() => good.close());
  const badNode = await startFakeNode({ nodeId: 2, chunk: 65536, ...bad });
  t.teardown(() => badNode.close());
  // Only the bad node is visible at first, so that it is the one chosen.
  const source = new TestSource([good.httpUrl, badNode.httpUrl]);
  source.hidden.add(good.httpUrl);
  const store = sink ? await sinkStore('bad') : undefined;
  const rx = new WalReceiver({ source, startLsn: fx.firstLsn, tli: 1, systemId: fx.systemId, sink: store ? { store } : undefined });
  const { got, done, bytes } = collect(rx, store);
  await until(() => got.errors.length > 0, 'the bad node to be dropped', 30_000);
  source.hidden.delete(good.httpUrl);
  t.regex(got.errors[0]!, expect, got.errors[0]);
  t.true(got.errors[0]!.includes(badNode.httpUrl), 'the error names the node');
  const cand = rx.policy.candidates().find((c) => c.nodeId === badNode.httpUrl);
  t.true((cand?.nextRetryAt ?? 0) > 0, `the bad node is on cooldown (${got.errors[0]})`);
  good.setLimit(null);
  await until(() => got.next === end, 'all WAL from the good node', 30_000);
  await rx.stop();
  await done;
  t.is(got.first, fx.firstLsn);
  t.true((await bytes()).equals(wal), sink ? 'nothing invalid was written' : 'nothing invalid was handed on');
}

const badBase = () => ({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: fx.systemId });

/** A page header in the third message's data made wrong (its pageaddr). */
const corruptPage = (m: { index: number; start: bigint; data: Buffer }) => {
  if (m.index !== 3) return null;
  const at = Number((8192n - (m.start % 8192n)) % 8192n);
  if (at + 24 > m.data.length) return null;
  const data = Buffer.from(m.data);
  data.writeBigUInt64LE(0xdeadbeefn, at + 8);
  return { start: m.start, data };
};

/** `expect` is what the iterator path reports; `pumpExpect`, where the Rust pump words it more narrowly. */
const badNodes: { title: string; node: () => Parameters<typeof startFakeNode>[0]; expect: RegExp; pumpExpect?: RegExp }[] = [
  {
    title: 'a node sending non-contiguous XLogData is dropped',
    node: () => ({ ...badBase(), mutate: (m) => (m.index === 3 ? { start: m.start + 8192n, data: m.data } : null) }),
    expect: /not contiguous/,
  },
  {
    title: 'a node of another database system is dropped',
    node: () => ({ wal, walStart: fx.firstLsn, segmentSize: SEG, systemId: other.systemId, status: { system_id: fx.systemId.toString() } }),
    expect: /system/,
  },
  {
    title: 'a node sending a malformed message is dropped',
    node: () => ({ ...badBase(), mutate: (m) => (m.index === 2 ? Buffer.from([0x64, 0, 0, 0, 9, 0x77, 1, 2, 3, 4]) : null) }),
    expect: /malformed|truncated|XLogData/i,
    pumpExpect: /malformed/i,
  },
  {
    title: 'a node sending WAL beyond the commit_lsn it advertises is dropped',
    node: () => ({ ...badBase(), walEnd: (sent: bigint) => sent - 100n }),
    expect: /beyond the end it announces/,
  },
  {
    title: 'a node sending a page that is not what it claims is dropped',
    node: () => ({ ...badBase(), mutate: corruptPage }),
    expect: /invalid WAL: WAL page at .* pageaddr/,
  },
];
// The same nodes against both paths; on the pump's, nothing invalid may reach the directory.
for (const sink of [false, true]) {
  for (const b of badNodes) {
    test(`${sink ? 'pump: ' : ''}${b.title}`, (t) => badNodeScenario(t, b.node(), sink ? (b.pumpExpect ?? b.expect) : b.expect, sink));
  }
}
