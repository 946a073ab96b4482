// The Rust core against real PostgreSQL 15 WAL: the end-of-WAL scan agrees
// with pg_waldump and the server; WAL written through the store is
// byte-identical to the primary's and pg_waldump reads it; torn tails are
// found and truncated at the right record.

import { copyFile, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { findEndOfWal, formatLsn, WalStore } from '../ts/index.js';
import {
  createTempDir,
  endBeforeHeader,
  generateWal,
  lsnOf,
  registerCleanupHooks,
  startPostgres,
  waldump,
  type PgCluster,
  type TempDir,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
const SEGMENT_RE = /^00000001([0-9A-F]{8})([0-9A-F]{8})$/;

let pg: PgCluster;
let work: TempDir;

test.before(async () => {
  pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB', autovacuum: 'off' } });
  await generateWal(pg, { minBytes: 10 * SEG, bigRecords: true, switches: 2 });
  work = await createTempDir('walkeeper-walcore-');
});

test.after.always(async () => {
  await pg?.destroy();
  await work?.cleanup();
});

/** Segment numbers of timeline 1 in a directory, oldest first. */
async function segnos(dir: string): Promise<number[]> {
  return (await readdir(dir))
    .map((n) => SEGMENT_RE.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => parseInt(m[1]!, 16) * (0x1_0000_0000 / SEG) + parseInt(m[2]!, 16))
    .sort((a, b) => a - b);
}

const segName = (segno: number) =>
  `00000001${Math.floor(segno / 4096).toString(16).toUpperCase().padStart(8, '0')}${(segno % 4096).toString(16).toUpperCase().padStart(8, '0')}`;

async function currentFlush(): Promise<{ flush: bigint; insert: bigint }> {
  const [r] = await pg.query<{ f: string; i: string }>('SELECT pg_current_wal_flush_lsn()::text AS f, pg_current_wal_insert_lsn()::text AS i');
  return { flush: lsnOf(r!.f), insert: lsnOf(r!.i) };
}

test.serial('the end-of-WAL scan of a live pg_wal equals pg_waldump and the server flush position after CHECKPOINT', async (t) => {
  const [oldest] = await segnos(pg.walDir);
  const from = BigInt(oldest!) * BigInt(SEG);
  for (let attempt = 1; ; attempt++) {
    await pg.query('CHECKPOINT');
    const before = await currentFlush();
    const [cp] = await pg.query<{ redo: string; cp: string }>('SELECT redo_lsn::text AS redo, checkpoint_lsn::text AS cp FROM pg_control_checkpoint()');
    const scan = await findEndOfWal(pg.walDir, 1, SEG, from, { search: true });
    const fromRedo = await findEndOfWal(pg.walDir, 1, SEG, lsnOf(cp!.redo));
    const dump = await waldump(pg.walDir, scan.firstRecord!);
    const after = await currentFlush();
    if (before.flush !== after.flush || before.insert !== before.flush) {
      // Background activity (a running-xacts record) moved the end meanwhile.
      if (attempt < 5) continue;
      t.fail(`WAL kept moving: ${formatLsn(before.flush)} → ${formatLsn(after.flush)}`);
    }
    t.log(`scanned ${scan.records} records from ${formatLsn(scan.firstRecord!)} to ${formatLsn(scan.end)} (${scan.stopReason})`);
    t.is(formatLsn(scan.end), formatLsn(after.flush), 'scan end = server flush position');
    t.is(formatLsn(fromRedo.end), formatLsn(after.flush), 'from the checkpoint redo point too');
    t.is(scan.lastRecord, lsnOf(cp!.cp), 'the last record is the checkpoint');
    t.not(dump.errorAt, null, dump.error ?? 'pg_waldump did not stop with an error');
    t.is(formatLsn(endBeforeHeader(dump.errorAt!, SEG)), formatLsn(scan.end), `pg_waldump: ${dump.error}`);
    t.is(dump.lastGood, scan.lastRecord, `pg_waldump: ${dump.error}`);
    t.is(scan.records, dump.records.length, 'same number of records as pg_waldump');
    t.is(scan.lastRecord, dump.records.at(-1)!.lsn);
    t.is(scan.pgVersion, 15);
    t.is(scan.systemId, await pg.systemId());
    t.true(scan.records > 1000);
    // The WAL has what the test wants: records spanning pages, segments, and switches.
    t.true(dump.records.some((r) => r.totLen > SEG), 'a record longer than a segment');
    t.true(dump.records.filter((r) => r.desc.startsWith('SWITCH')).length >= 2, 'XLOG_SWITCH records');
    return;
  }
});

/** The primary's WAL from the oldest segment to its end, once the server is stopped. */
async function primaryWal(): Promise<{ first: number; end: bigint; bytes: Buffer; firstRecord: bigint }> {
  await pg.stop();
  const nos = await segnos(pg.walDir);
  const first = nos[0]!;
  const scan = await findEndOfWal(pg.walDir, 1, SEG, BigInt(first) * BigInt(SEG), { search: true });
  const lastSeg = Number((scan.end - 1n) / BigInt(SEG));
  const parts: Buffer[] = [];
  for (let s = first; s <= lastSeg; s++) parts.push(await readFile(path.join(pg.walDir, segName(s))));
  const all = Buffer.concat(parts);
  return { first, end: scan.end, bytes: all.subarray(0, Number(scan.end - BigInt(first) * BigInt(SEG))), firstRecord: scan.firstRecord! };
}

let primary: Awaited<ReturnType<typeof primaryWal>> | undefined;
const getPrimary = async () => (primary ??= await primaryWal());

/** Appends `bytes` (starting at LSN `at`) in awkward piece sizes, flushing now and then. */
async function feed(store: WalStore, at: bigint, bytes: Buffer): Promise<void> {
  const sizes = [1, 7, 8191, 8193, 100_003, 24, 131_077, 3, 65_536, 500_001, 13];
  let off = 0;
  let i = 0;
  while (off < bytes.length) {
    const n = Math.min(sizes[i % sizes.length]!, bytes.length - off);
    // A copy, as a socket would hand us: the store must not depend on the buffer afterwards.
    const end = await store.append(at + BigInt(off), Buffer.from(bytes.subarray(off, off + n)));
    off += n;
    if (end !== at + BigInt(off)) throw new Error(`append returned ${formatLsn(end)}`);
    if (i % 7 === 3) await store.flush();
    i++;
  }
  await store.flush();
}

async function storeDirWith(name: string, first: number, bytes: Buffer): Promise<{ dir: string; store: WalStore }> {
  const dir = path.join(work.path, name);
  const store = await WalStore.open(dir, SEG, 1);
  await feed(store, BigInt(first) * BigInt(SEG), bytes);
  return { dir, store };
}

test.serial('WAL appended through the store in odd pieces is byte-identical to the primary and pg_waldump reads it', async (t) => {
  const p = await getPrimary();
  const { dir, store } = await storeDirWith('identical', p.first, p.bytes);
  t.is(store.state.flushLsn, p.end);
  t.is(store.state.writeLsn, p.end);
  const lastSeg = Number((p.end - 1n) / BigInt(SEG));
  const names = (await readdir(dir)).sort();
  const want: string[] = [];
  for (let s = p.first; s <= lastSeg; s++) want.push(s === lastSeg && p.end % BigInt(SEG) !== 0n ? `${segName(s)}.partial` : segName(s));
  t.deepEqual(names, want.sort(), 'PostgreSQL names; the unfinished segment is .partial');
  for (let s = p.first; s <= lastSeg; s++) {
    const ours = await readFile(path.join(dir, want[s - p.first]!));
    const theirs = await readFile(path.join(pg.walDir, segName(s)));
    t.is(ours.length, SEG);
    if (want[s - p.first]!.endsWith('.partial')) {
      const n = Number(p.end % BigInt(SEG));
      t.true(ours.subarray(0, n).equals(theirs.subarray(0, n)), `${segName(s)} up to the end of WAL`);
      t.true(ours.subarray(n).every((b) => b === 0), 'zero after the end');
    } else {
      t.true(ours.equals(theirs), `${segName(s)} is byte-identical`);
    }
  }
  // pg_waldump reads it, once the .partial gets its final name (as an operator would rename it).
  const copy = path.join(work.path, 'identical-for-waldump');
  await mkdir(copy);
  for (const n of names) await copyFile(path.join(dir, n), path.join(copy, n.replace(/\.partial$/, '')));
  const ours = await waldump(copy, p.firstRecord);
  const theirs = await waldump(pg.walDir, p.firstRecord);
  t.true(ours.records.length > 1000);
  t.deepEqual(ours.records, theirs.records, 'pg_waldump sees the same records');
  t.is(ours.errorAt, theirs.errorAt);
  // And our own scan over the store agrees.
  const scan = await findEndOfWal(dir, 1, SEG, p.firstRecord);
  t.is(scan.end, p.end);
  // Reads across segment boundaries return the primary's bytes.
  const buf = Buffer.alloc(3 * SEG);
  const at = BigInt(p.first) * BigInt(SEG) + BigInt(SEG / 2);
  const n = await store.read(1, at, buf);
  t.is(n, Math.min(buf.length, Number(p.end - at)));
  t.true(buf.subarray(0, n).equals(p.bytes.subarray(SEG / 2, SEG / 2 + n)));
});

interface TornCase {
  name: string;
  /** Damages the WAL (a copy of the primary's bytes, padded to whole segments); returns where valid WAL must now end. */
  damage(w: Buffer, base: bigint, recs: { lsn: bigint; totLen: number }[]): { expect: bigint; reason: RegExp };
}

/** Where PostgreSQL says valid WAL ends when the record at `lsn` is the first bad one. */
const endBefore = (lsn: bigint) => endBeforeHeader(lsn, SEG);

const tornCases: TornCase[] = [
  {
    name: 'zeros from the last record on',
    damage: (w, base, recs) => {
      const last = recs.at(-1)!;
      w.fill(0, Number(last.lsn - base));
      return { expect: endBefore(last.lsn), reason: /invalid record length .* got 0/ };
    },
  },
  {
    name: 'garbage after the end',
    damage: (w, base, recs) => {
      const last = recs.at(-1)!;
      const end = Number(last.lsn - base) + 8 * Math.ceil(last.totLen / 8);
      for (let i = end; i < w.length; i++) w[i] = (i * 151 + 7) & 0xff;
      return { expect: 0n, reason: /./ };
    },
  },
  {
    name: 'half of a multi-page record',
    damage: (w, base, recs) => {
      const r = recs.filter((x) => x.totLen > 3 * 8192).at(-1)!;
      const cut = Number(r.lsn - base) + Math.floor(r.totLen / 2);
      w.fill(0, cut);
      return { expect: endBefore(r.lsn), reason: /record at .* is incomplete|contrecord|checksum/ };
    },
  },
  {
    name: 'a flipped CRC byte',
    damage: (w, base, recs) => {
      // A record near the end whose 24-byte header is on one page: byte 21
      // of a header split across pages would land in the next page's header
      // (its padding, which nothing checks), not in xl_crc.
      const r = recs.slice(0, recs.length - 39).filter((x) => Number(x.lsn % 8192n) + 24 <= 8192).at(-1)!;
      w[Number(r.lsn - base) + 21]! ^= 0x20;
      return { expect: endBefore(r.lsn), reason: /incorrect resource manager data checksum/ };
    },
  },
  {
    name: 'a stale recycled page',
    damage: (w, base, recs) => {
      // A record that continues onto the next page, whose page is replaced by
      // the same page of an older segment: valid-looking, wrong pageaddr.
      const r = recs.filter((x) => Number(x.lsn % 8192n) + x.totLen > 8192 && x.lsn - base > BigInt(2 * SEG)).at(-1)!;
      const nextPage = Number(r.lsn - base) - Number(r.lsn % 8192n) + 8192;
      const older = nextPage - 2 * SEG;
      w.copy(w, nextPage, older, older + 8192);
      return { expect: endBefore(r.lsn), reason: /unexpected pageaddr/ };
    },
  },
];

for (const c of tornCases) {
  test.serial(`a torn tail (${c.name}) is found and truncated at the right record`, async (t) => {
    const p = await getPrimary();
    const base = BigInt(p.first) * BigInt(SEG);
    const dump = await waldump(pg.walDir, p.firstRecord);
    const recs = dump.records.filter((r) => r.lsn >= base);
    const w = Buffer.alloc(Math.ceil(p.bytes.length / SEG) * SEG);
    p.bytes.copy(w);
    const { expect: e, reason } = c.damage(w, base, recs);
    const expect = e === 0n ? p.end : e;
    const dir = path.join(work.path, `torn-${c.name.replace(/\W+/g, '-')}`);
    await mkdir(dir);
    const nsegs = w.length / SEG;
    for (let i = 0; i < nsegs; i++) {
      const name = segName(p.first + i) + (i === nsegs - 1 ? '.partial' : '');
      await writeFile(path.join(dir, name), w.subarray(i * SEG, (i + 1) * SEG));
    }
    const scan = await findEndOfWal(dir, 1, SEG, p.firstRecord);
    t.is(formatLsn(scan.end), formatLsn(expect), scan.stopReason);
    t.regex(scan.stopReason, reason);
    // pg_waldump agrees on the last valid record of the damaged WAL.
    const copy = `${dir}-dump`;
    await mkdir(copy);
    for (const n of await readdir(dir)) await copyFile(path.join(dir, n), path.join(copy, n.replace(/\.partial$/, '')));
    const theirs = await waldump(copy, p.firstRecord);
    t.is(theirs.lastGood, scan.lastRecord, theirs.error ?? '');
    t.is(theirs.records.length, scan.records);

    // Truncate there, then stream the rest again: the result is the primary's WAL.
    const store = await WalStore.open(dir, SEG, 1);
    await store.truncate(scan.end);
    t.is(store.state.writeLsn, scan.end);
    t.is(store.state.flushLsn, scan.end);
    const tailSeg = Number(scan.end / BigInt(SEG));
    for (const s of store.list()) t.true(s.segno <= tailSeg, `${s.name} should be gone`);
    if (scan.end % BigInt(SEG) !== 0n) {
      const f = await readFile(path.join(dir, `${segName(tailSeg)}.partial`));
      t.true(f.subarray(Number(scan.end % BigInt(SEG))).every((b) => b === 0), 'the tail is zeroed');
    }
    await feed(store, scan.end, p.bytes.subarray(Number(scan.end - base)));
    const again = await findEndOfWal(dir, 1, SEG, p.firstRecord);
    t.is(again.end, p.end);
    const back = Buffer.alloc(p.bytes.length);
    t.is(await store.read(1, base, back), p.bytes.length);
    t.true(back.equals(p.bytes), 'byte-identical to the primary again');
  });
}

test.serial('a store reopened after a crash finds its end and resumes', async (t) => {
  const p = await getPrimary();
  const base = BigInt(p.first) * BigInt(SEG);
  // Written but never flushed, then "crashed": reopen from what is on disk.
  const dir = path.join(work.path, 'reopen');
  const s1 = await WalStore.open(dir, SEG, 1);
  const half = Math.floor(p.bytes.length / 2);
  await s1.append(base, p.bytes.subarray(0, half));
  await s1.flush();
  const s2 = await WalStore.open(dir, SEG, 1);
  t.is(s2.state.writeLsn, null, 'position unknown until the scan');
  const err = await t.throwsAsync(s2.append(base + BigInt(half), p.bytes.subarray(half, half + 100)));
  t.is((err as NodeJS.ErrnoException).code, 'WALCORE_NOT_POSITIONED');
  t.true(err!.message.includes(dir), 'the error names the stream directory');
  const scan = await findEndOfWal(dir, 1, SEG, base, { search: true });
  t.true(scan.end <= base + BigInt(half));
  await s2.truncate(scan.end);
  await feed(s2, scan.end, p.bytes.subarray(Number(scan.end - base)));
  const back = Buffer.alloc(p.bytes.length);
  await s2.read(1, base, back);
  t.true(back.equals(p.bytes));
  await rename(dir, `${dir}-done`);
});
