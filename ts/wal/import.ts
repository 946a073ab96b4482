/**
 * `walkeeper import`: seed a stream from a pg_wal or WAL archive directory.
 *
 * Copies complete segments, the last partial one and the timeline history
 * files; checks that every segment's long page header belongs to one
 * database system, one segment size and one PostgreSQL major version
 * (refusing a mix, which would otherwise be served to a standby that then
 * rejects it); then decodes the copied WAL to its end and records that end
 * as flush_lsn and commit_lsn. Recycled or pre-allocated segments past the
 * end of WAL (PostgreSQL keeps some in pg_wal) are recognised by their
 * headers and left out.
 */
import { constants as fsc } from 'node:fs';
import { copyFile, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';

import { formatLsn, historyFileName, segmentFileName, type Lsn } from '../lsn.js';
import { writeControlFile } from './control_file.js';
import { parseHistory, timelineOfLsn } from './timeline.js';
import { findEndOfWal, WalStore } from './wal_storage.js';
import { checkNotRunning } from './lockfile.js';

const SEGMENT_RE = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/;
const HISTORY_RE = /^([0-9A-F]{8})\.history$/;
const MAGICS: Record<number, number> = { 0xd110: 15, 0xd113: 16, 0xd116: 17 };

export interface ImportOptions {
  dataDir: string;
  stream: string;
  walDir: string;
}

export interface ImportResult {
  stream: string;
  dir: string;
  systemId: bigint;
  pgVersion: number;
  segmentSize: number;
  tli: number;
  firstLsn: Lsn;
  endLsn: Lsn;
  segments: number;
  historyFiles: number;
  stopReason: string;
  /** Files found but not imported, with why. */
  skipped: string[];
}

interface SegmentHeader {
  name: string;
  /** Set when the header is a real long header but of another position: a recycled segment. */
  recycled?: string;
  tli: number;
  segno: number;
  partial: boolean;
  systemId: bigint;
  segSize: number;
  pgVersion: number;
}

const hex = (s: string) => parseInt(s, 16);

/** Reads and checks a segment's long page header; a string says why it is not WAL (yet). */
async function readHeader(dir: string, name: string): Promise<SegmentHeader | string> {
  const m = SEGMENT_RE.exec(name)!;
  const fh = await open(path.join(dir, name), 'r');
  const b = Buffer.alloc(40);
  let size: number;
  try {
    size = (await fh.stat()).size;
    const { bytesRead } = await fh.read(b, 0, 40, 0);
    if (bytesRead < 40) return 'shorter than a page header';
  } finally {
    await fh.close();
  }
  const magic = b.readUInt16LE(0);
  const info = b.readUInt16LE(2);
  const pgVersion = MAGICS[magic];
  if (pgVersion === undefined) return magic === 0 ? 'zero-filled (pre-allocated, never written)' : `unknown page magic ${magic.toString(16).toUpperCase()}`;
  if ((info & 0x2) === 0) return 'first page has no long header';
  const segSize = b.readUInt32LE(32);
  if (segSize < 1 << 20 || segSize > 1 << 30 || (segSize & (segSize - 1)) !== 0) return `invalid segment size ${segSize} in its header`;
  if (b.readUInt32LE(36) !== 8192) return `unsupported WAL block size ${b.readUInt32LE(36)}`;
  const perId = 0x1_0000_0000 / segSize;
  if (hex(m[3]!) >= perId) return `name does not fit segment size ${segSize}`;
  const segno = hex(m[2]!) * perId + hex(m[3]!);
  const pageaddr = b.readBigUInt64LE(8);
  const header = { name, tli: hex(m[1]!), segno, partial: m[4] !== undefined, systemId: b.readBigUInt64LE(24), segSize, pgVersion };
  if (pageaddr !== BigInt(segno) * BigInt(segSize)) return { ...header, recycled: `holds the WAL of ${formatLsn(pageaddr)}, not of its name (a recycled segment)` };
  if (size !== segSize) throw new Error(`${path.join(dir, name)} has ${size} bytes but its header says segments are ${segSize} bytes`);
  return header;
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function importWal(opts: ImportOptions): Promise<ImportResult> {
  const { dataDir, stream, walDir } = opts;
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$/.test(stream)) throw new Error(`invalid stream name ${JSON.stringify(stream)}: use letters, digits, _ . - (up to 63)`);
  await checkNotRunning(dataDir);
  const streamsDir = path.join(dataDir, 'streams');
  const finalDir = path.join(streamsDir, stream);
  if (await stat(finalDir).then(() => true, () => false)) {
    throw new Error(`stream ${stream} already exists in ${streamsDir}; remove ${finalDir} or import into another --stream`);
  }
  const names = await readdir(walDir).catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read WAL directory ${walDir}: ${e.code ?? e.message}`);
  });
  const skipped: string[] = [];
  const headers: SegmentHeader[] = [];
  const recycled: SegmentHeader[] = [];
  const histories = new Map<number, string>();
  for (const name of names.sort()) {
    if (SEGMENT_RE.test(name)) {
      const h = await readHeader(walDir, name);
      if (typeof h === 'string') skipped.push(`${name}: ${h}`);
      else if (h.recycled) recycled.push(h);
      else headers.push(h);
    } else if (HISTORY_RE.test(name)) {
      histories.set(hex(name.slice(0, 8)), name);
    } else if (name !== 'archive_status') {
      skipped.push(`${name}: not a WAL segment or history file`);
    }
  }
  if (headers.length === 0) throw new Error(`${walDir} holds no WAL segments${skipped.length ? ` (${skipped.join('; ')})` : ''}`);

  // One system, one segment size, one major version — recycled segments
  // included: a recycled segment of another system means two clusters' WAL
  // were mixed in this directory.
  const first = headers[0]!;
  for (const h of [...headers, ...recycled]) {
    if (h.systemId !== first.systemId) {
      throw new Error(`${walDir} mixes WAL of two database systems: ${first.systemId} (${first.name}) and ${h.systemId} (${h.name})`);
    }
    if (h.segSize !== first.segSize) {
      throw new Error(`${walDir} mixes two WAL segment sizes: ${first.segSize} (${first.name}) and ${h.segSize} (${h.name})`);
    }
    if (h.pgVersion !== first.pgVersion) {
      throw new Error(`${walDir} mixes WAL of PostgreSQL ${first.pgVersion} (${first.name}) and ${h.pgVersion} (${h.name})`);
    }
  }
  const segSize = first.segSize;
  for (const h of recycled) skipped.push(`${h.name}: ${h.recycled}`);

  // The newest timeline and its ancestry.
  const target = Math.max(...headers.map((h) => h.tli));
  let historyText: string | null = null;
  if (target > 1) {
    const hname = histories.get(target);
    if (!hname) throw new Error(`${walDir} has WAL of timeline ${target} but not its history file ${historyFileName(target)}`);
    historyText = await readFile(path.join(walDir, hname), 'utf8');
  }
  const history = parseHistory(target, historyText);
  const chain = new Set(history.map((e) => e.tli));
  const keep = headers.filter((h) => {
    if (chain.has(h.tli)) return true;
    skipped.push(`${h.name}: timeline ${h.tli} is not in the history of timeline ${target}`);
    return false;
  });
  for (const [tli, hname] of histories) {
    if (!chain.has(tli) && tli !== 1) skipped.push(`${hname}: timeline ${tli} is not in the history of timeline ${target}`);
  }

  // A complete segment wins over a .partial of the same timeline and number.
  const byKey = new Map<string, SegmentHeader>();
  for (const h of keep) {
    const k = `${h.tli}/${h.segno}`;
    const prev = byKey.get(k);
    if (!prev || (prev.partial && !h.partial)) {
      if (prev) skipped.push(`${prev.name}: a complete copy is imported instead`);
      byKey.set(k, h);
    } else {
      skipped.push(`${h.name}: a complete copy is imported instead`);
    }
  }
  // Contiguous segment numbers from the oldest: WAL after a hole is unreachable.
  const segnos = [...new Set([...byKey.values()].map((h) => h.segno))].sort((a, b) => a - b);
  let lastContiguous = segnos[0]!;
  for (const s of segnos.slice(1)) {
    if (s !== lastContiguous + 1) break;
    lastContiguous = s;
  }
  const files = [...byKey.values()].filter((h) => {
    if (h.segno <= lastContiguous) return true;
    skipped.push(`${h.name}: after missing segment ${segmentFileName(target, lastContiguous + 1, segSize)}`);
    return false;
  });

  // Copy into a temporary directory, then decode to the end and make it the stream.
  await mkdir(streamsDir, { recursive: true });
  const tmp = path.join(streamsDir, `.import-${stream}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { mode: 0o700 });
  try {
    for (const h of files) {
      await copyFile(path.join(walDir, h.name), path.join(tmp, h.name));
      await fsyncPath(path.join(tmp, h.name));
    }
    let historyFiles = 0;
    for (const e of history) {
      if (e.tli === 1) continue;
      const hname = histories.get(e.tli);
      if (!hname) throw new Error(`${walDir} lacks the history file ${historyFileName(e.tli)} of timeline ${e.tli}`);
      await copyFile(path.join(walDir, hname), path.join(tmp, hname));
      await fsyncPath(path.join(tmp, hname));
      historyFiles++;
    }
    const firstLsn = BigInt(segnos[0]!) * BigInt(segSize);
    const scan = await findEndOfWal(tmp, target, segSize, firstLsn, { search: true, systemId: first.systemId, pgVersion: first.pgVersion });
    if (scan.records === 0) throw new Error(`no valid WAL record in ${walDir}: ${scan.stopReason}`);
    const endLsn = scan.end;
    const tli = timelineOfLsn(history, endLsn === 0n ? 0n : endLsn - 1n);
    const store = await WalStore.open(tmp, segSize, tli);
    await store.truncate(endLsn);
    await writeControlFile(tmp, {
      systemId: first.systemId,
      pgVersion: first.pgVersion,
      segmentSize: segSize,
      tli,
      flushLsn: endLsn,
      commitLsn: endLsn,
      firstLsn,
      slots: {},
    });
    await rename(tmp, finalDir);
    await fsyncPath(streamsDir);
    return {
      stream,
      dir: finalDir,
      systemId: first.systemId,
      pgVersion: first.pgVersion,
      segmentSize: segSize,
      tli,
      firstLsn,
      endLsn,
      segments: store.list().length,
      historyFiles,
      stopReason: scan.stopReason,
      skipped,
    };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

