/**
 * Protocol messages as plain data. The parser (parser.ts) produces these;
 * the serializer (serializer.ts) writes the same shapes from arguments.
 * Buffers in messages are views into the received bytes, not copies.
 */

/** Codes of the untyped first message (int32 length, int32 code). */
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** Protocol 3.0 = (3 << 16) | 0. */
export const PROTOCOL_3_0 = 196608;

/** The first message a client sends on a connection (and again after an SSL/GSS refusal). */
export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; key: number }
  | { kind: 'startup'; major: number; minor: number; params: Record<string, string> }
  /** Any other code, including protocol versions other than 3.0 (`code` = major << 16 | minor). */
  | { kind: 'unsupported'; code: number };

/** A typed message as framed, before decoding: `code` is the type byte (e.g. 0x64 for 'd'). */
export interface RawMessage {
  code: number;
  payload: Buffer;
}

// ---------------------------------------------------------------- frontend

/**
 * Client → server, after startup. 'p' carries a password, a
 * SASLInitialResponse or a SASLResponse; which one depends on the
 * authentication exchange, so it is left raw (see parsePasswordMessage /
 * parseSASLInitialResponse in parser.ts).
 */
export type FrontendMessage =
  | { type: 'query'; sql: string }
  | { type: 'password'; payload: Buffer }
  | { type: 'copyData'; data: Buffer }
  | { type: 'copyDone' }
  | { type: 'copyFail'; message: string }
  | { type: 'terminate' }
  /** Any other type byte (Parse, Bind, Sync, ...): `code` is the character. */
  | { type: 'other'; code: string; payload: Buffer };

// ----------------------------------------------------------------- backend

export interface FieldDescription {
  name: string;
  tableOid: number;
  columnAttr: number;
  typeOid: number;
  typeLen: number;
  typeMod: number;
  /** 0 text, 1 binary. */
  format: number;
}

/** ErrorResponse / NoticeResponse body: every field by its one-letter code, plus the common ones by name. */
export interface NoticeFields {
  /** All fields, keyed by their code letter (S, V, C, M, D, H, P, W, F, L, R, ...). */
  fields: Record<string, string>;
  /** V (non-localized) when present, else S. */
  severity: string;
  /** C, the SQLSTATE. */
  code: string;
  /** M. */
  message: string;
  /** D. */
  detail: string | undefined;
  /** H. */
  hint: string | undefined;
}

export type CopyResponseType = 'copyBothResponse' | 'copyInResponse' | 'copyOutResponse';

/** Server → client. */
export type BackendMessage =
  | { type: 'authenticationOk' }
  | { type: 'authenticationCleartextPassword' }
  | { type: 'authenticationMD5Password'; salt: Buffer }
  | { type: 'authenticationSASL'; mechanisms: string[] }
  | { type: 'authenticationSASLContinue'; data: Buffer }
  | { type: 'authenticationSASLFinal'; data: Buffer }
  /** Other methods (KerberosV5 2, SCM 6, GSS 7, GSSContinue 8, SSPI 9). */
  | { type: 'authenticationOther'; method: number; data: Buffer }
  | { type: 'parameterStatus'; name: string; value: string }
  | { type: 'backendKeyData'; pid: number; key: number }
  /** status: 'I' idle, 'T' in a transaction, 'E' in a failed transaction. */
  | { type: 'readyForQuery'; status: string }
  | { type: 'rowDescription'; fields: FieldDescription[] }
  | { type: 'dataRow'; values: (Buffer | null)[] }
  | { type: 'commandComplete'; tag: string }
  | { type: 'emptyQuery' }
  | ({ type: 'errorResponse' } & NoticeFields)
  | ({ type: 'noticeResponse' } & NoticeFields)
  | { type: CopyResponseType; format: number; columnFormats: number[] }
  | { type: 'copyData'; data: Buffer }
  | { type: 'copyDone' }
  /** Anything else (NotificationResponse, NegotiateProtocolVersion, ...): `code` is the character. */
  | { type: 'other'; code: string; payload: Buffer };

export type BackendMessageType = BackendMessage['type'];
