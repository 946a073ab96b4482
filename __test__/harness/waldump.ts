// pg_waldump as the reference decoder: the records it lists and the position
// where it says valid WAL ends.

import { findEndOfWal } from '../../ts/index.js';
import { pgWaldump } from './pgtools.js';
import { fmtLsn, lsnOf } from './pgtools.js';

export interface DumpedRecord {
  lsn: bigint;
  xid: bigint;
  prev: bigint;
  totLen: number;
  rmgr: string;
  desc: string;
}

export interface Dump {
  records: DumpedRecord[];
  /** The last record pg_waldump read before its error ("error in WAL record at X"). */
  lastGood: bigint | null;
  /** The position named inside the error ("invalid record length at Y"), when it names one. */
  errorAt: bigint | null;
  error: string | null;
}

const REC = /^rmgr: (\S+)\s+len \(rec\/tot\):\s*\d+\/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-F]+\/[0-9A-F]+), prev ([0-9A-F]+\/[0-9A-F]+), desc: (.*)$/;
const ERR_AT = / at ([0-9A-F]+\/[0-9A-F]+)(?::|$)/;

/** Runs pg_waldump over `dir` from `start` (to `end` if given) and parses every record line. */
export async function waldump(dir: string, start: bigint, end?: bigint, timeline = 1): Promise<Dump> {
  const args = ['-p', dir, '-t', String(timeline), '-s', fmtLsn(start)];
  if (end !== undefined) args.push('-e', fmtLsn(end));
  const r = await pgWaldump(args);
  const records: DumpedRecord[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = REC.exec(line);
    if (m) records.push({ rmgr: m[1]!, totLen: Number(m[2]), xid: BigInt(m[3]!), lsn: lsnOf(m[4]!), prev: lsnOf(m[5]!), desc: m[6]! });
  }
  const errLine = r.stderr.split('\n').find((l) => l.includes('error')) ?? null;
  let errorAt: bigint | null = null;
  let lastGood: bigint | null = null;
  if (errLine) {
    // "pg_waldump: error: error in WAL record at 0/1A2B3C8: invalid record length at 0/1A2B400: wanted 24, got 0"
    const m = /error in WAL record at ([0-9A-F]+\/[0-9A-F]+): (.*)$/.exec(errLine);
    if (m) {
      lastGood = lsnOf(m[1]!);
      const inner = ERR_AT.exec(m[2]!);
      if (inner) errorAt = lsnOf(inner[1]!);
    }
  }
  if (r.code !== 0 && errLine === null) throw new Error(`pg_waldump failed: ${r.stderr}`);
  return { records, lastGood, errorAt, error: errLine };
}

/**
 * pg_waldump reports the end of WAL as the position where it tried to read
 * the next record; when that is just after a page header, PostgreSQL's own
 * end position (and ours) is the page boundary before it.
 */
export function endBeforeHeader(lsn: bigint, segSize: number): bigint {
  const inSeg = Number(lsn % BigInt(segSize));
  if (inSeg === 40) return lsn - 40n;
  if (inSeg % 8192 === 24) return lsn - 24n;
  return lsn;
}

/** End LSN of a record that starts at `lsn` with `totLen` bytes, counting the page headers it crosses. */
export function recordEnd(lsn: bigint, totLen: number, segSize: number): bigint {
  let pos = lsn;
  let left = totLen;
  for (;;) {
    const room = 8192 - Number(pos % 8192n);
    if (left <= room) return pos + BigInt(left);
    left -= room;
    pos += BigInt(room);
    pos += pos % BigInt(segSize) === 0n ? 40n : 24n;
  }
}

/**
 * Where each commit record in `walDir` (timeline 1) ends, by xid, from the
 * first record in the segment of `from` on: what a test checks an
 * acknowledged commit against.
 */
export async function commitRecordEnds(walDir: string, segSize: number, from: bigint): Promise<Map<bigint, bigint>> {
  const first = await findEndOfWal(walDir, 1, segSize, from - (from % BigInt(segSize)), { search: true });
  const dump = await waldump(walDir, first.firstRecord!);
  const byXid = new Map<bigint, bigint>();
  for (const r of dump.records) if (r.rmgr === 'Transaction' && r.desc.startsWith('COMMIT')) byXid.set(r.xid, recordEnd(r.lsn, r.totLen, segSize));
  return byXid;
}
