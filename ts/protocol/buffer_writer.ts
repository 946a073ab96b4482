/**
 * A growable big-endian byte writer for building protocol messages, in the
 * style of pg-protocol's Writer: append fields, then `flush(code)` returns
 * one complete message (type byte, int32 length that counts itself, body)
 * and resets the writer for the next one.
 *
 *   new Writer().cstring('server_version').cstring('15.4').flush('S')
 */

const HEADER = 5; // room for the type byte and the int32 length

export class Writer {
  private buf: Buffer;
  private off = HEADER;

  constructor(initialSize = 256) {
    this.buf = Buffer.allocUnsafe(Math.max(initialSize, 16));
  }

  /** Bytes written since the last flush (the body so far). */
  get length(): number {
    return this.off - HEADER;
  }

  private ensure(n: number): void {
    const need = this.off + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length;
    while (size < need) size = size + (size >> 1) + n;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.off);
    this.buf = next;
  }

  /** One byte; accepts -128..255. */
  int8(n: number): this {
    this.ensure(1);
    this.buf[this.off++] = n & 0xff;
    return this;
  }

  /** Two bytes; accepts -32768..65535. */
  int16(n: number): this {
    this.ensure(2);
    this.buf[this.off++] = (n >>> 8) & 0xff;
    this.buf[this.off++] = n & 0xff;
    return this;
  }

  int32(n: number): this {
    this.ensure(4);
    this.off = this.buf.writeInt32BE(n, this.off);
    return this;
  }

  uint32(n: number): this {
    this.ensure(4);
    this.off = this.buf.writeUInt32BE(n, this.off);
    return this;
  }

  int64(n: bigint): this {
    this.ensure(8);
    this.off = this.buf.writeBigInt64BE(n, this.off);
    return this;
  }

  uint64(n: bigint): this {
    this.ensure(8);
    this.off = this.buf.writeBigUInt64BE(n, this.off);
    return this;
  }

  /** UTF-8 text followed by a NUL. Text containing a NUL cannot be sent as a C string and throws. */
  cstring(s: string): this {
    if (s.includes('\0')) throw new TypeError(`string ${JSON.stringify(s.slice(0, 40))} contains a NUL byte`);
    const len = Buffer.byteLength(s, 'utf8');
    this.ensure(len + 1);
    this.off += this.buf.write(s, this.off, len, 'utf8');
    this.buf[this.off++] = 0;
    return this;
  }

  /** UTF-8 text without a terminator. */
  string(s: string): this {
    const len = Buffer.byteLength(s, 'utf8');
    this.ensure(len);
    this.off += this.buf.write(s, this.off, len, 'utf8');
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.off);
    this.off += b.length;
    return this;
  }

  /**
   * Returns the message written so far and resets the writer. With `code`
   * (one ASCII character): code byte + int32 length + body; without it (the
   * untyped startup-phase packets): int32 length + body. The length counts
   * itself but not the code byte. The result is a fresh Buffer of exactly
   * the message's size.
   */
  flush(code?: string): Buffer {
    const bodyLen = this.off - HEADER;
    this.buf.writeInt32BE(bodyLen + 4, 1);
    let out: Buffer;
    if (code !== undefined) {
      if (code.length !== 1 || code.charCodeAt(0) > 0x7f) throw new TypeError(`message code must be one ASCII character, got ${JSON.stringify(code)}`);
      this.buf[0] = code.charCodeAt(0);
      out = Buffer.allocUnsafe(this.off);
      this.buf.copy(out, 0, 0, this.off);
    } else {
      out = Buffer.allocUnsafe(this.off - 1);
      this.buf.copy(out, 0, 1, this.off);
    }
    this.off = HEADER;
    return out;
  }

  /** Drops whatever was written since the last flush. */
  reset(): this {
    this.off = HEADER;
    return this;
  }
}
