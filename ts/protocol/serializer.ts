/**
 * Message encoders for both directions. Every function returns one
 * complete message as a fresh Buffer.
 *
 *   socket.write(backend.readyForQuery())           // 5a 00 00 00 05 49
 *   socket.write(frontend.query('IDENTIFY_SYSTEM'))
 */

import { Writer } from './buffer_writer.js';
import type { PgError } from './errors.js';
import { CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE } from './messages.js';

const writer = new Writer(1024);
/** The shared writer, emptied (a previous encode may have thrown half-way). */
const w = (): Writer => writer.reset();

/** Fields of an ErrorResponse / NoticeResponse. */
export interface ErrorFields {
  severity: string;
  code: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
}

/** A column of a RowDescription. tableOid, columnAttr and format default to 0. */
export interface FieldSpec {
  name: string;
  typeOid: number;
  typeLen: number;
  typeMod: number;
  tableOid?: number;
  columnAttr?: number;
  format?: number;
}

function asBuffer(data: string | Uint8Array): Buffer {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
}

function noticeBody(e: PgError | ErrorFields): Writer {
  w().int8(0x53).cstring(e.severity); // S
  writer.int8(0x56).cstring(e.severity); // V
  writer.int8(0x43).cstring(e.code); // C
  writer.int8(0x4d).cstring(e.message); // M
  if (e.detail !== undefined) writer.int8(0x44).cstring(e.detail); // D
  if (e.hint !== undefined) writer.int8(0x48).cstring(e.hint); // H
  return writer.int8(0);
}

/** 'd' + int32 + payload, with one allocation and one copy. */
function copyDataMessage(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + payload.length);
  out[0] = 0x64;
  out.writeInt32BE(4 + payload.length, 1);
  out.set(payload, 5);
  return out;
}

const COPY_DONE = Buffer.from([0x63, 0, 0, 0, 4]);

function fixed(bytes: number[]): () => Buffer {
  const b = Buffer.from(bytes);
  return () => Buffer.from(b);
}

/** Server → client messages. */
export const backend = {
  authenticationOk: fixed([0x52, 0, 0, 0, 8, 0, 0, 0, 0]),

  authenticationCleartextPassword: fixed([0x52, 0, 0, 0, 8, 0, 0, 0, 3]),

  /** `salt`: 4 bytes. */
  authenticationMD5Password(salt: Uint8Array): Buffer {
    if (salt.length !== 4) throw new RangeError(`MD5 salt must be 4 bytes, got ${salt.length}`);
    return w().int32(5).bytes(salt).flush('R');
  },

  authenticationSASL(mechanisms: string[]): Buffer {
    w().int32(10);
    for (const m of mechanisms) writer.cstring(m);
    return writer.int8(0).flush('R');
  },

  authenticationSASLContinue(data: string | Uint8Array): Buffer {
    return w().int32(11).bytes(asBuffer(data)).flush('R');
  },

  authenticationSASLFinal(data: string | Uint8Array): Buffer {
    return w().int32(12).bytes(asBuffer(data)).flush('R');
  },

  parameterStatus(name: string, value: string): Buffer {
    return w().cstring(name).cstring(value).flush('S');
  },

  backendKeyData(pid: number, key: number): Buffer {
    return w().int32(pid).int32(key).flush('K');
  },

  /** 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block. */
  readyForQuery(status: 'I' | 'T' | 'E' = 'I'): Buffer {
    return w().string(status).flush('Z');
  },

  /** Table OID and attribute number 0 and text format unless given. */
  rowDescription(fields: FieldSpec[]): Buffer {
    w().int16(fields.length);
    for (const f of fields) {
      writer
        .cstring(f.name)
        .int32(f.tableOid ?? 0)
        .int16(f.columnAttr ?? 0)
        .int32(f.typeOid)
        .int16(f.typeLen)
        .int32(f.typeMod)
        .int16(f.format ?? 0);
    }
    return writer.flush('T');
  },

  /** Strings are sent as UTF-8, null as length -1. */
  dataRow(values: (string | Uint8Array | null)[]): Buffer {
    w().int16(values.length);
    for (const v of values) {
      if (v === null) {
        writer.int32(-1);
      } else if (typeof v === 'string') {
        writer.int32(Buffer.byteLength(v, 'utf8')).string(v);
      } else {
        writer.int32(v.length).bytes(v);
      }
    }
    return writer.flush('D');
  },

  commandComplete(tag: string): Buffer {
    return w().cstring(tag).flush('C');
  },

  emptyQueryResponse: fixed([0x49, 0, 0, 0, 4]),

  /** Fields S, V (= S), C, M, then D and H when present, then the terminating NUL. */
  errorResponse(err: PgError | ErrorFields): Buffer {
    return noticeBody(err).flush('E');
  },

  noticeResponse(notice: PgError | ErrorFields): Buffer {
    return noticeBody(notice).flush('N');
  },

  /** Overall format 0 (text), 0 columns: 'W' 00 00 00 07 00 00 00, as a walsender sends it. */
  copyBothResponse: fixed([0x57, 0, 0, 0, 7, 0, 0, 0]),

  copyData(payload: Uint8Array): Buffer {
    return copyDataMessage(payload);
  },

  copyDone(): Buffer {
    return Buffer.from(COPY_DONE);
  },

  /** The one-byte answer to SSLRequest / GSSENCRequest: 'N' (refuse) or 'S' (accept). */
  sslResponse(byte: 'N' | 'S' | 'G'): Buffer {
    return Buffer.from(byte, 'latin1');
  },
};

/** Client → server messages. */
export const frontend = {
  /** StartupMessage for protocol 3.0 with these parameters (user, database, replication, ...). */
  startup(params: Record<string, string>): Buffer {
    w().int32(PROTOCOL_3_0);
    for (const [k, v] of Object.entries(params)) writer.cstring(k).cstring(v);
    return writer.int8(0).flush();
  },

  sslRequest(): Buffer {
    return w().int32(SSL_REQUEST_CODE).flush();
  },

  gssencRequest(): Buffer {
    return w().int32(GSSENC_REQUEST_CODE).flush();
  },

  cancelRequest(pid: number, key: number): Buffer {
    return w().int32(CANCEL_REQUEST_CODE).int32(pid).int32(key).flush();
  },

  query(sql: string): Buffer {
    return w().cstring(sql).flush('Q');
  },

  /** PasswordMessage: a cleartext password, or "md5…" for MD5. */
  password(pw: string): Buffer {
    return w().cstring(pw).flush('p');
  },

  /** SASLInitialResponse: mechanism, int32 length of data (-1 = none), data. */
  saslInitialResponse(mechanism: string, data: string | Uint8Array | null): Buffer {
    w().cstring(mechanism);
    if (data === null) writer.int32(-1);
    else {
      const b = asBuffer(data);
      writer.int32(b.length).bytes(b);
    }
    return writer.flush('p');
  },

  /** SASLResponse: the raw data. */
  saslResponse(data: string | Uint8Array): Buffer {
    return w().bytes(asBuffer(data)).flush('p');
  },

  copyData(payload: Uint8Array): Buffer {
    return copyDataMessage(payload);
  },

  copyDone(): Buffer {
    return Buffer.from(COPY_DONE);
  },

  copyFail(message: string): Buffer {
    return w().cstring(message).flush('f');
  },

  terminate: fixed([0x58, 0, 0, 0, 4]),
};
