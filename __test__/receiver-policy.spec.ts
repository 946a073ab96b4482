// The receiver's connection manager (ts/receiver/policy.ts), pure: a fake
// clock made of plain numbers. Every rule fires at exactly its threshold and
// not 1 ms before; the order of the checks; cooldown arithmetic; forgetting
// silent candidates; availability zones; and the seed's bugs as regressions.

import test from 'ava';

import { parseLsn, type Lsn } from '../ts/lsn.js';
import {
  ConnectionPolicy,
  DEFAULT_POLICY,
  describeReason,
  type CandidateStatus,
  type Decision,
  type PolicyConfig,
  type SwitchReason,
} from '../ts/receiver/policy.js';

const GiB = 1n << 30n;
const MiB = 1n << 20n;
const T0 = 1_700_000_000_000; // an epoch-like start, so that 0 is never special

function cand(nodeId: string, commitLsn: Lsn, availabilityZone: string | null = null): CandidateStatus {
  return { nodeId, commitLsn, pgAddress: `sk${nodeId}.example:5454`, availabilityZone };
}

/** A policy with short, distinct timeouts (easier to tell apart in failures). */
function mk(cfg: Partial<PolicyConfig> = {}): ConnectionPolicy {
  return new ConnectionPolicy({ connectTimeoutMs: 2_000, laggingWalTimeoutMs: 5_000, maxLsnWalLag: 10n * MiB, ...cfg });
}

function connectTo(d: Decision): { nodeId: string; kind: SwitchReason['kind'] } | null {
  return d.action === 'connect' ? { nodeId: d.candidate.nodeId, kind: d.reason.kind } : null;
}

/** Connected to `nodeId` and streaming, the node reporting `commit` in a keepalive, all at `t`. */
function streaming(p: ConnectionPolicy, nodeId: string, t: number, commit: Lsn | null): void {
  p.connectionStarted(nodeId, t);
  p.connectionEstablished(t);
  if (commit !== null) p.keepaliveReceived(commit, t);
}

/** A connection to nodeId started at t that fails at once without progress. */
function failOnce(p: ConnectionPolicy, nodeId: string, t: number, endedAt = t + 5): void {
  p.connectionStarted(nodeId, t);
  p.connectionEnded(endedAt);
}

// ------------------------------------------------------------------ config

test('defaults are Neon’s; a partial config overrides only what it names', (t) => {
  t.deepEqual({ ...DEFAULT_POLICY }, {
    connectTimeoutMs: 10_000,
    laggingWalTimeoutMs: 10_000,
    maxLsnWalLag: GiB,
    retryMinMs: 100,
    retryMaxMs: 15_000,
    retryMultiplier: 1.5,
    availabilityZone: null,
  });
  const p = new ConnectionPolicy({ availabilityZone: 'az-1', connectTimeoutMs: undefined });
  t.is(p.config.availabilityZone, 'az-1');
  t.is(p.config.connectTimeoutMs, 10_000);
  t.is(new ConnectionPolicy().config.maxLsnWalLag, GiB);
  t.throws(() => new ConnectionPolicy({ retryMultiplier: 0.5 }), { instanceOf: RangeError });
  t.throws(() => new ConnectionPolicy({ maxLsnWalLag: 0n }), { instanceOf: RangeError });
});

// ------------------------------------------------------------------ 1. NoExistingConnection

test('no connection: nothing to do without candidates; else the one with the most WAL, at once', (t) => {
  const p = mk();
  t.deepEqual(p.decide(T0), { action: 'none' });
  t.is(p.nextDecisionAt(T0), null);
  p.updateCandidate(cand('1', 0x3000000n), T0);
  p.updateCandidate(cand('2', 0x5000000n), T0);
  p.updateCandidate(cand('3', 0x4000000n), T0);
  const d = p.decide(T0);
  t.deepEqual(d, {
    action: 'connect',
    candidate: cand('2', 0x5000000n),
    reason: { kind: 'NoExistingConnection', candidateNodeId: '2' },
  });
});

test('commit LSN 0/0 and an empty address are kept but never chosen', (t) => {
  const p = mk();
  p.updateCandidate(cand('1', 0n), T0);
  p.updateCandidate({ ...cand('2', 0x9000000n), pgAddress: '' }, T0);
  t.deepEqual(p.decide(T0), { action: 'none' });
  t.deepEqual(
    p.candidates().map((c) => [c.nodeId, c.commitLsn]),
    [
      ['1', 0n],
      ['2', 0x9000000n],
    ],
  );
  p.updateCandidate(cand('3', 1n), T0 + 1);
  t.deepEqual(connectTo(p.decide(T0 + 1)), { nodeId: '3', kind: 'NoExistingConnection' });
});

test('ties: our availability zone first, then the node we were on, then node id order (numeric)', (t) => {
  const p = mk({ availabilityZone: 'az-b' });
  const lsn = 0x7000000n;
  p.updateCandidate(cand('10', lsn, 'az-a'), T0);
  p.updateCandidate(cand('9', lsn, 'az-a'), T0);
  t.is(connectTo(p.decide(T0))?.nodeId, '9', 'numeric order: 9 before 10');
  p.updateCandidate(cand('11', lsn, 'az-b'), T0);
  t.is(connectTo(p.decide(T0))?.nodeId, '11', 'our zone wins a tie');
  p.updateCandidate(cand('12', lsn + 1n, 'az-a'), T0);
  t.is(connectTo(p.decide(T0))?.nodeId, '12', 'more WAL beats the zone');

  // After a connection that made progress, the same node is preferred among equals.
  const q = mk();
  q.updateCandidate(cand('1', lsn), T0);
  q.updateCandidate(cand('2', lsn), T0);
  q.lastReceivedLsn = 0x6000000n;
  streaming(q, '2', T0, lsn);
  q.walReceived(lsn, lsn, T0 + 10);
  q.connectionEnded(T0 + 20);
  t.is(connectTo(q.decide(T0 + 20))?.nodeId, '2');
});

test('regression (3): no backoff before a first attempt; a never-tried node is eligible immediately', (t) => {
  const p = mk();
  p.updateCandidate(cand('1', 0x3000000n), T0);
  const d = p.decide(T0);
  t.deepEqual(connectTo(d), { nodeId: '1', kind: 'NoExistingConnection' });
  t.is(p.candidates()[0]!.nextRetryAt, null);
  t.is(p.candidates()[0]!.retryDurationMs, null);
  // Another node that fails does not delay a fresh one.
  failOnce(p, '1', T0);
  p.updateCandidate(cand('2', 0x2000000n), T0 + 5);
  t.deepEqual(connectTo(p.decide(T0 + 5)), { nodeId: '2', kind: 'NoExistingConnection' });
});

// ------------------------------------------------------------------ forgetting silent candidates

test('a candidate silent for laggingWalTimeout is forgotten, with its retry info', (t) => {
  const p = mk(); // laggingWalTimeoutMs 5000
  p.updateCandidate(cand('1', 0x3000000n), T0);
  failOnce(p, '1', T0);
  failOnce(p, '1', T0 + 1000);
  t.is(p.candidates()[0]!.retryDurationMs, 225);
  t.is(connectTo(p.decide(T0 + 4_999))?.nodeId, '1', 'still known 1 ms before');
  t.is(p.candidates().length, 1);
  t.deepEqual(p.decide(T0 + 5_000), { action: 'none' });
  t.deepEqual(p.candidates(), []);
  // Back again: no cooldown left over.
  p.updateCandidate(cand('1', 0x3000000n), T0 + 5_001);
  t.is(p.candidates()[0]!.retryDurationMs, null);
  t.is(p.candidates()[0]!.nextRetryAt, null);
  t.deepEqual(connectTo(p.decide(T0 + 5_001)), { nodeId: '1', kind: 'NoExistingConnection' });
});

test('status updates keep a candidate alive; removeCandidate forgets it and its retry info', (t) => {
  const p = mk();
  for (let i = 0; i <= 20; i++) p.updateCandidate(cand('1', 0x3000000n), T0 + i * 1000);
  t.truthy(connectTo(p.decide(T0 + 20_000)));
  failOnce(p, '1', T0 + 20_000);
  t.not(p.candidates()[0]!.nextRetryAt, null);
  p.removeCandidate('1');
  t.deepEqual(p.candidates(), []);
  p.updateCandidate(cand('1', 0x3000000n), T0 + 20_010);
  t.is(p.candidates()[0]!.nextRetryAt, null);
});

// ------------------------------------------------------------------ retry bookkeeping

test('cooldown: 0.1 s, 0.15 s, 0.225 s … ×1.5, capped at 15 s, measured from the connection start', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x3000000n), T0);
  const expected = [100, 150, 225, 337, 506, 759, 1139, 1708, 2562, 3844, 5766, 8649, 12974, 15000, 15000, 15000];
  let now = T0;
  const seen: number[] = [];
  for (let i = 0; i < expected.length; i++) {
    const d = p.decide(now);
    t.deepEqual(connectTo(d), { nodeId: '1', kind: 'NoExistingConnection' }, `attempt ${i}`);
    const started = now;
    failOnce(p, '1', started, started + 37); // fails 37 ms after its start
    const info = p.candidates()[0]!;
    const at = info.nextRetryAt!;
    seen.push(at - started);
    // Not eligible 1 ms before, eligible at exactly nextRetryAt; the shell is told when.
    if (at - 1 > started + 37) t.deepEqual(p.decide(at - 1), { action: 'none' }, `attempt ${i}: 1 ms early`);
    t.is(p.nextDecisionAt(started + 37), at);
    now = at;
  }
  t.deepEqual(seen, expected);
  t.is(p.candidates()[0]!.retryDurationMs, 15_000);
});

test('a long-lived connection that dies without progress can be retried at once', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x3000000n), T0);
  p.lastReceivedLsn = 0x3000000n;
  streaming(p, '1', T0, 0x3000000n); // caught up, idle: no WAL, so no progress
  p.connectionEnded(T0 + 60_000);
  const info = p.candidates()[0]!;
  t.is(info.nextRetryAt, T0 + 100);
  t.is(info.retryDurationMs, 150);
  t.deepEqual(connectTo(p.decide(T0 + 60_000)), { nodeId: '1', kind: 'NoExistingConnection' });
});

test('progress resets the cooldown: the entry is removed, the next failure starts at 0.1 s again', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x5000000n), T0);
  p.lastReceivedLsn = 0x3000000n;
  for (let i = 0; i < 5; i++) failOnce(p, '1', T0 + i * 20_000);
  t.true(p.candidates()[0]!.retryDurationMs! > 500);
  p.connectionStarted('1', T0 + 200_000);
  t.is(p.current()!.startLsn, 0x3000000n);
  p.connectionEstablished(T0 + 200_010);
  p.walReceived(0x3000100n, 0x5000000n, T0 + 200_020);
  p.connectionEnded(T0 + 200_030);
  t.is(p.candidates()[0]!.retryDurationMs, null);
  t.is(p.candidates()[0]!.nextRetryAt, null);
  failOnce(p, '1', T0 + 300_000);
  t.is(p.candidates()[0]!.nextRetryAt, T0 + 300_100);
});

test('progress is measured from where streaming started (the receiver may set lastReceivedLsn when established)', (t) => {
  const p = mk();
  p.updateCandidate(cand('1', 0x5000000n), T0);
  p.lastReceivedLsn = 0x3000000n;
  p.connectionStarted('1', T0);
  p.lastReceivedLsn = 0x2000000n; // streaming restarts at the segment start
  p.connectionEstablished(T0 + 1);
  t.is(p.current()!.startLsn, 0x2000000n);
  p.connectionEnded(T0 + 2);
  t.is(p.candidates()[0]!.nextRetryAt, T0 + 100, 'no WAL: a failure');
});

test('regression (5): no attempt counter; after many failures the node is chosen again once its cooldown passes', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x3000000n), T0);
  let now = T0;
  for (let i = 0; i < 100; i++) {
    failOnce(p, '1', now);
    now += 20_000;
  }
  // Node 1 is on cooldown right after its last failure: node 2 is used meanwhile.
  const last = now - 20_000;
  t.is(connectTo(p.decide(last + 10))?.nodeId, '2');
  // Once the cooldown is over, node 1 (more WAL) is the choice again.
  t.is(p.candidates()[0]!.nextRetryAt, last + 15_000);
  t.is(connectTo(p.decide(last + 15_000))?.nodeId, '1');
});

test('a candidate on cooldown is skipped; with none eligible the answer is none and nextDecisionAt says when', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x3000000n), T0);
  failOnce(p, '1', T0);
  t.is(connectTo(p.decide(T0 + 5))?.nodeId, '2');
  failOnce(p, '2', T0 + 10, T0 + 20);
  t.deepEqual(p.decide(T0 + 20), { action: 'none' });
  t.is(p.nextEligibleAt(T0 + 20), T0 + 100);
  t.is(p.nextDecisionAt(T0 + 20), T0 + 100);
  t.is(connectTo(p.decide(T0 + 100))?.nodeId, '1');
  t.is(p.nextEligibleAt(T0 + 100), T0 + 110);
});

// ------------------------------------------------------------------ markBad

test('markBad ends the current connection and puts the node on cooldown from now, even after progress', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x8000000n), T0);
  p.lastReceivedLsn = 0x3000000n;
  streaming(p, '1', T0, 0x9000000n);
  p.walReceived(0x3100000n, 0x9000000n, T0 + 30_000);
  p.markBad('1', T0 + 60_000);
  t.is(p.current(), null);
  const one = p.candidates()[0]!;
  t.is(one.nextRetryAt, T0 + 60_100);
  t.is(one.retryDurationMs, 150);
  p.connectionEnded(T0 + 60_001); // the receiver may still report the end: no-op
  t.is(p.candidates()[0]!.nextRetryAt, T0 + 60_100);
  t.is(connectTo(p.decide(T0 + 60_001))?.nodeId, '2');
  // Without any connection: the node just goes on cooldown.
  p.markBad('2', T0 + 60_002);
  t.is(p.current(), null);
  t.is(p.candidates()[1]!.nextRetryAt, T0 + 60_102);
  t.deepEqual(p.decide(T0 + 60_099), { action: 'none' });
  t.is(connectTo(p.decide(T0 + 60_100))?.nodeId, '1');
});

test('markBad of another node leaves the current connection alone', (t) => {
  const p = mk();
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x8000000n), T0);
  streaming(p, '1', T0, 0x9000000n);
  p.markBad('2', T0 + 10);
  t.is(p.current()?.nodeId, '1');
  t.is(p.candidates()[1]!.nextRetryAt, T0 + 110);
});

// ------------------------------------------------------------------ 2. NoKeepAlives, 3. not yet established

test('NoKeepAlives before the first message counts from connectionStarted; exactly at the threshold', (t) => {
  const p = mk(); // connectTimeoutMs 2000
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x8000000n), T0);
  p.connectionStarted('1', T0);
  t.deepEqual(p.decide(T0 + 1_999), { action: 'none' }, 'not established: wait');
  t.is(p.nextDecisionAt(T0 + 1_999), T0 + 2_000);
  const d = p.decide(T0 + 2_000);
  t.deepEqual(d, {
    action: 'connect',
    candidate: cand('2', 0x8000000n),
    reason: { kind: 'NoKeepAlives', lastKeepAlive: null, checkTime: T0 + 2_000, threshold: 2_000, candidateNodeId: '2' },
  });
});

test('NoKeepAlives counts from the last message (XLogData or keepalive)', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x9000000n), T0);
  p.lastReceivedLsn = 0x8000000n;
  p.connectionStarted('1', T0);
  p.connectionEstablished(T0 + 500);
  p.keepaliveReceived(0x9000000n, T0 + 1_000);
  t.deepEqual(p.decide(T0 + 2_999), { action: 'none' });
  p.walReceived(0x8001000n, 0x9000000n, T0 + 2_999);
  t.deepEqual(p.decide(T0 + 4_998), { action: 'none' });
  t.is(p.nextDecisionAt(T0 + 4_998), T0 + 4_999);
  const d = p.decide(T0 + 4_999);
  t.is(d.action, 'connect');
  if (d.action === 'connect') {
    t.is(d.candidate.nodeId, '2');
    t.deepEqual(d.reason, { kind: 'NoKeepAlives', lastKeepAlive: T0 + 2_999, checkTime: T0 + 4_999, threshold: 2_000, candidateNodeId: '2' });
  }
});

test('regression (4): NoKeepAlives does not loop: a just-started or just-established connection is kept', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.updateCandidate(cand('2', 0x9000000n), T0);
  p.connectionStarted('1', T0);
  const d = p.decide(T0 + 2_000);
  t.is(connectTo(d)?.kind, 'NoKeepAlives');
  // The receiver acts on it: ends the old connection, starts the new one, asks again.
  p.connectionEnded(T0 + 2_000);
  p.connectionStarted('2', T0 + 2_000);
  for (const dt of [0, 1, 100, 1_999]) t.deepEqual(p.decide(T0 + 2_000 + dt), { action: 'none' }, `+${dt} ms`);
  // Establishment late in the window gives the connection a full window for its first message.
  p.connectionEstablished(T0 + 3_900);
  t.deepEqual(p.decide(T0 + 4_000), { action: 'none' });
  t.deepEqual(p.decide(T0 + 5_899), { action: 'none' });
  t.is(connectTo(p.decide(T0 + 5_900))?.kind, 'NoKeepAlives');
});

test('NoKeepAlives with no other node reconnects to the same one, once its own cooldown allows', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 2_000, retryMinMs: 5_000, retryMaxMs: 15_000 });
  p.updateCandidate(cand('1', 0x9000000n), T0);
  // The connection silent since its start at T0; the cooldown it gets on end is 5 s from T0.
  p.connectionStarted('1', T0);
  t.deepEqual(p.decide(T0 + 2_000), { action: 'none' });
  t.is(p.nextDecisionAt(T0 + 2_000), T0 + 5_000);
  const d = p.decide(T0 + 5_000);
  t.deepEqual(d, {
    action: 'connect',
    candidate: cand('1', 0x9000000n),
    reason: { kind: 'NoKeepAlives', lastKeepAlive: null, checkTime: T0 + 5_000, threshold: 2_000, candidateNodeId: '1' },
  });
  p.connectionEnded(T0 + 5_000);
  t.is(p.candidates()[0]!.nextRetryAt, T0 + 5_000);
  p.connectionStarted('1', T0 + 5_000);
  t.deepEqual(p.decide(T0 + 5_000), { action: 'none' });
});

test('not yet established: no switch for lag, zone or WAL, only NoKeepAlives', (t) => {
  const p = mk({ availabilityZone: 'az-1' });
  p.updateCandidate(cand('1', 0x1000000n, 'az-2'), T0);
  p.updateCandidate(cand('2', 0x1000000n + GiB, 'az-1'), T0);
  p.connectionStarted('1', T0);
  p.keepaliveReceived(0x1000000n, T0 + 10); // even with a known commit LSN
  for (const dt of [10, 500, 2_009]) t.deepEqual(p.decide(T0 + dt), { action: 'none' });
  t.is(connectTo(p.decide(T0 + 2_010))?.kind, 'NoKeepAlives');
});

// ------------------------------------------------------------------ 4. LaggingWal

test('LaggingWal fires at exactly maxLsnWalLag ahead of the current commit LSN, not 1 byte less', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  const cur = 0x3000000n;
  p.updateCandidate(cand('1', cur), T0);
  p.updateCandidate(cand('2', cur + 10n * MiB - 1n), T0);
  p.lastReceivedLsn = cur;
  streaming(p, '1', T0, cur);
  t.deepEqual(p.decide(T0 + 1), { action: 'none' });
  p.updateCandidate(cand('2', cur + 10n * MiB), T0 + 2);
  t.deepEqual(p.decide(T0 + 2), {
    action: 'connect',
    candidate: cand('2', cur + 10n * MiB),
    reason: { kind: 'LaggingWal', currentCommitLsn: cur, newCommitLsn: cur + 10n * MiB, threshold: 10n * MiB, candidateNodeId: '2' },
  });
});

test('LaggingWal uses the current node’s own messages, not its status poll', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x1000000n), T0); // stale status of the current node
  p.updateCandidate(cand('2', 0x1000000n + 10n * MiB), T0);
  p.lastReceivedLsn = 0x1000000n;
  streaming(p, '1', T0, 0x1000000n + 5n * MiB); // its keepalive says more
  t.deepEqual(p.decide(T0 + 1), { action: 'none' });
  t.is(p.current()!.commitLsn, 0x1000000n + 5n * MiB);
});

test('regression (1): LaggingWal never fires on an unknown or 0/0 current commit LSN', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  p.updateCandidate(cand('1', 0x3000000n), T0);
  p.updateCandidate(cand('2', 0x3000000n + GiB), T0);
  p.lastReceivedLsn = 0x3000000n;
  streaming(p, '1', T0, null);
  t.is(p.current()!.commitLsn, null);
  t.deepEqual(p.decide(T0 + 1), { action: 'none' }, 'unknown');
  p.keepaliveReceived(0n, T0 + 2);
  t.is(p.current()!.commitLsn, null);
  t.deepEqual(p.decide(T0 + 2), { action: 'none' }, 'a 0/0 keepalive');
});

test('regression (2): a keepalive carrying 0/0 does not make the node look empty or behind', (t) => {
  const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.updateCandidate(cand('1', cur), T0);
  p.updateCandidate(cand('2', cur + 10n * MiB - 1n), T0);
  p.lastReceivedLsn = cur;
  streaming(p, '1', T0, cur);
  p.keepaliveReceived(0n, T0 + 1_000);
  t.is(p.current()!.commitLsn, cur, 'the known commit LSN stays');
  t.is(p.current()!.lastMessageAt, T0 + 1_000, 'it still counts as a sign of life');
  t.deepEqual(p.decide(T0 + 1_000), { action: 'none' });
  // XLogData with walEnd 0/0: the node has at least what it sent.
  p.walReceived(cur + 0x100n, 0n, T0 + 1_100);
  t.is(p.current()!.commitLsn, cur + 0x100n);
  t.deepEqual(p.decide(T0 + 1_100), { action: 'none' });
  // A 0/0 keepalive first thing on a connection leaves the commit LSN unknown, never 0/0.
  const q = mk({ connectTimeoutMs: 3_600_000 });
  q.updateCandidate(cand('1', cur), T0);
  q.updateCandidate(cand('2', cur + GiB), T0);
  q.lastReceivedLsn = cur;
  streaming(q, '1', T0, 0n);
  t.is(q.current()!.commitLsn, null);
  t.deepEqual(q.decide(T0 + 1), { action: 'none' });
});

test('XLogData: walEnd is the commit LSN, never below the data just sent; lastReceivedLsn only grows', (t) => {
  const p = mk();
  p.updateCandidate(cand('1', 0x9000000n), T0);
  p.lastReceivedLsn = 0x3000000n;
  streaming(p, '1', T0, null);
  p.walReceived(0x3000100n, 0x9000000n, T0 + 1);
  t.is(p.current()!.commitLsn, 0x9000000n);
  t.is(p.lastReceivedLsn, 0x3000100n);
  t.is(p.current()!.lastWalAt, T0 + 1);
  p.walReceived(0x3000200n, 0x3000180n, T0 + 2);
  t.is(p.current()!.commitLsn, 0x3000200n);
  p.walReceived(0x3000080n, 0x9000000n, T0 + 3);
  t.is(p.lastReceivedLsn, 0x3000200n);
});

// ------------------------------------------------------------------ 5. SwitchAvailabilityZone

test('SwitchAvailabilityZone: a node in our zone with at least the current commit LSN', (t) => {
  const p = mk({ availabilityZone: 'az-1', laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.updateCandidate(cand('1', cur, 'az-2'), T0);
  p.updateCandidate(cand('2', cur - 1n, 'az-1'), T0);
  p.lastReceivedLsn = cur;
  streaming(p, '1', T0, cur);
  t.deepEqual(p.decide(T0 + 1), { action: 'none' }, 'one byte behind: stay');
  p.updateCandidate(cand('2', cur, 'az-1'), T0 + 2);
  t.deepEqual(p.decide(T0 + 2), {
    action: 'connect',
    candidate: cand('2', cur, 'az-1'),
    reason: { kind: 'SwitchAvailabilityZone', availabilityZone: 'az-1', candidateNodeId: '2' },
  });
});

test('SwitchAvailabilityZone: the best node of our zone, even when another zone’s node has more WAL', (t) => {
  const p = mk({ availabilityZone: 'az-1', laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.updateCandidate(cand('1', cur, 'az-2'), T0);
  p.updateCandidate(cand('2', cur + 0x1000n, 'az-3'), T0);
  p.updateCandidate(cand('3', cur + 0x10n, 'az-1'), T0);
  p.updateCandidate(cand('4', cur + 0x20n, 'az-1'), T0);
  p.lastReceivedLsn = cur;
  streaming(p, '1', T0, cur);
  t.deepEqual(connectTo(p.decide(T0 + 1)), { nodeId: '4', kind: 'SwitchAvailabilityZone' });
});

test('SwitchAvailabilityZone: not when we have no zone, when the current node is in it, or on an unknown commit LSN', (t) => {
  const cur = 0x5000000n;
  const setup = (cfg: Partial<PolicyConfig>, curAz: string | null, commit: Lsn | null) => {
    const p = mk({ laggingWalTimeoutMs: 3_600_000, connectTimeoutMs: 3_600_000, ...cfg });
    p.updateCandidate(cand('1', cur, curAz), T0);
    p.updateCandidate(cand('2', cur, 'az-1'), T0);
    p.lastReceivedLsn = cur;
    streaming(p, '1', T0, commit);
    return p.decide(T0 + 1);
  };
  t.deepEqual(setup({}, 'az-2', cur), { action: 'none' });
  t.deepEqual(setup({ availabilityZone: 'az-1' }, 'az-1', cur), { action: 'none' });
  t.deepEqual(setup({ availabilityZone: 'az-1' }, 'az-2', null), { action: 'none' });
  t.deepEqual(setup({ availabilityZone: 'az-1' }, 'az-2', 0n), { action: 'none' });
  t.is(connectTo(setup({ availabilityZone: 'az-1' }, null, cur))?.kind, 'SwitchAvailabilityZone');
});

// ------------------------------------------------------------------ 6. NoWalTimeout

/** Connected to 1 (caught up at `cur`), node 2 seen with more WAL at T0; status polls every second. */
function noWalSetup(cfg: Partial<PolicyConfig> = {}) {
  const p = mk({ connectTimeoutMs: 3_600_000, ...cfg }); // laggingWalTimeoutMs 5000
  const cur = 0x5000000n;
  p.updateCandidate(cand('1', cur), T0 - 60_000);
  p.lastReceivedLsn = cur;
  streaming(p, '1', T0 - 60_000, cur);
  p.walReceived(cur, cur, T0 - 30_000); // the last WAL, long ago (an idle system)
  const poll = (until: number, lsn2: Lsn) => {
    for (let s = T0; s <= until; s += 1_000) {
      p.updateCandidate(cand('1', cur), s);
      p.updateCandidate(cand('2', lsn2), s);
    }
  };
  return { p, cur, poll };
}

test('NoWalTimeout: fires laggingWalTimeout after another node was seen with more WAL, not 1 ms before', (t) => {
  const { p, cur, poll } = noWalSetup();
  poll(T0 + 5_000, cur + 0x100n);
  // An idle connection (last WAL 30 s ago) is not dropped the moment new WAL shows up elsewhere.
  t.deepEqual(p.decide(T0), { action: 'none' });
  t.is(p.current()!.newWalDiscoveredAt, T0);
  t.is(p.nextDecisionAt(T0), T0 + 5_000);
  t.deepEqual(p.decide(T0 + 4_999), { action: 'none' });
  t.deepEqual(p.decide(T0 + 5_000), {
    action: 'connect',
    candidate: cand('2', cur + 0x100n),
    reason: {
      kind: 'NoWalTimeout',
      currentLsn: cur,
      currentCommitLsn: cur,
      candidateCommitLsn: cur + 0x100n,
      lastWalInteraction: T0 - 30_000,
      checkTime: T0 + 5_000,
      threshold: 5_000,
      candidateNodeId: '2',
    },
  });
});

test('NoWalTimeout: WAL on the current connection restarts the wait; catching up cancels it', (t) => {
  const { p, cur, poll } = noWalSetup();
  poll(T0 + 20_000, cur + 0x200n);
  t.deepEqual(p.decide(T0), { action: 'none' });
  p.walReceived(cur + 0x100n, cur + 0x100n, T0 + 3_000);
  t.deepEqual(p.decide(T0 + 5_000), { action: 'none' }, 'WAL 2 s ago');
  t.deepEqual(p.decide(T0 + 7_999), { action: 'none' });
  t.is(connectTo(p.decide(T0 + 8_000))?.kind, 'NoWalTimeout');

  const b = noWalSetup();
  b.poll(T0 + 20_000, b.cur + 0x200n);
  t.deepEqual(b.p.decide(T0), { action: 'none' });
  b.p.walReceived(b.cur + 0x200n, b.cur + 0x200n, T0 + 1_000); // caught up with node 2
  t.deepEqual(b.p.decide(T0 + 1_000), { action: 'none' });
  t.is(b.p.current()!.newWalDiscoveredAt, null);
  t.deepEqual(b.p.decide(T0 + 10_000), { action: 'none' }, 'nothing newer anywhere');
});

test('NoWalTimeout: the current node reports WAL it does not send → counts from the last WAL', (t) => {
  const p = mk({ connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.lastReceivedLsn = cur;
  p.updateCandidate(cand('1', cur + 0x100n), T0);
  p.updateCandidate(cand('2', cur + 0x200n), T0);
  streaming(p, '1', T0, cur + 0x100n);
  p.updateCandidate(cand('2', cur + 0x200n), T0 + 4_000);
  t.deepEqual(p.decide(T0 + 4_999), { action: 'none' });
  const d = p.decide(T0 + 5_000);
  t.is(connectTo(d)?.kind, 'NoWalTimeout');
  if (d.action === 'connect' && d.reason.kind === 'NoWalTimeout') {
    t.is(d.reason.currentLsn, cur);
    t.is(d.reason.currentCommitLsn, cur + 0x100n);
    t.is(d.reason.lastWalInteraction, null, 'no WAL on this connection: counted from establishment');
  }
});

test('NoWalTimeout: an unknown commit LSN of the current node stands for what we have (never 0/0)', (t) => {
  const p = mk({ connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.lastReceivedLsn = cur;
  p.updateCandidate(cand('2', cur), T0);
  streaming(p, '1', T0, 0n); // a 0/0 keepalive only
  t.deepEqual(p.decide(T0 + 4_000), { action: 'none' }, 'node 2 has nothing we lack');
  p.updateCandidate(cand('2', cur + 0x10n), T0 + 4_000);
  t.deepEqual(p.decide(T0 + 4_000), { action: 'none' });
  p.updateCandidate(cand('2', cur + 0x10n), T0 + 8_000);
  t.deepEqual(p.decide(T0 + 8_999), { action: 'none' });
  const d = p.decide(T0 + 9_000);
  t.is(connectTo(d)?.kind, 'NoWalTimeout');
  if (d.action === 'connect' && d.reason.kind === 'NoWalTimeout') t.is(d.reason.currentCommitLsn, cur);
});

test('NoWalTimeout needs another node with more WAL than we have; the candidate must stay alive', (t) => {
  const { p, cur, poll } = noWalSetup();
  poll(T0 + 20_000, cur);
  for (const dt of [0, 5_000, 20_000]) t.deepEqual(p.decide(T0 + dt), { action: 'none' });
  // Node 2 advertises more WAL once, then falls silent: forgotten before the wait ends.
  const b = noWalSetup();
  b.p.updateCandidate(cand('2', b.cur + 0x100n), T0);
  t.deepEqual(b.p.decide(T0), { action: 'none' });
  t.deepEqual(b.p.decide(T0 + 5_000), { action: 'none' });
  t.deepEqual(b.p.candidates().map((c) => c.nodeId), []);
});

// ------------------------------------------------------------------ order of the checks

test('order: NoKeepAlives before LaggingWal before SwitchAvailabilityZone before NoWalTimeout', (t) => {
  const cur = 0x5000000n;
  const build = () => {
    const p = mk({ availabilityZone: 'az-1' }); // connect 2 s, lagging 5 s, lag 10 MiB
    p.lastReceivedLsn = cur;
    p.updateCandidate(cand('1', cur, 'az-2'), T0);
    streaming(p, '1', T0, cur);
    return p;
  };
  // All four true at T0+4000 would need a silent connection: NoKeepAlives wins.
  let p = build();
  p.updateCandidate(cand('2', cur + GiB, 'az-1'), T0 + 2_000);
  t.is(connectTo(p.decide(T0 + 2_000))?.kind, 'NoKeepAlives');
  // Messages flowing: LaggingWal beats the zone.
  p = build();
  p.keepaliveReceived(cur, T0 + 1_500);
  p.updateCandidate(cand('2', cur + GiB, 'az-1'), T0 + 2_000);
  t.is(connectTo(p.decide(T0 + 2_000))?.kind, 'LaggingWal');
  // Not that far ahead: the zone beats NoWalTimeout (both true).
  p = build();
  p.updateCandidate(cand('2', cur + 0x100n, 'az-1'), T0);
  p.updateCandidate(cand('3', cur + 0x200n, 'az-2'), T0);
  t.deepEqual(connectTo(p.decide(T0)), { nodeId: '2', kind: 'SwitchAvailabilityZone' });
  // Without zones, the same state ends in NoWalTimeout after the wait.
  p = mk({ connectTimeoutMs: 3_600_000 });
  p.lastReceivedLsn = cur;
  p.updateCandidate(cand('1', cur, 'az-2'), T0);
  p.updateCandidate(cand('3', cur + 0x200n, 'az-2'), T0);
  streaming(p, '1', T0, cur);
  t.deepEqual(p.decide(T0), { action: 'none' });
  p.updateCandidate(cand('3', cur + 0x200n, 'az-2'), T0 + 4_000);
  t.deepEqual(connectTo(p.decide(T0 + 5_000)), { nodeId: '3', kind: 'NoWalTimeout' });
});

test('the current node is never its own switch target for lag, zone or WAL', (t) => {
  const p = mk({ availabilityZone: 'az-1', connectTimeoutMs: 3_600_000 });
  const cur = 0x5000000n;
  p.lastReceivedLsn = cur;
  p.updateCandidate(cand('1', cur + GiB, 'az-1'), T0);
  streaming(p, '1', T0, cur);
  for (const dt of [0, 5_000]) {
    p.updateCandidate(cand('1', cur + GiB, 'az-1'), T0 + dt);
    t.deepEqual(p.decide(T0 + dt), { action: 'none' });
  }
});

// ------------------------------------------------------------------ nextDecisionAt, introspection

test('nextDecisionAt: the earliest of silence, cooldown and forgetting deadlines; null when idle', (t) => {
  const p = mk(); // connect 2 s, lagging 5 s
  t.is(p.nextDecisionAt(T0), null);
  p.updateCandidate(cand('1', 0x3000000n), T0);
  t.is(p.nextDecisionAt(T0), T0 + 5_000, 'forgetting a silent candidate');
  p.connectionStarted('1', T0 + 100);
  t.is(p.nextDecisionAt(T0 + 100), T0 + 2_100, 'silence on the connection');
  p.connectionEstablished(T0 + 200);
  p.keepaliveReceived(0x3000000n, T0 + 300);
  t.is(p.nextDecisionAt(T0 + 300), T0 + 2_300);
});

test('current() and candidates() describe the state', (t) => {
  const p = mk({ availabilityZone: 'az-1' });
  p.updateCandidate(cand('2', 0x4000000n, 'az-1'), T0);
  p.updateCandidate(cand('1', 0x3000000n, 'az-2'), T0 + 1);
  p.lastReceivedLsn = 0x2000000n;
  t.is(p.current(), null);
  p.connectionStarted('1', T0 + 10);
  t.deepEqual(p.current(), {
    nodeId: '1',
    startedAt: T0 + 10,
    establishedAt: null,
    lastMessageAt: null,
    lastWalAt: null,
    commitLsn: null,
    startLsn: 0x2000000n,
    availabilityZone: 'az-2',
    newWalDiscoveredAt: null,
  });
  p.connectionEnded(T0 + 20);
  t.deepEqual(p.candidates(), [
    { ...cand('1', 0x3000000n, 'az-2'), updatedAt: T0 + 1, nextRetryAt: T0 + 110, retryDurationMs: 150 },
    { ...cand('2', 0x4000000n, 'az-1'), updatedAt: T0, nextRetryAt: null, retryDurationMs: null },
  ]);
});

// ------------------------------------------------------------------ describeReason

test('describeReason: one readable line per reason', (t) => {
  t.is(
    describeReason({ kind: 'LaggingWal', currentCommitLsn: parseLsn('0/3000000'), newCommitLsn: parseLsn('0/45000000'), threshold: GiB, candidateNodeId: '2' }),
    'LaggingWal: current node at 0/3000000, node 2 at 0/45000000, threshold 1 GiB',
  );
  t.is(
    describeReason({ kind: 'LaggingWal', currentCommitLsn: 0x1_0000_0000n, newCommitLsn: 0x1_00A0_0000n, threshold: 10n * MiB }),
    'LaggingWal: current node at 1/0, the candidate at 1/A00000, threshold 10 MiB',
  );
  t.is(describeReason({ kind: 'NoExistingConnection', candidateNodeId: '3' }), 'NoExistingConnection: not connected, connecting to node 3');
  t.is(
    describeReason({ kind: 'NoKeepAlives', lastKeepAlive: T0, checkTime: T0 + 12_345, threshold: 10_000, candidateNodeId: '1' }),
    'NoKeepAlives: last message 12.345 s ago, threshold 10 s; switching to node 1',
  );
  t.is(
    describeReason({ kind: 'NoKeepAlives', lastKeepAlive: null, checkTime: T0, threshold: 500 }),
    'NoKeepAlives: no message received on the current connection, threshold 500 ms; switching to the candidate',
  );
  t.is(
    describeReason({ kind: 'SwitchAvailabilityZone', candidateNodeId: '4', availabilityZone: 'eu-1a' }),
    'SwitchAvailabilityZone: node 4 is in our availability zone eu-1a and has all the WAL the current node has',
  );
  t.is(
    describeReason({
      kind: 'NoWalTimeout',
      currentLsn: 0x5000000n,
      currentCommitLsn: 0x5000000n,
      candidateCommitLsn: 0x5000100n,
      lastWalInteraction: T0,
      checkTime: T0 + 30_000,
      threshold: 10_000,
      candidateNodeId: '2',
    }),
    'NoWalTimeout: received up to 0/5000000, current node at 0/5000000, node 2 at 0/5000100, no WAL for 30 s, threshold 10 s',
  );
  t.is(
    describeReason({
      kind: 'NoWalTimeout',
      currentLsn: 0n,
      currentCommitLsn: 0n,
      candidateCommitLsn: 0x10n,
      lastWalInteraction: null,
      checkTime: T0,
      threshold: 1_500,
    }),
    'NoWalTimeout: received up to 0/0, current node at 0/0, the candidate at 0/10, no WAL received on the current connection, threshold 1.5 s',
  );
  t.is(
    describeReason({ kind: 'LaggingWal', currentCommitLsn: 0n, newCommitLsn: 0n, threshold: 1536n * MiB }),
    'LaggingWal: current node at 0/0, the candidate at 0/0, threshold 1.5 GiB',
  );
  t.is(describeReason({ kind: 'LaggingWal', currentCommitLsn: 0n, newCommitLsn: 0n, threshold: 1000n }).endsWith('threshold 1000 bytes'), true);
});

test('every decision the policy makes describes itself with the target node', (t) => {
  const p = mk();
  p.updateCandidate(cand('7', 0x3000000n), T0);
  const d = p.decide(T0);
  t.is(d.action, 'connect');
  if (d.action === 'connect') t.is(describeReason(d.reason), 'NoExistingConnection: not connected, connecting to node 7');
});
