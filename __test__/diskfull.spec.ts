// Issue 8 item 4: a node whose disk fills up stops acknowledging for the
// stream, reports the error on HTTP and in its log, never acknowledges or
// serves a byte it could not persist, and continues by itself when space
// returns — ending byte-identical to the primary.

import { execFileSync } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn, parseLsn } from '../ts/lsn.js';
import { compareWalDirs, createTempDir, isRoot, lsnOf, registerCleanupHooks, startPostgres, startTestNode, until, type TempDir } from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-diskfull-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('disk full: no acknowledgement past what is on disk, the error on HTTP and in the log, recovery by itself when space returns', async (t) => {
  if (process.platform !== 'linux') return t.fail('this test mounts a size-limited tmpfs: it needs Linux');
  const mnt = path.join(tmp.path, 'small');
  await mkdir(mnt);
  // As root (CI) directly; otherwise through passwordless sudo (GitHub's runners), owned by us.
  const priv = (cmd: string, args: string[]) => (isRoot() ? execFileSync(cmd, args) : execFileSync('sudo', ['-n', cmd, ...args]));
  try {
    priv('mount', ['-t', 'tmpfs', '-o', `size=16m,uid=${process.getuid!()},gid=${process.getgid!()},mode=0700`, 'tmpfs', mnt]);
  } catch (e) {
    return t.fail(`cannot mount a tmpfs (${(e as Error).message.split('\n')[0]}): the disk-full test needs root or passwordless sudo`);
  }
  t.teardown(() => {
    priv('umount', ['-l', mnt]);
  });
  // Take most of the space, so that a few MiB of WAL fill the disk.
  const filler = path.join(mnt, 'filler');
  await writeFile(filler, Buffer.alloc(13 * SEG, 1));

  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const node = await startTestNode({ upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, dataDir: path.join(mnt, 'data') });
  t.teardown(() => node.stop());
  const flushOf = async () => lsnOf((await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l'))[0]!.l);
  await until(async () => node.node.streams.has('main') && node.node.stream('main').flushLsn >= (await flushOf()), 'the node to follow');
  const s = node.node.stream('main');

  // More WAL than the disk holds.
  await pg.query('CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 30) AS v FROM generate_series(1, 8000) g');
  const target = await flushOf();
  await until(() => s.storageError !== null, 'the node to run out of space', 30_000);
  t.regex(s.storageError!, /No space left on device|ENOSPC|os error 28/i);
  const status = (await (await fetch(`${node.httpUrl}/v1/streams/main`)).json()) as { storage_error: string | null; flush_lsn: string; commit_lsn: string };
  t.regex(status.storage_error ?? '', /No space left on device|ENOSPC|os error 28/i, 'the error is on HTTP');
  t.true(node.logs.some((l) => l.msg === 'cannot store WAL: acknowledging nothing past flush_lsn, retrying' && l.stream === 'main'), 'and in the log, naming the stream');
  t.true(s.flushLsn < target, `flush_lsn ${formatLsn(s.flushLsn)} stays below the primary's ${formatLsn(target)}`);
  // What the primary was told, and what clients may see, never exceed what is on disk.
  await new Promise((r) => setTimeout(r, 1000));
  const [rep] = await pg.query<{ flush_lsn: string | null; write_lsn: string | null }>("SELECT flush_lsn::text, write_lsn::text FROM pg_stat_replication WHERE application_name = 'walkeeper_1'");
  const stuck = s.flushLsn;
  t.true(rep === undefined || rep.flush_lsn === null || parseLsn(rep.flush_lsn) <= stuck, `the primary heard flush ${rep?.flush_lsn} ≤ ${formatLsn(stuck)}`);
  t.true(parseLsn(status.commit_lsn) <= parseLsn(status.flush_lsn));
  t.is(s.flushLsn, stuck, 'nothing more was acknowledged while the disk stayed full');

  // Space returns: the node continues by itself.
  await rm(filler);
  await until(() => s.flushLsn >= target, `the node to continue to ${formatLsn(target)} once space returned`, 60_000).catch((e: Error) => {
    throw new Error(`${e.message}; last log lines:\n${node.logs.slice(-12).map((l) => JSON.stringify(l)).join('\n')}`);
  });
  await until(() => s.storageError === null, 'the error to clear');
  t.true(node.logs.some((l) => l.msg === 'WAL is being stored again'));
  await pg.query('SELECT pg_switch_wal()');
  const end = await flushOf();
  await until(() => s.flushLsn >= end, 'the node to follow on');
  t.deepEqual(await compareWalDirs(path.join(mnt, 'data', 'streams', 'main'), pg.walDir, { segSize: SEG, endLsn: end, segments: 'ours', partialTail: 'ignore' }), []);
  t.true(node.logs.some((l) => l.msg === 'discarded WAL written after flush_lsn; resuming there'));
});
