// commit_lsn is never reported below what was reported before, also
// across a crash: CommitLsn holds the report back until a quorum reaches the
// end of WAL found at start-up; Stream.open gives it that bound, or none
// after a clean stop.
import path from 'node:path';

import test from 'ava';

import { createLogger } from '../ts/log.js';
import { parseLsn, type Lsn } from '../ts/lsn.js';
import { CommitLsn } from '../ts/stream/commit_lsn.js';
import { Stream } from '../ts/stream/stream.js';
import { LsnWatch } from '../ts/stream/watch.js';
import { readControlFile, writeControlFile } from '../ts/wal/control_file.js';
import { RecoveryTrigger, WriterLock } from '../ts/cluster/writer_lock.js';
import { WalHandout } from '../ts/receiver/handout.js';
import { memberStatusJson } from '../ts/http/api.js';
import { parseNodeStatus } from '../ts/member_status.js';
import { streamProblems, type StreamDoc } from '../ts/cli/status.js';
import { createTempDir, type TempDir } from './harness/index.js';

const L = parseLsn;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('commit-lsn');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('CommitLsn: after a crash nothing is reported until the value reaches the bound; clients are served the known part meanwhile', (t) => {
  const watch = new LsnWatch(L('0/100'));
  const c = new CommitLsn(watch, L('0/400'));
  t.is(c.reported, null, 'the control file\'s copy may be below what was reported before the crash');
  t.is(c.value, L('0/100'), 'served up to what is known');
  t.is(c.waitingFor, L('0/400'));
  const seen: (Lsn | null)[] = [];
  watch.listen(() => seen.push(c.reported));
  t.false(c.raise(L('0/300')));
  t.is(c.value, L('0/300'), 'the quorum\'s progress is served at once');
  t.is(c.reported, null, 'but not reported: 0/300 may still be below what was');
  t.true(c.raise(L('0/400')), 'the raise that reaches the bound makes it known');
  t.is(c.reported, L('0/400'));
  t.is(c.waitingFor, null);
  t.deepEqual(seen, [null, L('0/400')], 'listeners (the status publishers) see the report of the raise that made it known');
  t.false(c.raise(L('0/500')));
  t.is(c.reported, L('0/500'));
  c.raise(L('0/450'));
  t.is(c.reported, L('0/500'), 'never lowered by a raise');
});

test('CommitLsn: known at once without a bound or with nothing past the value; a cut below the bound makes the cut point the bound', (t) => {
  t.is(new CommitLsn(new LsnWatch(L('0/100')), null).reported, L('0/100'), 'a clean stop');
  t.is(new CommitLsn(new LsnWatch(L('0/100')), L('0/100')).reported, L('0/100'), 'no WAL past commit_lsn');
  const a = new CommitLsn(new LsnWatch(L('0/300')), L('0/800'));
  a.resetTo(L('0/200'));
  t.is(a.value, L('0/200'));
  t.is(a.reported, L('0/200'), 'WAL past the cut is gone, and with it whatever was reported above it');
  const b = new CommitLsn(new LsnWatch(L('0/100')), L('0/800'));
  b.resetTo(L('0/500'));
  t.is(b.waitingFor, L('0/500'), 'the bound comes down to the end of WAL left');
  t.true(b.raise(L('0/500')));
});

const INIT = { systemId: 42n, pgVersion: 15, segmentSize: 16 << 20, tli: 1, start: L('0/1000000'), histories: new Map<number, string>() };

test('Stream.open: after a crash commit_lsn is not reported until a quorum reaches the end of WAL; after a clean stop it is, and stays so only for that life', async (t) => {
  const log = createLogger({ level: 'silent' });
  const dir = path.join(tmp.path, 'crash');
  const s = await Stream.create(dir, log, INIT);
  await s.close();
  // What a crash leaves: the control file written a second late, with flush_lsn past commit_lsn (and no WAL files, so the end of WAL is its flush_lsn).
  const crashed = (await readControlFile(dir))!;
  await writeControlFile(dir, { ...crashed, flushLsn: L('0/1800000'), commitLsn: L('0/1200000'), commitExact: false });
  const a = await Stream.open(dir, log);
  t.is(a.commitLsn, L('0/1200000'), 'served up to the control file\'s copy');
  t.is(a.reportedCommitLsn, null);
  t.is(a.commitUnknownBelow, L('0/1800000'));
  // What the members and receivers read: no commit_lsn rather than a lower one.
  const me = { nodeId: 1, pgAddress: '127.0.0.1:5432', httpAddress: '127.0.0.1:7676', availabilityZone: null };
  const unknown = JSON.parse(JSON.stringify(memberStatusJson(me, a))) as Record<string, unknown>;
  t.is(unknown.commit_lsn, null);
  t.is(parseNodeStatus('n1', unknown).commitLsn, null, 'a peer or receiver reads it as not known');
  const doc = { ...unknown, commit_lsn_unknown_below: '0/1800000', upstream: null, offload: null, cluster: null, replicas: [] } as unknown as StreamDoc;
  t.deepEqual(streamProblems(doc), ['commit_lsn not known yet after a restart (until a quorum has flushed up to 0/1800000)'], 'walkeeper status says why');
  a.setCommitLsn(L('0/1700000'));
  t.is(a.reportedCommitLsn, null);
  a.setCommitLsn(L('0/1800000'));
  t.is(a.reportedCommitLsn, L('0/1800000'));
  t.is(parseNodeStatus('n1', JSON.parse(JSON.stringify(memberStatusJson(me, a)))).commitLsn, L('0/1800000'));
  // A clean stop at commit_lsn 0/1400000 (the quorum's) with WAL flushed to 0/1800000.
  await a.close();
  const stopped = (await readControlFile(dir))!;
  t.true(stopped.commitExact, 'close() writes commit_lsn as exact');
  await writeControlFile(dir, { ...stopped, commitLsn: L('0/1400000') });
  const b = await Stream.open(dir, log);
  t.is(b.reportedCommitLsn, L('0/1400000'), 'known at once after a clean stop');
  t.is((await readControlFile(dir))!.commitExact, undefined, 'cleared on disk before anything can raise it: a crash in this life must not look clean');
  b.setCommitLsn(L('0/1600000'));
  t.is(b.reportedCommitLsn, L('0/1600000'));
  await b.close();
});

test('WalHandout: a connection starts at our own position, never the node\'s; only the next piece is handed on', (t) => {
  const h = new WalHandout(null);
  t.is(h.startOn(L('0/1234567'), 16 << 20), L('0/1000000'), 'with no position: the start of the node\'s segment');
  t.is(h.startOn(L('0/2000000'), 16 << 20), L('0/1000000'), 'after that, our own position whatever the node reports');
  t.is(h.accept(L('0/1000000'), 100, L('0/1000064')), null);
  t.is(h.next, L('0/1000064'));
  t.regex(h.accept(L('0/1000000'), 100, L('0/2000000'))!, /expected 0\/1000064 \(not contiguous\)/);
  t.regex(h.accept(L('0/1000064'), 100, L('0/1000070'))!, /beyond the end it announces/);
  t.is(h.next, L('0/1000064'), 'a refused message moves nothing');
});

test('RecoveryTrigger and WriterLock: recovery only after the upstream was away long enough and a peer is ahead; ingest makes it yield', async (t) => {
  const tr = new RecoveryTrigger(1000);
  const peers = [
    { key: 'a', flushLsn: L('0/500'), pgAddress: 'a:1', error: null },
    { key: 'b', flushLsn: L('0/900'), pgAddress: 'b:1', error: null },
    { key: 'c', flushLsn: L('0/990'), pgAddress: 'c:1', error: 'reports another system' },
  ];
  t.is(tr.check(0, false, L('0/400'), peers), null, 'the upstream just went away');
  t.is(tr.check(999, false, L('0/400'), peers), null);
  t.is(tr.check(1000, false, L('0/400'), peers)?.key, 'b', 'the most advanced member in good standing');
  t.is(tr.check(1200, true, L('0/400'), peers), null, 'the upstream is back');
  t.is(tr.check(1300, false, L('0/400'), peers), null, 'and away again: the wait starts over');
  t.is(tr.check(2300, false, L('0/900'), peers), null, 'nobody is ahead');

  const lock = new WriterLock();
  let yielded = 0;
  const release = lock.tryAcquire('recovery', () => yielded++)!;
  t.truthy(release);
  const ingest = lock.acquire('ingest');
  t.is(yielded, 1, 'ingest asking makes recovery yield');
  t.is(lock.tryAcquire('recovery', () => undefined), null, 'nobody jumps the queue');
  t.is(lock.heldBy, 'recovery');
  release();
  const r2 = await ingest;
  t.is(lock.heldBy, 'ingest');
  r2();
  t.is(lock.heldBy, null);
});
