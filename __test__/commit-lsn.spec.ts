// commit_lsn is durable before it is published: DurableCommit's order and
// coalescing, the two-slot commit_lsn file, and Stream.open reading it.
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { createLogger } from '../ts/log.js';
import { parseLsn, type Lsn } from '../ts/lsn.js';
import { DurableCommit } from '../ts/stream/commit_lsn.js';
import { Stream } from '../ts/stream/stream.js';
import { LsnWatch } from '../ts/stream/watch.js';
import { COMMIT_FILE_NAME, CommitFile } from '../ts/wal/commit_file.js';
import { RecoveryTrigger, WriterLock } from '../ts/cluster/writer_lock.js';
import { WalHandout } from '../ts/receiver/handout.js';
import { createTempDir, type TempDir } from './harness/index.js';

const L = parseLsn;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('commit-lsn');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('DurableCommit publishes a value only after its write completed, and coalesces raises behind a write in flight', (t) => {
  const watch = new LsnWatch(L('0/100'));
  const writes: { lsn: Lsn; done: (e: Error | null) => void }[] = [];
  const errors: string[] = [];
  const c = new DurableCommit(watch, { write: (lsn, done) => writes.push({ lsn, done }) }, (e) => errors.push(e.message));
  c.raise(L('0/200'));
  t.is(watch.value, L('0/100'), 'not published before it is durable');
  t.is(writes.length, 1);
  c.raise(L('0/300'));
  c.raise(L('0/400'));
  c.raise(L('0/350'));
  t.is(writes.length, 1, 'one write in flight at a time');
  writes[0]!.done(null);
  t.is(watch.value, L('0/200'), 'the written value is published');
  t.is(writes.length, 2);
  t.is(writes[1]!.lsn, L('0/400'), 'the next write takes the latest value, the ones between are skipped');
  writes[1]!.done(new Error('EIO'));
  t.is(watch.value, L('0/200'), 'a failed write publishes nothing');
  t.deepEqual(errors, ['EIO']);
  c.raise(L('0/500'));
  t.is(writes.length, 3, 'the next raise tries again');
  writes[2]!.done(null);
  t.is(watch.value, L('0/500'));
  c.raise(L('0/450'));
  t.is(writes.length, 3, 'never lowered by a raise');
});

test('DurableCommit: a raise may wait to gather others (nobody waits on commit_lsn); one with no wait, or settled(), writes at once', async (t) => {
  const watch = new LsnWatch(L('0/100'));
  const writes: { lsn: Lsn; done: (e: Error | null) => void }[] = [];
  const timers: { fn: () => void; ms: number; cancelled: boolean }[] = [];
  const defer = (fn: () => void, ms: number) => {
    const x = { fn, ms, cancelled: false };
    timers.push(x);
    return () => (x.cancelled = true);
  };
  const c = new DurableCommit(watch, { write: (lsn, done) => writes.push({ lsn, done }) }, () => undefined, defer);
  c.raise(L('0/200'), 100);
  c.raise(L('0/300'), 100);
  t.is(writes.length, 0, 'nothing written yet');
  t.is(timers.length, 1, 'one timer gathers both');
  t.is(timers[0]!.ms, 100);
  timers[0]!.fn();
  t.is(writes.length, 1);
  t.is(writes[0]!.lsn, L('0/300'));
  writes[0]!.done(null);
  t.is(watch.value, L('0/300'));
  c.raise(L('0/400'), 100);
  c.raise(L('0/500'));
  t.true(timers[1]!.cancelled, 'a raise with no wait cancels the gathering');
  t.is(writes.length, 2);
  t.is(writes[1]!.lsn, L('0/500'));
  writes[1]!.done(null);
  c.raise(L('0/600'), 100);
  const settled = c.settled();
  t.is(writes.length, 3, 'settled() writes what was gathered at once');
  writes[2]!.done(null);
  await settled;
  t.is(watch.value, L('0/600'));
});

test('DurableCommit.resetTo lowers at once and a write begun before it does not publish its higher value', async (t) => {
  const watch = new LsnWatch(L('0/100'));
  const writes: { lsn: Lsn; done: (e: Error | null) => void }[] = [];
  const c = new DurableCommit(watch, { write: (lsn, done) => writes.push({ lsn, done }) }, () => undefined);
  c.raise(L('0/300'));
  c.resetTo(L('0/80'));
  t.is(watch.value, L('0/80'));
  let settled = false;
  void c.settled().then(() => (settled = true));
  writes[0]!.done(null);
  t.is(watch.value, L('0/80'), 'the old write does not publish 0/300');
  t.is(writes.length, 2);
  t.is(writes[1]!.lsn, L('0/80'), 'the lowered value is written');
  await Promise.resolve();
  t.false(settled);
  writes[1]!.done(null);
  await new Promise((r) => setImmediate(r));
  t.true(settled);
});

test('the commit_lsn file: two slots in turn, the newer valid one read back; a torn slot leaves the value before it', async (t) => {
  const dir = path.join(tmp.path, 'file');
  await writeFile(path.join(tmp.path, 'mk'), '');
  await import('node:fs/promises').then((fs) => fs.mkdir(dir));
  const f = await CommitFile.open(dir);
  t.is(f.initial, null, 'a new file has no value');
  await f.write(L('0/1000'));
  await f.write(L('0/2000'));
  await f.write(L('0/3000'));
  const g = await CommitFile.open(dir);
  t.is(g.initial, L('0/3000'));
  // Tear the slot written last (seq 3, the second slot): the one before it is read.
  const fh = await open(path.join(dir, COMMIT_FILE_NAME), 'r+');
  await fh.write(Buffer.from([0xff, 0xff]), 0, 2, 512 + 10);
  await fh.close();
  const h = await CommitFile.open(dir);
  t.is(h.initial, L('0/2000'));
  await h.write(L('0/4000'));
  const k = await CommitFile.open(dir);
  t.is(k.initial, L('0/4000'), 'writing goes on after a torn slot');
});

test('Stream.open takes commit_lsn from the commit_lsn file, and refuses to start when valid WAL ends below it', async (t) => {
  const dir = path.join(tmp.path, 's1');
  const log = createLogger({ level: 'silent' });
  const s = await Stream.create(dir, log, { systemId: 42n, pgVersion: 15, segmentSize: 16 << 20, tli: 1, start: L('0/1000000'), histories: new Map() });
  await s.close();
  const f = await CommitFile.open(dir);
  await f.write(L('0/1800000'));
  const err = await t.throwsAsync(Stream.open(dir, log));
  t.regex(err!.message, /valid WAL ends at 0\/1000000, below commit_lsn 0\/1800000 \(no WAL files\).*refusing to start/);
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
