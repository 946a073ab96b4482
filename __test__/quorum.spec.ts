// commit_lsn from the members' flush positions (ts/cluster/quorum.ts): the pure
// arithmetic, and a real Stream driven through Quorum — peers reporting,
// bad reports ignored, monotonic, membership known only once the broker says.

import path from 'node:path';

import test from 'ava';

import { parseLsn, type Lsn } from '../ts/lsn.js';
import { createLogger } from '../ts/log.js';
import { PeerDemand, Quorum, quorumCommitLsn, quorumSize } from '../ts/cluster/quorum.js';
import { Stream } from '../ts/stream/stream.js';
import type { NodeStatus } from '../ts/member_status.js';
import { createTempDir, type TempDir } from './harness/index.js';

const L = parseLsn;
const SYSID = 7712267298705426424n;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-quorum-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('quorum size is a majority of the members, this node included', (t) => {
  t.deepEqual([1, 2, 3, 4, 5, 6, 7].map(quorumSize), [1, 2, 2, 3, 3, 4, 4]);
  t.throws(() => quorumSize(0));
});

test('peer demand: every flush while a client waits on commit_lsn, and for the grace after the last leaves; a heartbeat otherwise', (t) => {
  const d = new PeerDemand(5000);
  t.false(d.prompt(0), 'no client yet: a heartbeat is enough');
  t.is(d.lapsesAt(0), null);
  d.setClients(1, 1000);
  t.true(d.prompt(1000));
  t.is(d.lapsesAt(1000), null, 'no lapse while a client is here');
  d.setClients(2, 2000);
  d.setClients(1, 3000);
  t.true(d.prompt(100_000), 'one client left of two: still prompt');
  d.setClients(0, 10_000);
  t.true(d.prompt(10_000));
  t.true(d.prompt(14_999));
  t.is(d.lapsesAt(12_000), 15_000);
  t.false(d.prompt(15_000), 'the grace is over');
  t.is(d.lapsesAt(15_000), null);
  // A client back within the grace keeps it prompt throughout; the grace counts from the latest departure.
  d.setClients(1, 20_000);
  d.setClients(0, 21_000);
  d.setClients(1, 23_000);
  d.setClients(0, 24_000);
  t.true(d.prompt(28_999));
  t.false(d.prompt(29_000));
  // Zero reported again (a recovery client came and went) does not restart the grace.
  d.setClients(0, 40_000);
  t.false(d.prompt(40_000));
});

test('commit_lsn = min(own flush, Q-th highest flush); unknown members count as 0/0', (t) => {
  // One node: its own flush.
  t.is(quorumCommitLsn(L('0/500'), [], 1), L('0/500'));
  // Three members, Q = 2: the second highest.
  t.is(quorumCommitLsn(L('0/500'), [L('0/300'), L('0/400')], 3), L('0/400'));
  t.is(quorumCommitLsn(L('0/300'), [L('0/500'), L('0/400')], 3), L('0/300'), 'never above our own flush');
  t.is(quorumCommitLsn(L('0/400'), [L('0/500'), L('0/100')], 3), L('0/400'));
  // Peers never heard of: with one unknown of three, the other peer decides.
  t.is(quorumCommitLsn(L('0/500'), [L('0/200')], 3), L('0/200'));
  t.is(quorumCommitLsn(L('0/500'), [], 3), 0n, 'alone among three: nothing is on a quorum');
  // Five members, Q = 3.
  t.is(quorumCommitLsn(L('0/900'), [L('0/800'), L('0/100'), L('0/700'), L('0/200')], 5), L('0/700'));
  t.is(quorumCommitLsn(L('0/900'), [L('0/800'), L('0/100')], 5), L('0/100'));
  // Two members: both must have it.
  t.is(quorumCommitLsn(L('0/900'), [L('0/800')], 2), L('0/800'));
  t.throws(() => quorumCommitLsn(0n, [1n, 2n], 2));
});

async function mkStream(name: string, flush: Lsn): Promise<Stream> {
  const s = await Stream.create(path.join(tmp.path, name), createLogger({ level: 'silent' }), {
    systemId: SYSID,
    pgVersion: 15,
    segmentSize: 16 * 1024 * 1024,
    tli: 1,
    start: 0x1000000n,
    histories: new Map(),
  });
  s.flushWatch.set(flush);
  return s;
}

function status(peer: string, flush: string, extra: Partial<NodeStatus> = {}): NodeStatus {
  return {
    nodeId: peer,
    nodeNumber: Number(peer.slice(-1)),
    flushLsn: L(flush),
    commitLsn: L(flush),
    pgAddress: '127.0.0.1:1',
    availabilityZone: null,
    systemId: SYSID,
    tli: 1,
    segmentSize: 16 * 1024 * 1024,
    pgVersion: 15,
    httpAddress: null,
    remoteConsistentLsn: null,
    oldestLsn: null,
    backupLsn: null,
    ...extra,
  };
}

test('Quorum over a real stream: peers move commit_lsn, bad reports do not, it never goes back', async (t) => {
  const s = await mkStream('q1', L('0/1500000'));
  t.teardown(() => s.close());
  let clock = 1000;
  const q = new Quorum(s, { nodeId: 1 }, { peers: ['http://p2', 'http://p3'], membershipKnown: true }, () => clock);
  q.update();
  t.is(s.commitLsn, L('0/1000000'), 'no peer heard yet: commit_lsn stays at the stream start');
  q.onStatus(status('http://p2', '0/1200000'));
  t.is(s.commitLsn, L('0/1200000'));
  q.onStatus(status('http://p3', '0/1400000'));
  t.is(s.commitLsn, L('0/1400000'), 'the second highest of 1500000, 1400000, 1200000');
  // Another system, commit above flush, another segment size: ignored and reported.
  q.onStatus(status('http://p2', '0/9000000', { systemId: 1n }));
  q.onStatus(status('http://p3', '0/9000000', { commitLsn: L('0/9100000') }));
  q.onStatus(status('http://p3', '0/9000000', { segmentSize: 1024 * 1024 }));
  t.is(s.commitLsn, L('0/1400000'));
  const bad = q.list().find((m) => m.key === 'http://p3')!;
  t.regex(bad.error ?? '', /segment size/);
  t.is(bad.flushLsn, L('0/1400000'), 'the last good value is kept');
  // A peer going back (a replaced disk) lowers what it counts for, but commit_lsn never goes down.
  clock = 2000;
  q.onStatus(status('http://p3', '0/1100000'));
  q.onStatus(status('http://p2', '0/1100000'));
  t.is(s.commitLsn, L('0/1400000'));
  t.is(q.list().find((m) => m.key === 'http://p3')!.heardAt, 2000);
  t.is(q.list().find((m) => m.key === 'http://p3')!.error, null, 'a good report clears the error');
  // Our own flush moves: commit_lsn follows the quorum, capped by our flush.
  q.onStatus(status('http://p2', '0/2000000'));
  s.flushWatch.set(L('0/1800000'));
  q.update();
  t.is(s.commitLsn, L('0/1800000'));
  // Unknown peer keys are not members.
  q.onStatus(status('http://p9', '0/9000000'));
  t.is(q.memberCount, 3);
  t.is(s.commitLsn, L('0/1800000'));
});

test('Quorum: a peer address that is this node is not counted; membership unknown until the broker tells', async (t) => {
  const s = await mkStream('q2', L('0/1500000'));
  t.teardown(() => s.close());
  const q = new Quorum(s, { nodeId: 1 }, { peers: ['http://p1', 'http://p2'], membershipKnown: true });
  t.is(q.memberCount, 3);
  q.onStatus(status('http://p1', '0/1500000'));
  t.is(q.memberCount, 2, 'http://p1 answered with our node id');
  q.onStatus(status('http://p2', '0/1300000'));
  t.is(s.commitLsn, L('0/1300000'));

  const e = await mkStream('q3', L('0/1500000'));
  t.teardown(() => e.close());
  const qe = new Quorum(e, { nodeId: 1 }, { peers: [], membershipKnown: false });
  qe.update();
  t.is(e.commitLsn, L('0/1000000'), 'etcd not read yet: nothing committed on a guess');
  qe.setMembers(['2', '3']);
  t.is(e.commitLsn, L('0/1000000'), 'two members never heard of');
  qe.onStatus(status('2', '0/1400000'));
  t.is(e.commitLsn, L('0/1400000'));
  qe.setMembers(['2', '3', '4', '5']);
  qe.onStatus(status('3', '0/1450000'));
  t.is(e.commitLsn, L('0/1400000'), 'five members: Q = 3 (1500000, 1450000, 1400000)');
  t.is(qe.size, 3);
});
