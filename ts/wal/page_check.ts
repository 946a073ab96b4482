/**
 * Checks WAL arriving from an upstream before any of it is written: every
 * page header that starts inside a received message must be the page it
 * claims to be (magic of the stream's PostgreSQL version, pageaddr equal to
 * its position, a long header exactly at segment starts naming our system
 * id and segment size, a timeline no later than the one streamed; or, inside
 * a segment, an all-zero page, which is how PostgreSQL 14+ pads a segment
 * after XLOG_SWITCH). A header
 * split across two messages is checked once its second part arrives.
 * Records are not decoded here: the upstream's own CRCs are checked by the
 * end-of-WAL scan at start-up and by every standby that replays them.
 */
import { formatLsn, type Lsn } from '../lsn.js';

const MAGIC_OF_VERSION: Record<number, number> = { 15: 0xd110, 16: 0xd113, 17: 0xd116 };
const PAGE = 8192;
const SHORT = 24;
const LONG = 40;

export function magicForVersion(pgVersion: number): number | undefined {
  return MAGIC_OF_VERSION[pgVersion];
}

export class PageHeaderCheck {
  private readonly magic: number;
  /** A page header cut by the end of the previous message: its bytes so far and its position. */
  private partial: { at: Lsn; bytes: Buffer } | null = null;

  constructor(
    private readonly segmentSize: number,
    private readonly systemId: bigint,
    pgVersion: number,
    /** The timeline being streamed: no page may claim a later one. */
    private tli: number,
  ) {
    const m = magicForVersion(pgVersion);
    if (m === undefined) throw new Error(`PostgreSQL ${pgVersion} WAL is not supported (15, 16 and 17 are)`);
    this.magic = m;
  }

  setTimeline(tli: number): void {
    this.tli = tli;
  }

  /** Forgets a pending partial header (after a reconnect, data restarts elsewhere). */
  reset(): void {
    this.partial = null;
  }

  /** Returns null when `data` (WAL from `start`) is acceptable, else why not. Keeps state for the next call. */
  check(start: Lsn, data: Buffer): string | null {
    let off = 0;
    if (this.partial) {
      const p = this.partial;
      const need = this.headerSize(p.at) - p.bytes.length;
      const take = Math.min(need, data.length);
      const bytes = Buffer.concat([p.bytes, data.subarray(0, take)]);
      if (bytes.length < this.headerSize(p.at)) {
        this.partial = { at: p.at, bytes };
        return null;
      }
      const err = this.checkHeader(p.at, bytes);
      if (err) return err;
      this.partial = null;
      off = take;
    }
    // The first page boundary at or after start+off.
    const pos = start + BigInt(off);
    const rem = Number(pos % BigInt(PAGE));
    let next = rem === 0 ? off : off + (PAGE - rem);
    while (next < data.length) {
      const at = start + BigInt(next);
      const size = this.headerSize(at);
      if (next + size > data.length) {
        this.partial = { at, bytes: Buffer.from(data.subarray(next)) };
        return null;
      }
      const err = this.checkHeader(at, data.subarray(next, next + size));
      if (err) return err;
      next += PAGE;
    }
    return null;
  }

  private headerSize(at: Lsn): number {
    return at % BigInt(this.segmentSize) === 0n ? LONG : SHORT;
  }

  private checkHeader(at: Lsn, h: Buffer): string | null {
    // Runs for every page streamed: the message is only built for a failure.
    const where = (): string => `WAL page at ${formatLsn(at)}`;
    const magic = h.readUInt16LE(0);
    if (magic !== this.magic) {
      // After an XLOG_SWITCH, PostgreSQL 14+ fills the rest of the segment
      // with all-zero pages, headers included. A segment's first page always
      // has a real (long) header.
      if (h.length === SHORT && at % BigInt(this.segmentSize) !== 0n && h.every((b) => b === 0)) return null;
      return `${where()} has magic ${magic.toString(16).toUpperCase()}, expected ${this.magic.toString(16).toUpperCase()}`;
    }
    const info = h.readUInt16LE(2);
    if (info & ~0x000f) return `${where()} has invalid info bits ${info.toString(16).toUpperCase()}`;
    const long = (info & 0x0002) !== 0;
    const segStart = at % BigInt(this.segmentSize) === 0n;
    if (long !== segStart) return segStart ? `${where()} starts a segment but has no long header` : `${where()} has an unexpected long header`;
    const tli = h.readUInt32LE(4);
    if (tli === 0 || tli > this.tli) return `${where()} claims timeline ${tli}, streaming timeline ${this.tli}`;
    const pageaddr = h.readBigUInt64LE(8);
    if (pageaddr !== at) return `${where()} has pageaddr ${formatLsn(pageaddr)}`;
    if (long) {
      const sysid = h.readBigUInt64LE(24);
      if (sysid !== this.systemId) return `${where()} is from database system ${sysid}, this stream's is ${this.systemId}`;
      const seg = h.readUInt32LE(32);
      if (seg !== this.segmentSize) return `${where()} says segments are ${seg} bytes, this stream's are ${this.segmentSize}`;
      const blck = h.readUInt32LE(36);
      if (blck !== PAGE) return `${where()} has block size ${blck}`;
    }
    return null;
  }
}
