/**
 * Streaming framers: feed them socket chunks (split anywhere) with
 * `push()`, take complete messages with `next()` (decoded) or `nextRaw()`
 * (type byte + payload view, for hot paths). Returned Buffers are views into
 * received bytes; the framer never writes over bytes it has handed out, so
 * they stay valid for as long as the caller keeps them.
 *
 *   ServerFramer: what a server reads: the untyped startup packet(s)
 *                 (`nextStartup()`), then typed frontend messages (`next()`).
 *   ClientFramer: what a client reads: typed backend messages.
 */

import { Reader } from './buffer_reader.js';
import { PgError, ProtocolError, type Severity } from './errors.js';
import {
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
  type BackendMessage,
  type FieldDescription,
  type FrontendMessage,
  type NoticeFields,
  type RawMessage,
  type StartupPacket,
} from './messages.js';

const EMPTY = Buffer.alloc(0);
const MIN_ALLOC = 16 * 1024;

/** Startup packet length limits (the length field included), as PostgreSQL's MAX_STARTUP_PACKET_LENGTH. */
export const MIN_STARTUP_PACKET_LENGTH = 8;
export const MAX_STARTUP_PACKET_LENGTH = 10000;
/** libpq's limit for backend messages other than d D T E N A V (payload bytes). */
export const CLIENT_SMALL_MESSAGE_LIMIT = 30000;

const char = (code: number): string => String.fromCharCode(code);

/** Buffering shared by both framers. */
abstract class Framer {
  protected buf: Buffer = EMPTY;
  protected start = 0;
  protected end = 0;
  /** Total size of the incomplete message at `start`, when its header has been seen (sizes the next allocation). */
  protected want = 0;

  /**
   * Received bytes that follow `buf[start, end)`, kept as the caller's view
   * until the message before them is taken (see push).
   */
  private rest: Buffer | null = null;

  /** Bytes received and not yet returned as messages. */
  get buffered(): number {
    return this.end - this.start + (this.rest?.length ?? 0);
  }

  /**
   * Set when chunks come from reads into memory that is never written twice
   * (the client's slabs). Then a message split across two reads that landed
   * next to each other is framed as one view of that memory, not copied.
   */
  slabReads = false;
  /** The contiguous run of memory the last pushed chunks were read into (slabReads only). */
  private runBuffer: ArrayBufferLike | null = null;
  private runStart = 0;
  private runEnd = 0;

  /**
   * Takes every byte received and not yet returned as a message (a copy),
   * leaving the framer empty: for handing the rest of a stream to another
   * reader (the receive pump).
   */
  takeAll(): Buffer {
    const out = Buffer.concat([this.buf.subarray(this.start, this.end), ...(this.rest ? [this.rest] : [])]);
    this.buf = EMPTY;
    this.start = 0;
    this.end = 0;
    this.want = 0;
    this.rest = null;
    this.runBuffer = null;
    return out;
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    if (n === 0) return;
    const pending = this.buffered;
    let widen = false;
    if (this.slabReads) {
      if (chunk.buffer === this.runBuffer && chunk.byteOffset === this.runEnd) {
        // The pending bytes are the tail of what was pushed, so when the run
        // holds them they sit right before this chunk.
        widen = chunk.byteOffset - pending >= this.runStart;
        this.runEnd += n;
      } else {
        this.runBuffer = chunk.buffer;
        this.runStart = chunk.byteOffset;
        this.runEnd = chunk.byteOffset + n;
      }
    }
    if (pending === 0) {
      // Nothing pending: use the chunk as is (no copy).
      this.buf = chunk;
      this.start = 0;
      this.end = n;
      return;
    }
    if (widen) {
      this.buf = Buffer.from(chunk.buffer, chunk.byteOffset - pending, pending + n);
      this.start = 0;
      this.end = pending + n;
      this.rest = null;
      return;
    }
    if (this.rest !== null) {
      // Only while the reader is paused: fold the kept view in.
      const r = this.rest;
      this.rest = null;
      this.append(r);
    }
    const need = this.want - (this.end - this.start);
    if (need > 0 && need < n) {
      // The chunk completes the pending message and goes on: copy only that
      // message's missing bytes; the rest stays a view of the chunk. (A read
      // that fills a whole fresh slab would otherwise be copied in full.)
      const msg = Buffer.allocUnsafe(this.want);
      this.buf.copy(msg, 0, this.start, this.end);
      chunk.copy(msg, this.end - this.start, 0, need);
      this.buf = msg;
      this.start = 0;
      this.end = this.want;
      this.rest = chunk.subarray(need);
      return;
    }
    this.append(chunk);
  }

  /** Appends a copy of `chunk` to the pending bytes. */
  private append(chunk: Buffer): void {
    const n = chunk.length;
    const pending = this.end - this.start;
    if (this.buf.length - this.end >= n) {
      // Room after `end` in a buffer we allocated: never handed out, safe to fill.
      chunk.copy(this.buf, this.end);
      this.end += n;
      return;
    }
    const next = Buffer.allocUnsafe(Math.max(pending + n, this.want, MIN_ALLOC, pending * 2));
    this.buf.copy(next, 0, this.start, this.end);
    chunk.copy(next, pending);
    this.buf = next;
    this.start = 0;
    this.end = pending + n;
  }

  /** Typed framing: code byte, int32 length (>= 4, counts itself), payload. */
  protected frame(limit: (code: number, len: number) => void): RawMessage | null {
    const pending = this.end - this.start;
    if (pending < 5) return null;
    const code = this.buf[this.start]!;
    const len = this.buf.readInt32BE(this.start + 1);
    limit(code, len);
    if (pending < len + 1) {
      this.want = len + 1;
      return null;
    }
    const msg = this.takeFrame(len + 1);
    return { code, payload: msg.subarray(5) };
  }

  protected takeFrame(total: number): Buffer {
    const buf = this.buf;
    const at = this.start;
    this.start = at + total;
    this.want = 0;
    if (this.start === this.end) {
      if (this.rest !== null) {
        this.buf = this.rest;
        this.end = this.rest.length;
        this.rest = null;
      } else {
        // Everything consumed: forget the buffer so the next chunk is used without copying.
        this.buf = EMPTY;
        this.end = 0;
      }
      this.start = 0;
    }
    return buf.subarray(at, at + total);
  }
}

export interface ServerFramerOptions {
  /** Largest accepted length field of a typed message. Default 1 MiB. */
  maxMessageSize?: number;
}

/** The server side of a connection: parses what a client sends. */
export class ServerFramer extends Framer {
  readonly maxMessageSize: number;

  constructor(opts: ServerFramerOptions = {}) {
    super();
    this.maxMessageSize = opts.maxMessageSize ?? 1024 * 1024;
  }

  /**
   * The untyped first message (int32 length, int32 code, ...): SSLRequest,
   * GSSENCRequest, CancelRequest or StartupMessage. Null until complete.
   */
  nextStartup(): StartupPacket | null {
    const body = this.nextStartupRaw();
    return body === null ? null : parseStartupPacket(body);
  }

  /** The untyped first message without its length field (code first), or null until complete. */
  nextStartupRaw(): Buffer | null {
    const pending = this.end - this.start;
    if (pending < 4) return null;
    const len = this.buf.readInt32BE(this.start);
    if (len < MIN_STARTUP_PACKET_LENGTH || len > MAX_STARTUP_PACKET_LENGTH) throw new ProtocolError('invalid length of startup packet');
    if (pending < len) {
      this.want = len;
      return null;
    }
    return this.takeFrame(len).subarray(4);
  }

  /** The next typed message, decoded; null until one is complete. */
  next(): FrontendMessage | null {
    const m = this.nextRaw();
    return m === null ? null : parseFrontendMessage(m.code, m.payload);
  }

  /** The next typed message as type byte + payload; null until one is complete. */
  nextRaw(): RawMessage | null {
    return this.frame(this.checkLength);
  }

  private readonly checkLength = (_code: number, len: number): void => {
    if (len < 4 || len > this.maxMessageSize) throw new ProtocolError('invalid message length');
  };
}

/** Message types libpq accepts above 30000 bytes. */
const LONG_TYPES = new Uint8Array(256);
for (const c of 'dDTENAV') LONG_TYPES[c.charCodeAt(0)] = 1;

export interface ClientFramerOptions {
  /** Largest payload accepted for d D T E N A V messages. Default 1 GiB (PostgreSQL's MaxAllocSize). */
  maxLongMessageSize?: number;
}

/** The client side of a connection: parses what a server sends. */
export class ClientFramer extends Framer {
  readonly maxLongMessageSize: number;

  constructor(opts: ClientFramerOptions = {}) {
    super();
    this.maxLongMessageSize = opts.maxLongMessageSize ?? 0x3fffffff;
  }

  next(): BackendMessage | null {
    const m = this.nextRaw();
    return m === null ? null : parseBackendMessage(m.code, m.payload);
  }

  nextRaw(): RawMessage | null {
    return this.frame(this.checkLength);
  }

  private readonly checkLength = (code: number, len: number): void => {
    if (len < 4) throw new ProtocolError(`invalid message length ${len} for message type '${char(code)}'`);
    const payload = len - 4;
    if (LONG_TYPES[code] === 1) {
      if (payload > this.maxLongMessageSize) {
        throw new ProtocolError(`message type '${char(code)}' too long: ${payload} bytes (limit ${this.maxLongMessageSize})`);
      }
    } else if (payload > CLIENT_SMALL_MESSAGE_LIMIT) {
      throw new ProtocolError(`message type '${char(code)}' too long: ${payload} bytes (limit ${CLIENT_SMALL_MESSAGE_LIMIT})`);
    }
  };
}

// ------------------------------------------------------------------ decoding

function defineParam(params: Record<string, string>, key: string, value: string): void {
  // defineProperty: a key like "__proto__" becomes a plain own property.
  Object.defineProperty(params, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Decodes an untyped first message; `body` starts at the int32 code (the length field removed). */
export function parseStartupPacket(body: Buffer): StartupPacket {
  const r = new Reader(body);
  const code = r.int32('startup packet code');
  switch (code) {
    case SSL_REQUEST_CODE:
      if (body.length !== 4) throw new ProtocolError('invalid length of SSL request packet');
      return { kind: 'ssl' };
    case GSSENC_REQUEST_CODE:
      if (body.length !== 4) throw new ProtocolError('invalid length of GSSENC request packet');
      return { kind: 'gssenc' };
    case CANCEL_REQUEST_CODE: {
      if (body.length !== 12) throw new ProtocolError('invalid length of cancel request packet');
      const pid = r.int32('cancel request pid');
      const key = r.int32('cancel request key');
      return { kind: 'cancel', pid, key };
    }
    case PROTOCOL_3_0: {
      if (body[body.length - 1] !== 0) throw new ProtocolError('invalid startup packet layout: expected terminator as last byte');
      const params: Record<string, string> = {};
      for (;;) {
        const key = r.cstring('startup parameter name');
        if (key === '') break;
        const value = r.cstring(`value of startup parameter "${key}"`);
        if (Object.prototype.hasOwnProperty.call(params, key)) throw new ProtocolError(`duplicate startup parameter "${key}"`);
        defineParam(params, key, value);
      }
      if (r.remaining !== 0) throw new ProtocolError('invalid startup packet layout: expected terminator as last byte');
      return { kind: 'startup', major: code >>> 16, minor: code & 0xffff, params };
    }
    default:
      return { kind: 'unsupported', code };
  }
}

/** Decodes a typed client → server message. */
export function parseFrontendMessage(code: number, payload: Buffer): FrontendMessage {
  switch (code) {
    case 0x51: {
      // Q
      const r = new Reader(payload);
      const sql = r.cstring('query string');
      r.end('Query message');
      return { type: 'query', sql };
    }
    case 0x70: // p
      return { type: 'password', payload };
    case 0x64: // d
      return { type: 'copyData', data: payload };
    case 0x63: // c (PostgreSQL ignores any body)
      return { type: 'copyDone' };
    case 0x66: {
      // f
      const r = new Reader(payload);
      const message = r.cstring('CopyFail message');
      r.end('CopyFail message');
      return { type: 'copyFail', message };
    }
    case 0x58: // X (PostgreSQL ignores any body)
      return { type: 'terminate' };
    default:
      return { type: 'other', code: char(code), payload };
  }
}

/** A PasswordMessage ('p' in answer to cleartext or MD5 authentication): the password text. */
export function parsePasswordMessage(payload: Buffer): string {
  const r = new Reader(payload);
  const pw = r.cstring('password');
  r.end('password packet');
  return pw;
}

/** A SASLInitialResponse ('p' in answer to AuthenticationSASL). `data` null when the length is -1. */
export function parseSASLInitialResponse(payload: Buffer): { mechanism: string; data: Buffer | null } {
  const r = new Reader(payload);
  const mechanism = r.cstring('SASL mechanism name');
  const len = r.int32('SASL initial response length');
  let data: Buffer | null = null;
  if (len !== -1) {
    if (len < 0) throw new ProtocolError(`invalid SASL initial response length ${len}`);
    data = r.bytes(len, 'SASL initial response');
  }
  r.end('SASL initial response');
  return { mechanism, data };
}

function noticeFields(r: Reader): NoticeFields {
  const fields: Record<string, string> = {};
  for (;;) {
    const f = r.uint8('error field type');
    if (f === 0) break;
    fields[char(f)] = r.cstring(`error field '${char(f)}'`);
  }
  return {
    fields,
    severity: fields.V ?? fields.S ?? '',
    code: fields.C ?? '',
    message: fields.M ?? '',
    detail: fields.D,
    hint: fields.H,
  };
}

/** Decodes the fields of an ErrorResponse / NoticeResponse payload. */
export function parseNoticeFields(payload: Buffer): NoticeFields {
  const r = new Reader(payload);
  const f = noticeFields(r);
  r.end('error response');
  return f;
}

/** A PgError carrying an ErrorResponse's severity, SQLSTATE, message, detail and hint. */
export function errorFromNotice(n: NoticeFields): PgError {
  return new PgError(n.code || 'XX000', n.message, {
    severity: (n.severity || 'ERROR') as Severity,
    detail: n.detail,
    hint: n.hint,
  });
}

/** Decodes a typed server → client message. */
export function parseBackendMessage(code: number, payload: Buffer): BackendMessage {
  const r = new Reader(payload);
  let m: BackendMessage;
  switch (code) {
    case 0x64: // d
      return { type: 'copyData', data: payload };
    case 0x44: {
      // D
      const n = r.int16('DataRow column count');
      const values: (Buffer | null)[] = new Array(n);
      for (let i = 0; i < n; i++) {
        const len = r.int32('DataRow value length');
        values[i] = len === -1 ? null : r.bytes(len, 'DataRow value');
      }
      m = { type: 'dataRow', values };
      break;
    }
    case 0x52: {
      // R
      const method = r.int32('authentication request code');
      switch (method) {
        case 0:
          m = { type: 'authenticationOk' };
          break;
        case 3:
          m = { type: 'authenticationCleartextPassword' };
          break;
        case 5:
          m = { type: 'authenticationMD5Password', salt: r.bytes(4, 'MD5 salt') };
          break;
        case 10: {
          const mechanisms: string[] = [];
          for (;;) {
            const mech = r.cstring('SASL mechanism name');
            if (mech === '') break;
            mechanisms.push(mech);
          }
          m = { type: 'authenticationSASL', mechanisms };
          break;
        }
        case 11:
          m = { type: 'authenticationSASLContinue', data: r.rest() };
          break;
        case 12:
          m = { type: 'authenticationSASLFinal', data: r.rest() };
          break;
        default:
          m = { type: 'authenticationOther', method, data: r.rest() };
      }
      break;
    }
    case 0x53: {
      // S
      const name = r.cstring('parameter name');
      const value = r.cstring('parameter value');
      m = { type: 'parameterStatus', name, value };
      break;
    }
    case 0x4b: {
      // K
      const pid = r.int32('backend pid');
      const key = r.int32('backend key');
      m = { type: 'backendKeyData', pid, key };
      break;
    }
    case 0x5a: // Z
      m = { type: 'readyForQuery', status: char(r.uint8('transaction status')) };
      break;
    case 0x54: {
      // T
      const n = r.int16('RowDescription field count');
      const fields: FieldDescription[] = new Array(n);
      for (let i = 0; i < n; i++) {
        fields[i] = {
          name: r.cstring('field name'),
          tableOid: r.uint32('table OID'),
          columnAttr: r.int16('column attribute number'),
          typeOid: r.uint32('type OID'),
          typeLen: r.int16('type length'),
          typeMod: r.int32('type modifier'),
          format: r.int16('format code'),
        };
      }
      m = { type: 'rowDescription', fields };
      break;
    }
    case 0x43: // C
      m = { type: 'commandComplete', tag: r.cstring('command tag') };
      break;
    case 0x49: // I
      m = { type: 'emptyQuery' };
      break;
    case 0x45: // E
      m = { type: 'errorResponse', ...noticeFields(r) };
      break;
    case 0x4e: // N
      m = { type: 'noticeResponse', ...noticeFields(r) };
      break;
    case 0x57: // W
    case 0x47: // G
    case 0x48: {
      // H
      const format = r.int8('copy format');
      const n = r.int16('copy column count');
      const columnFormats: number[] = new Array(n);
      for (let i = 0; i < n; i++) columnFormats[i] = r.int16('copy column format');
      m = { type: code === 0x57 ? 'copyBothResponse' : code === 0x47 ? 'copyInResponse' : 'copyOutResponse', format, columnFormats };
      break;
    }
    case 0x63: // c
      m = { type: 'copyDone' };
      break;
    default:
      return { type: 'other', code: char(code), payload };
  }
  if (r.remaining !== 0) throw new ProtocolError(`message contents do not agree with length in message type '${char(code)}'`);
  return m;
}
