/**
 * The stream's commit_lsn file (`commit_lsn` beside the control file): what
 * DurableCommit writes before a new commit_lsn is published. One small
 * O_DSYNC write per value, on the thread pool; the control file's atomic
 * replace costs three fsyncs and would compete with the WAL's own.
 *
 * Two 512-byte slots, written in turn, each with a sequence number and a
 * CRC-32: a write torn by a crash spoils at most the slot being written,
 * and the other one still holds the value before it (which nobody had been
 * told yet the new one). Reading takes the valid slot with the higher
 * sequence.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';

import { syncDir } from '../durable_file.js';
import type { Lsn } from '../lsn.js';

export const COMMIT_FILE_NAME = 'commit_lsn';
const SLOT = 512;
const MAGIC = 0x4c434b57; // "WKCL"

/** Fills `b` (20 bytes) with one slot's content. */
function encode(b: Buffer, seq: number, lsn: Lsn): Buffer {
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(seq >>> 0, 4);
  b.writeBigUInt64LE(lsn, 8);
  b.writeUInt32LE(crc32(b.subarray(0, 16)), 16);
  return b;
}

function decode(b: Buffer): { seq: number; lsn: Lsn } | null {
  if (b.length < 20 || b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(16) !== crc32(b.subarray(0, 16))) return null;
  return { seq: b.readUInt32LE(4), lsn: b.readBigUInt64LE(8) };
}

/** Newer of two sequence numbers, across the wrap. */
function newer(a: number, b: number): boolean {
  return ((a - b) >>> 0) < 0x80000000 && a !== b;
}

export class CommitFile {
  /** Open while values are being written; closed after IDLE_CLOSE_MS without one. */
  private fh: FileHandle | null = null;
  private idle: NodeJS.Timeout | null = null;
  /** One slot's bytes, reused: DurableCommit has one write in flight at a time. */
  private readonly slot = Buffer.alloc(20);

  private constructor(
    private readonly file: string,
    private seq: number,
    readonly initial: Lsn | null,
  ) {}

  /** Reads the file in `dir` (creating it); `initial` is the value found, null when none. */
  static async open(dir: string): Promise<CommitFile> {
    const file = path.join(dir, COMMIT_FILE_NAME);
    const fh = await open(file, constants.O_RDWR | constants.O_CREAT, 0o600);
    const buf = Buffer.alloc(2 * SLOT);
    let bytesRead: number;
    try {
      ({ bytesRead } = await fh.read(buf, 0, buf.length, 0));
    } finally {
      await fh.close();
    }
    // A new (or empty) file: its name must survive a crash before any value written into it counts.
    if (bytesRead === 0) await syncDir(dir);
    let best: { seq: number; lsn: Lsn } | null = null;
    for (const off of [0, SLOT]) {
      if (bytesRead < off + 20) continue;
      const v = decode(buf.subarray(off, off + 20));
      if (v && (best === null || newer(v.seq, best.seq))) best = v;
    }
    return new CommitFile(file, best?.seq ?? 0, best?.lsn ?? null);
  }

  /**
   * Writes `lsn` durably into the older slot. The file is open with
   * O_DSYNC, so the write returns once the data is on stable storage: one
   * thread-pool hop per value, where write + fdatasync would be two (each
   * also a wake-up of the JavaScript thread, on the path from a peer's
   * flush to a client's WAL). It stays open while values keep coming and
   * is closed after a few idle seconds: a node with a thousand idle
   * streams does not hold a thousand more descriptors.
   */
  async write(lsn: Lsn): Promise<void> {
    const seq = (this.seq + 1) >>> 0;
    if (this.idle) clearTimeout(this.idle);
    this.fh ??= await open(this.file, constants.O_RDWR | constants.O_DSYNC);
    await this.fh.write(encode(this.slot, seq, lsn), 0, 20, (seq % 2) * SLOT);
    this.seq = seq;
    this.idle = setTimeout(() => void this.close(), IDLE_CLOSE_MS).unref();
  }

  async close(): Promise<void> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

const IDLE_CLOSE_MS = 5000;
