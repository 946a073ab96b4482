// The send pump (crates/walcore/src/send_pump.rs) against the JS path it
// stands in for while a client catches up: the same messages with the same
// bytes, a client's own traffic (reply requests) around it without a torn
// message, a slow client, a client that goes away, and a segment that is gone.

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import { ReplicationClient, type CopyBoth } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import { FIXTURE_SEG as SEG, makeWalFixture, startTestNode, type TestNode, type WalFixture, until } from './harness/index.js';

let fx: WalFixture;
let pumped: TestNode;
let plain: TestNode;

test.before(async () => {
  // More WAL than a paused client's socket can absorb: receive buffers autotune up to tcp_rmem's
  // maximum (32 MiB on some kernels) and the node's send buffer holds 4 MiB more, so that with a
  // smaller fixture the node could send all of it before the last test removes segments.
  fx = await makeWalFixture({ minBytes: 48 * SEG });
  [pumped, plain] = await Promise.all([
    startTestNode({ importFrom: fx.walDir, sender: { sendPump: true } }),
    startTestNode({ importFrom: fx.walDir, sender: { sendPump: false } }),
  ]);
});

test.after.always(async () => {
  await Promise.all([pumped?.stop(), plain?.stop()]);
  await fx?.destroy();
});

function connect(n: TestNode, applicationName = 'pumptest'): Promise<ReplicationClient> {
  return ReplicationClient.connect({ host: n.host, port: n.port, applicationName });
}

interface Got {
  /** [start, length] of every XLogData, in order. */
  messages: [bigint, number][];
  chunks: Buffer[];
  last: bigint;
  keepalives: number;
  replies: number;
}

/** Collects a copy's XLogData, failing on a gap; `onData` runs after each. */
function collect(copy: CopyBoth, start: bigint, onData?: (got: Got) => void): Got {
  const got: Got = { messages: [], chunks: [], last: start, keepalives: 0, replies: 0 };
  copy.onXLogData = (m) => {
    if (m.start !== got.last) throw new Error(`gap: ${formatLsn(m.start)} after ${formatLsn(got.last)}`);
    got.messages.push([m.start, m.data.length]);
    got.chunks.push(Buffer.from(m.data));
    got.last = m.start + BigInt(m.data.length);
    onData?.(got);
  };
  copy.onKeepalive = (k) => {
    got.keepalives++;
    if (!k.replyRequested) got.replies++;
  };
  return got;
}

async function streamAll(n: TestNode): Promise<Got> {
  const c = await connect(n);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy, fx.firstLsn);
  await until(() => got.last >= fx.end, `WAL up to ${formatLsn(fx.end)}`, 30_000);
  const end = await copy.end();
  await c.close();
  if (end.reason !== 'clientEnd') throw new Error(`copy ended with ${end.reason}: ${end.error?.message}`);
  return got;
}

test.serial('catching up through the send pump: the same XLogData messages as the JS path, byte-identical to the primary', async (t) => {
  const before = pumped.node.stream().bytesPumped;
  const [a, b] = await Promise.all([streamAll(pumped), streamAll(plain)]);
  const wal = await fx.bytes();
  t.true(Buffer.concat(a.chunks).equals(wal), 'the pump sends the primary bytes');
  t.true(Buffer.concat(b.chunks).equals(wal), 'the JS path sends the primary bytes');
  t.is(a.messages.length, b.messages.length);
  t.deepEqual(a.messages, b.messages, 'message boundaries are the same: a client cannot tell the two apart');
  // The pump did the catching up; the node without it never used it.
  const pumpedBytes = pumped.node.stream().bytesPumped - before;
  t.true(pumpedBytes > wal.length / 2, `${pumpedBytes} of ${wal.length} bytes pumped`);
  t.is(plain.node.stream().bytesPumped, 0);
  const metrics = await (await fetch(`${pumped.httpUrl}/metrics`)).text();
  t.regex(metrics, /walkeeper_wal_sent_pumped_bytes_total\{stream="main",node_id="\d+"\} [1-9]\d*/);
});

test.serial('a slow client asking for a reply after every message gets each one whole, between messages, while the pump runs', async (t) => {
  const c = await connect(pumped, 'slowreader');
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  let asked = 0;
  let sinceNap = 0;
  const got = collect(copy, fx.firstLsn, (g) => {
    copy.sendStatus({ write: g.last, flush: g.last, apply: g.last, replyRequested: true });
    asked++;
    // Stop reading now and then, so that the node's socket fills up in the
    // middle of a message and the pump hands the rest back to the JS side.
    sinceNap += g.messages.at(-1)![1];
    if (sinceNap >= 2 * 1024 * 1024) {
      sinceNap = 0;
      copy.pause();
      setTimeout(() => copy.resume(), 30);
    }
  });
  await until(() => got.last >= fx.end && got.replies >= asked, 'all the WAL and a reply to every request', 60_000);
  t.true(Buffer.concat(got.chunks).equals(await fx.bytes()));
  t.is(got.replies, asked, 'one reply per request, none torn or lost');
  t.true(asked > 50, `${asked} requests`);
  const end = await copy.end();
  t.is(end.reason, 'clientEnd');
  t.deepEqual(end.tags, ['START_STREAMING', 'START_REPLICATION']);
  await c.close();
  await until(() => pumped.node.stream().replicas.size === 0, 'the replica unregistered');
});

test.serial('a client that goes away in mid catch-up leaves the node serving the others', async (t) => {
  const quitters = await Promise.all([0, 1, 2].map(() => connect(pumped, 'quitter')));
  for (const q of quitters) {
    const copy = q.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
    collect(copy, fx.firstLsn, (g) => {
      if (g.messages.length === 3) q.destroy();
    });
  }
  const got = await streamAll(pumped);
  t.true(Buffer.concat(got.chunks).equals(await fx.bytes()));
  await until(() => pumped.node.stream().replicas.size === 0, 'every replica unregistered');
  t.false(pumped.logs.some((l) => l.level !== undefined && (l.level as number) >= 50), 'no error logged');
});

test.serial('a client the JS path was serving in small steps, with writes still in flight, moves to the pump when far behind', async (t) => {
  // commit_lsn is raised by hand here: in steps below the pump's threshold
  // while the client does not read (both JS frame buffers end up waiting on
  // the socket), then all at once.
  const n = await startTestNode({ importFrom: await fx.prefixDir(4) });
  t.teardown(() => n.stop());
  const s = n.node.stream();
  const a = s.commitLsn;
  const wal = await fx.bytes();
  await s.appendWal(a, wal.subarray(Number(a - fx.firstLsn)));
  const e = await s.flushWal();
  const c = await connect(n);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(a)} TIMELINE 1`);
  const got = collect(copy, a);
  await until(() => s.commitWatch.waiting > 0, 'the sender to wait at commit_lsn');
  copy.pause();
  // Small steps until the socket is full and the sender waits on its writes.
  const sent = () => s.replicas.list()[0]!.sentLsn;
  let stuck = 0;
  for (let at = a; stuck < 5; ) {
    if (at + 64n * 1024n + 1024n * 1024n > e) throw new Error('the socket never filled up');
    at += 64n * 1024n;
    s.setCommitLsn(at);
    const before = sent();
    await new Promise((r) => setTimeout(r, 10));
    stuck = sent() === before && at - before > 128n * 1024n ? stuck + 1 : 0;
  }
  t.true(s.bytesPumped === 0, 'so far the JS path');
  s.setCommitLsn(e);
  await new Promise((r) => setTimeout(r, 50));
  copy.resume();
  await until(() => got.last >= e, `WAL up to ${formatLsn(e)}`, 30_000);
  t.true(Buffer.concat(got.chunks).equals(wal.subarray(Number(a - fx.firstLsn))), 'byte-identical, nothing twice, nothing skipped');
  t.true(s.bytesPumped > 0, 'the pump took over');
  // The node's event loop kept running throughout (its HTTP answers).
  t.is((await fetch(`${n.httpUrl}/v1/streams/main`)).status, 200);
  await copy.end();
  await c.close();
});

// Last: it removes segments from the pumped node.
test.serial('a segment removed while a paused client catches up ends its copy with 58P01 from inside the copy, as PostgreSQL does', async (t) => {
  const s = pumped.node.stream();
  const last = Number((fx.end - 1n) / BigInt(SEG));
  const c = await connect(pumped);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(fx.firstLsn)} TIMELINE 1`);
  const got = collect(copy, fx.firstLsn, () => copy.pause());
  await until(() => got.messages.length > 0, 'the first message');
  // The node has filled the socket and waits on the client; meanwhile every
  // segment but the last goes away, the one it is sending and the next with it.
  await new Promise((r) => setTimeout(r, 100));
  await s.store.removeBelow(last);
  copy.onXLogData = (m) => {
    got.last = m.start + BigInt(m.data.length);
  };
  copy.resume();
  const e = await t.throwsAsync(copy.done);
  t.true(e instanceof PgError, String(e));
  t.is((e as PgError).code, '58P01');
  t.regex(e!.message, /^requested WAL segment [0-9A-F]{24} has already been removed$/);
  t.true(got.last <= BigInt(last * SEG), `stopped at ${formatLsn(got.last)}: it never got to the segment that was kept`);
  t.is(formatLsn((await c.identifySystem()).xlogpos), formatLsn(fx.end), 'the connection takes commands again');
  await c.close();
});
