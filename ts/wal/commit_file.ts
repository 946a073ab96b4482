/**
 * The stream's commit_lsn file (`commit_lsn` beside the control file): what
 * DurableCommit writes before a new commit_lsn is published. One small
 * write and an fdatasync per value, on the thread pool; the control file's
 * atomic replace costs three fsyncs and would compete with the WAL's own.
 *
 * Two 512-byte slots, written in turn, each with a sequence number and a
 * CRC-32: a write torn by a crash spoils at most the slot being written,
 * and the other one still holds the value before it (which nobody had been
 * told yet the new one). Reading takes the valid slot with the higher
 * sequence.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';

import type { Lsn } from '../lsn.js';

export const COMMIT_FILE_NAME = 'commit_lsn';
const SLOT = 512;
const MAGIC = 0x4c434b57; // "WKCL"

function encode(seq: number, lsn: Lsn): Buffer {
  const b = Buffer.alloc(20);
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
    let best: { seq: number; lsn: Lsn } | null = null;
    for (const off of [0, SLOT]) {
      if (bytesRead < off + 20) continue;
      const v = decode(buf.subarray(off, off + 20));
      if (v && (best === null || newer(v.seq, best.seq))) best = v;
    }
    return new CommitFile(file, best?.seq ?? 0, best?.lsn ?? null);
  }

  /**
   * Writes `lsn` durably: one write into the older slot, then fdatasync.
   * The file is opened for each write rather than held: a node with a
   * thousand idle streams should not hold a thousand more descriptors.
   */
  async write(lsn: Lsn): Promise<void> {
    const seq = (this.seq + 1) >>> 0;
    const fh = await open(this.file, constants.O_RDWR);
    try {
      await fh.write(encode(seq, lsn), 0, 20, (seq % 2) * SLOT);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    this.seq = seq;
  }
}
