/**
 * A big-endian cursor over one message body. Every read checks the bounds:
 * reading past the end throws a ProtocolError naming what was being read
 * (`what`, optional on each method), so a truncated message from a peer
 * becomes a clean FATAL 08P01 instead of a RangeError or garbage.
 *
 * `bytes()` and `rest()` return views into the underlying buffer (no copy).
 */

import { ProtocolError } from './errors.js';

export class Reader {
  /** Current position in `buf`. */
  offset: number;

  constructor(
    readonly buf: Buffer,
    offset = 0,
  ) {
    if (offset < 0 || offset > buf.length) throw new RangeError(`Reader offset ${offset} outside 0..${buf.length}`);
    this.offset = offset;
  }

  /** Bytes left to read. */
  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number, what: string): number {
    const at = this.offset;
    if (this.buf.length - at < n) {
      throw new ProtocolError(`message truncated while reading ${what}: needed ${n} bytes at offset ${at}, ${this.buf.length - at} left`);
    }
    this.offset = at + n;
    return at;
  }

  uint8(what = 'uint8'): number {
    return this.buf[this.need(1, what)]!;
  }

  int8(what = 'int8'): number {
    return this.buf.readInt8(this.need(1, what));
  }

  int16(what = 'int16'): number {
    return this.buf.readInt16BE(this.need(2, what));
  }

  int32(what = 'int32'): number {
    return this.buf.readInt32BE(this.need(4, what));
  }

  uint32(what = 'uint32'): number {
    return this.buf.readUInt32BE(this.need(4, what));
  }

  int64(what = 'int64'): bigint {
    return this.buf.readBigInt64BE(this.need(8, what));
  }

  uint64(what = 'uint64'): bigint {
    return this.buf.readBigUInt64BE(this.need(8, what));
  }

  /** A NUL-terminated UTF-8 string (the NUL is consumed, not returned). */
  cstring(what = 'string'): string {
    const at = this.offset;
    const nul = this.buf.indexOf(0, at);
    if (nul < 0) throw new ProtocolError(`message truncated while reading ${what}: no string terminator after offset ${at}`);
    this.offset = nul + 1;
    return this.buf.toString('utf8', at, nul);
  }

  /** `n` bytes (a view, not a copy). */
  bytes(n: number, what = 'bytes'): Buffer {
    if (n < 0 || !Number.isInteger(n)) throw new ProtocolError(`invalid length ${n} for ${what}`);
    const at = this.need(n, what);
    return this.buf.subarray(at, at + n);
  }

  /** Everything that is left (a view, not a copy). */
  rest(): Buffer {
    const at = this.offset;
    this.offset = this.buf.length;
    return this.buf.subarray(at);
  }

  /** Throws unless every byte was consumed (PostgreSQL's "invalid message format" check). */
  end(what = 'message'): void {
    if (this.offset !== this.buf.length) {
      throw new ProtocolError(`invalid ${what} format: ${this.buf.length - this.offset} unexpected bytes after offset ${this.offset}`);
    }
  }
}
