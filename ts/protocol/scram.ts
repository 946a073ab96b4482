/**
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL does it
 * (src/backend/libpq/auth-scram.c, src/interfaces/libpq/fe-auth-scram.c),
 * with node:crypto only.
 *
 * - Server side: `ScramServerSession`, fed the SASLInitialResponse and the
 *   SASLResponse; the error codes, messages and details are those of a
 *   PostgreSQL 15 server (checked against 15.18), all FATAL since an error
 *   during authentication ends the connection. No channel binding: we never
 *   offer SCRAM-SHA-256-PLUS (no TLS), so selecting it is 08P01 "client
 *   selected an invalid SASL authentication mechanism" and a `p=` gs2 flag is
 *   08P01 "malformed SCRAM message"; the `y` flag is accepted.
 *   A wrong proof is not an error here: clientFinal() returns
 *   `{ ok: false }` and the caller reports 28P01 "password authentication
 *   failed for user ..." as PostgreSQL does.
 * - Unknown users: `new ScramServerSession(null, { mockSeed })` runs the same
 *   exchange with a fake but stable salt (like PostgreSQL's scram_mock_salt)
 *   and always fails at the last step, so the exchange does not reveal
 *   whether the user exists. The salt is SHA-256 of the seed, so the seed
 *   must contain a secret (e.g. `${user}\0${persistent server secret}`);
 *   without one a per-process random seed is used.
 * - Client side: `ScramClientSession`, as libpq does it (empty user name in
 *   the exchange, gs2 header `n,,`), checking the server's signature.
 * - Passwords go through SASLprep (RFC 4013) exactly as PostgreSQL's
 *   pg_saslprep(): pure ASCII is used as is; otherwise the password is
 *   mapped (non-ASCII spaces → ' ', "mapped to nothing" removed),
 *   NFKC-normalised, and if it was not valid UTF-8, became empty, or contains
 *   prohibited, unassigned (Unicode 3.2) or badly mixed bidirectional
 *   characters, the raw bytes are used instead. (The stringprep tables are
 *   RFC 3454's; NFKC is String.prototype.normalize, which agrees with
 *   PostgreSQL's for every character assigned in Unicode 3.2 — the others
 *   make the raw bytes be used anyway.)
 */

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

import { PgError, SQLSTATE } from './errors.js';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
/** Key length of SHA-256. */
const KEY_LEN = 32;
/** PostgreSQL's defaults: scram_sha_256_iterations (4096), SCRAM_DEFAULT_SALT_LEN (16), SCRAM_RAW_NONCE_LEN (18). */
export const SCRAM_DEFAULT_ITERATIONS = 4096;
const SALT_LEN = 16;
const RAW_NONCE_LEN = 18;

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

// ---------------------------------------------------------------------------
// Primitives

function hmac(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer | string): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

function saltedPassword(password: string | Buffer, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(saslPrep(password), salt, iterations, KEY_LEN, 'sha256');
}

/**
 * Strict base64 (as pg_b64_decode: blanks are skipped, padding only at the
 * end, whole quanta). Returns null when the text is not base64.
 */
function b64decode(s: string): Buffer | null {
  const t = s.replace(/[ \t\n\r]/g, '');
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(t)) return null;
  return Buffer.from(t, 'base64');
}

/** RFC 5802 printable: %x21-2B / %x2D-7E (printable ASCII except ','). */
function isPrintable(s: string): boolean {
  return /^[\x21-\x2b\x2d-\x7e]*$/.test(s);
}

// ---------------------------------------------------------------------------
// SASLprep

/**
 * SASLprep (RFC 4013) with PostgreSQL's fallback: returns the prepared
 * password's UTF-8 bytes, or the raw bytes when SASLprep does not apply.
 */
export function saslPrep(password: string | Buffer): Buffer {
  const raw = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
  if (raw.every((b) => b < 0x80)) return raw;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    return raw; // not UTF-8
  }

  // 1) Map.
  const mapped: number[] = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (inTable(cp, NON_ASCII_SPACE)) mapped.push(0x20);
    else if (!inTable(cp, MAPPED_TO_NOTHING)) mapped.push(cp);
  }
  if (mapped.length === 0) return raw; // an empty password is not allowed
  // 3) Prohibit, 4) bidi — PostgreSQL checks the mapped input (before normalization).
  for (const cp of mapped) if (inTable(cp, PROHIBITED) || inTable(cp, UNASSIGNED)) return raw;
  if (mapped.some((cp) => inTable(cp, RAND_AL_CAT))) {
    if (mapped.some((cp) => inTable(cp, L_CAT))) return raw;
    if (!inTable(mapped[0]!, RAND_AL_CAT) || !inTable(mapped[mapped.length - 1]!, RAND_AL_CAT)) return raw;
  }
  // 2) Normalize.
  return Buffer.from(String.fromCodePoint(...mapped).normalize('NFKC'), 'utf8');
}

// ---------------------------------------------------------------------------
// Verifiers (pg_authid.rolpassword)

/** A verifier for `password`: PBKDF2-HMAC-SHA-256 with a random 16-byte salt and 4096 iterations unless given. */
export function makeVerifier(password: string, opts: { salt?: Buffer; iterations?: number } = {}): ScramVerifier {
  const iterations = opts.iterations ?? SCRAM_DEFAULT_ITERATIONS;
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > 0x7fff_ffff) {
    throw new RangeError(`SCRAM iteration count must be an integer in 1..2147483647, got ${iterations}`);
  }
  const salt = opts.salt ?? randomBytes(SALT_LEN);
  const sp = saltedPassword(password, salt, iterations);
  return {
    iterations,
    salt: Buffer.from(salt),
    storedKey: sha256(hmac(sp, 'Client Key')),
    serverKey: hmac(sp, 'Server Key'),
  };
}

/** PostgreSQL's format: `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`. */
export function formatVerifier(v: ScramVerifier): string {
  return `${SCRAM_SHA_256}$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

/** Parses a pg_authid SCRAM-SHA-256 secret; throws an Error saying what is wrong. */
export function parseVerifier(s: string): ScramVerifier {
  const bad = (why: string): Error => new Error(`invalid SCRAM-SHA-256 verifier: ${why}`);
  if (typeof s !== 'string') throw bad('not a string');
  const m = /^([^$]*)\$([^:$]*):([^$]*)\$([^:$]*):([^:$]*)$/.exec(s);
  if (!m) throw bad('expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>');
  const [, scheme, iter, salt64, stored64, server64] = m as unknown as [string, string, string, string, string, string];
  if (scheme !== SCRAM_SHA_256) throw bad(`unsupported scheme ${JSON.stringify(scheme.slice(0, 30))} (only ${SCRAM_SHA_256})`);
  if (!/^[0-9]+$/.test(iter)) throw bad(`iteration count ${JSON.stringify(iter.slice(0, 30))} is not a number`);
  const iterations = Number(iter);
  if (iterations < 1 || iterations > 0x7fff_ffff) throw bad(`iteration count ${iter} out of range`);
  const salt = b64decode(salt64);
  if (salt === null || salt.length === 0) throw bad('salt is not (non-empty) base64');
  const storedKey = b64decode(stored64);
  if (storedKey === null || storedKey.length !== KEY_LEN) throw bad(`StoredKey is not base64 of ${KEY_LEN} bytes`);
  const serverKey = b64decode(server64);
  if (serverKey === null || serverKey.length !== KEY_LEN) throw bad(`ServerKey is not base64 of ${KEY_LEN} bytes`);
  return { iterations, salt, storedKey, serverKey };
}

// ---------------------------------------------------------------------------
// Server

function fatal(code: string, message: string, detail?: string): PgError {
  return new PgError(code, message, detail === undefined ? { severity: 'FATAL' } : { severity: 'FATAL', detail });
}

function malformed(detail: string): PgError {
  return fatal(SQLSTATE.PROTOCOL_VIOLATION, 'malformed SCRAM message', detail);
}

/** sanitize_char(): a printable ASCII character in quotes, anything else in hex. */
function sanitizeChar(c: string | undefined): string {
  const code = c === undefined ? 0 : c.charCodeAt(0);
  return code >= 0x21 && code <= 0x7e ? `'${c}'` : `0x${code.toString(16).padStart(2, '0')}`;
}

/** A cursor over a SCRAM message, with auth-scram.c's read_attr_value / read_any_attr. */
class AttrReader {
  pos = 0;
  constructor(readonly s: string) {}

  /** The character at the cursor (undefined at the end, where C would see a NUL). */
  cur(): string | undefined {
    return this.s[this.pos];
  }

  atEnd(): boolean {
    return this.pos >= this.s.length;
  }

  private value(): string {
    const end = this.s.indexOf(',', this.pos);
    const v = end < 0 ? this.s.slice(this.pos) : this.s.slice(this.pos, end);
    this.pos = end < 0 ? this.s.length : end + 1;
    return v;
  }

  attr(attr: string): string {
    if (this.cur() !== attr) throw malformed(`Expected attribute "${attr}" but found "${sanitizeChar(this.cur())}".`);
    this.pos++;
    if (this.cur() !== '=') throw malformed(`Expected character "=" for attribute "${attr}".`);
    this.pos++;
    return this.value();
  }

  anyAttr(): [string, string] {
    const attr = this.cur();
    if (attr === undefined) throw malformed('Attribute expected, but found end of string.');
    if (!/^[A-Za-z]$/.test(attr)) throw malformed(`Attribute expected, but found invalid character "${sanitizeChar(attr)}".`);
    this.pos++;
    if (this.cur() !== '=') throw malformed(`Expected character "=" for attribute "${attr}".`);
    this.pos++;
    return [attr, this.value()];
  }
}

/** Checks an incoming SASL message as pg_be_scram_exchange does and returns it as a byte-preserving string. */
function messageText(data: Buffer): string {
  if (data.length === 0) throw malformed('The message is empty.');
  if (data.includes(0)) throw malformed('Message length does not match input length.');
  return data.toString('latin1');
}

/** Per-process seed for mock salts when the caller gives none (stable for the life of the process). */
const PROCESS_MOCK_SEED = randomBytes(32).toString('hex');

type ServerState = 'init' | 'salt_sent' | 'finished';

/**
 * One SCRAM-SHA-256 exchange on the server side. Call clientFirst() with
 * the SASLInitialResponse (mechanism, data) and send the result as
 * AuthenticationSASLContinue; call clientFinal() with the SASLResponse and,
 * when ok, send serverFinal as AuthenticationSASLFinal then AuthenticationOk.
 * Errors are thrown as FATAL PgErrors (with PostgreSQL's code, message and
 * detail).
 */
export class ScramServerSession {
  readonly mechanisms: string[] = [SCRAM_SHA_256];

  private readonly verifier: ScramVerifier;
  private readonly doomed: boolean;
  private readonly fixedServerNonce: string | undefined;
  private state: ServerState = 'init';
  private cbindFlag = '';
  private clientFirstBare = '';
  private clientNonce = '';
  private serverNonce = '';
  private serverFirst = '';

  /**
   * @param verifier the user's verifier, or null for an unknown user (or one
   *   without a SCRAM secret): the exchange then runs with a mock salt and
   *   fails at the end.
   * @param opts.mockSeed seed of the mock salt (should include a secret).
   * @param opts.serverNonce fixed server nonce (tests only; printable, no ',').
   */
  constructor(verifier: ScramVerifier | null, opts: { mockSeed?: string; serverNonce?: string } = {}) {
    if (opts.serverNonce !== undefined && (opts.serverNonce.length === 0 || !isPrintable(opts.serverNonce))) {
      throw new TypeError('serverNonce must be non-empty printable ASCII without ","');
    }
    this.fixedServerNonce = opts.serverNonce;
    if (verifier) {
      this.verifier = verifier;
      this.doomed = false;
    } else {
      const seed = opts.mockSeed ?? PROCESS_MOCK_SEED;
      this.verifier = {
        iterations: SCRAM_DEFAULT_ITERATIONS,
        salt: sha256(`walkeeper SCRAM mock salt\0${seed}`).subarray(0, SALT_LEN),
        storedKey: Buffer.alloc(KEY_LEN),
        serverKey: Buffer.alloc(KEY_LEN),
      };
      this.doomed = true;
    }
  }

  /**
   * The client's first message (SASLInitialResponse). Returns the
   * server-first-message. `data === null` (the client sent no initial
   * response, length -1) returns '' — an empty challenge, as PostgreSQL
   * does — and the client's next SASLResponse must be passed to
   * clientFirst() again.
   */
  clientFirst(mechanism: string, data: Buffer | null): string {
    if (this.state !== 'init') throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'invalid SCRAM exchange state');
    if (mechanism !== SCRAM_SHA_256) {
      throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'client selected an invalid SASL authentication mechanism');
    }
    if (data === null) return '';
    const r = new AttrReader(messageText(data));

    // gs2-cbind-flag: we never use channel binding.
    const flag = r.cur();
    switch (flag) {
      case 'n':
      case 'y':
        r.pos++;
        if (r.cur() !== ',') throw malformed(`Comma expected, but found character "${sanitizeChar(r.cur())}".`);
        r.pos++;
        break;
      case 'p':
        throw malformed(
          'The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.',
        );
      default:
        throw malformed(`Unexpected channel-binding flag "${sanitizeChar(flag)}".`);
    }
    this.cbindFlag = flag;
    if (r.cur() === 'a') throw fatal(SQLSTATE.FEATURE_NOT_SUPPORTED, 'client uses authorization identity, but it is not supported');
    if (r.cur() !== ',') throw malformed(`Unexpected attribute "${sanitizeChar(r.cur())}" in client-first-message.`);
    r.pos++;

    this.clientFirstBare = r.s.slice(r.pos);
    if (r.cur() === 'm') throw fatal(SQLSTATE.FEATURE_NOT_SUPPORTED, 'client requires an unsupported SCRAM extension');
    r.attr('n'); // the user name in the exchange is ignored: the startup packet's counts
    this.clientNonce = r.attr('r');
    if (!isPrintable(this.clientNonce)) throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'non-printable characters in SCRAM nonce');
    while (!r.atEnd()) r.anyAttr(); // extensions: ignored

    this.serverNonce = this.fixedServerNonce ?? randomBytes(RAW_NONCE_LEN).toString('base64');
    this.serverFirst = `r=${this.clientNonce}${this.serverNonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'salt_sent';
    return this.serverFirst;
  }

  /**
   * The client's final message (SASLResponse). `{ ok: true, serverFinal }`
   * when the proof is right; `{ ok: false }` when it is wrong or the user is
   * unknown (mock exchange). Malformed messages, a channel-binding attribute
   * other than biws/eSws (matching the gs2 flag) and a nonce mismatch throw.
   */
  clientFinal(data: Buffer): { ok: true; serverFinal: string } | { ok: false } {
    if (this.state !== 'salt_sent') throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'invalid SCRAM exchange state');
    this.state = 'finished';
    const r = new AttrReader(messageText(data));

    const cbind = r.attr('c');
    if (!(cbind === 'biws' && this.cbindFlag === 'n') && !(cbind === 'eSws' && this.cbindFlag === 'y')) {
      throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'unexpected SCRAM channel-binding attribute in client-final-message');
    }
    const finalNonce = r.attr('r');
    let proofAt: number;
    let proof64: string;
    for (;;) {
      proofAt = r.pos - 1; // the ',' before the attribute
      const [attr, value] = r.anyAttr();
      if (attr === 'p') {
        proof64 = value;
        break;
      }
    }
    const proof = b64decode(proof64);
    if (proof === null || proof.length !== KEY_LEN) throw malformed('Malformed proof in client-final-message.');
    if (!r.atEnd()) throw malformed('Garbage found at the end of client-final-message.');
    const clientFinalWithoutProof = r.s.slice(0, proofAt);

    if (finalNonce !== this.clientNonce + this.serverNonce) {
      throw fatal(SQLSTATE.PROTOCOL_VIOLATION, 'invalid SCRAM response', 'Nonce does not match.');
    }

    // Compute the proof even for a mock exchange, so timing does not tell.
    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirst},${clientFinalWithoutProof}`, 'latin1');
    const clientKey = xor(proof, hmac(this.verifier.storedKey, authMessage));
    const proofOk = timingSafeEqual(sha256(clientKey), this.verifier.storedKey);
    if (!proofOk || this.doomed) return { ok: false };
    return { ok: true, serverFinal: `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}` };
  }
}

// ---------------------------------------------------------------------------
// Client

/** saslname escaping of RFC 5802: '=' → '=3D', ',' → '=2C'. */
function saslName(s: string): string {
  return s.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** Reads `attr=value` at the start of `s` (libpq's read_attr_value); returns [value, rest]. */
function clientAttr(s: string, attr: string): [string, string] {
  if (!s.startsWith(`${attr}=`)) throw new Error(`malformed SCRAM message (attribute "${attr}" expected)`);
  const end = s.indexOf(',', 2);
  return end < 0 ? [s.slice(2), ''] : [s.slice(2, end), s.slice(end + 1)];
}

/**
 * The client side of SCRAM-SHA-256, as libpq does it: clientFirst() →
 * handleServerFirst() → verifyServerFinal(). Errors are plain Errors.
 */
export class ScramClientSession {
  private readonly password: string;
  private readonly nonce: string;
  private readonly clientFirstBare: string;
  private step: 'start' | 'first_sent' | 'final_sent' | 'done' = 'start';
  private expectedServerSignature: Buffer | null = null;

  /**
   * @param user the user name; libpq sends an empty one in the exchange (the
   *   server uses the startup packet's), so it is only sent when
   *   `opts.sendUsername` (e.g. for RFC test vectors).
   * @param nonce fixed client nonce (tests only); default 18 random bytes in base64.
   */
  constructor(user: string, password: string, nonce?: string, opts: { sendUsername?: boolean } = {}) {
    if (nonce !== undefined && (nonce.length === 0 || !isPrintable(nonce))) {
      throw new TypeError('nonce must be non-empty printable ASCII without ","');
    }
    this.password = password;
    this.nonce = nonce ?? randomBytes(RAW_NONCE_LEN).toString('base64');
    const name = opts.sendUsername ? saslName(saslPrep(user).toString('utf8')) : '';
    this.clientFirstBare = `n=${name},r=${this.nonce}`;
  }

  /** The client-first-message: `n,,n=,r=<nonce>`. */
  clientFirst(): string {
    if (this.step !== 'start') throw new Error('SCRAM client: clientFirst() called twice');
    this.step = 'first_sent';
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes the server-first-message; returns the client-final-message `c=biws,r=...,p=...`. */
  handleServerFirst(serverFirst: string): string {
    if (this.step !== 'first_sent') throw new Error('SCRAM client: unexpected server-first-message');
    this.step = 'final_sent';
    let rest = serverFirst;
    let nonce: string, salt64: string, iter: string;
    [nonce, rest] = clientAttr(rest, 'r');
    if (nonce.length <= this.nonce.length || !nonce.startsWith(this.nonce) || !isPrintable(nonce)) {
      throw new Error('invalid SCRAM response (nonce mismatch)');
    }
    [salt64, rest] = clientAttr(rest, 's');
    const salt = b64decode(salt64);
    if (salt === null) throw new Error('malformed SCRAM message (invalid salt)');
    [iter, rest] = clientAttr(rest, 'i');
    const iterations = /^[0-9]+$/.test(iter) ? Number(iter) : NaN;
    if (!(iterations >= 1 && iterations <= 0x7fff_ffff)) throw new Error('malformed SCRAM message (invalid iteration count)');
    if (rest !== '') throw new Error('malformed SCRAM message (garbage at end of server-first-message)');

    const sp = saltedPassword(this.password, salt, iterations);
    const clientKey = hmac(sp, 'Client Key');
    const storedKey = sha256(clientKey);
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = Buffer.from(`${this.clientFirstBare},${serverFirst},${withoutProof}`, 'utf8');
    const proof = xor(clientKey, hmac(storedKey, authMessage));
    this.expectedServerSignature = hmac(hmac(sp, 'Server Key'), authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks the server-final-message; throws when it carries an error (`e=`) or a wrong signature. */
  verifyServerFinal(serverFinal: string): void {
    if (this.step !== 'final_sent' || this.expectedServerSignature === null) {
      throw new Error('SCRAM client: unexpected server-final-message');
    }
    this.step = 'done';
    if (serverFinal.startsWith('e=')) {
      throw new Error(`error received from server in SCRAM exchange: ${clientAttr(serverFinal, 'e')[0]}`);
    }
    const [v64, rest] = clientAttr(serverFinal, 'v');
    const sig = b64decode(v64);
    if (sig === null || sig.length !== KEY_LEN) throw new Error('malformed SCRAM message (invalid server signature)');
    if (rest !== '') throw new Error('malformed SCRAM message (garbage at end of server-final-message)');
    if (!timingSafeEqual(sig, this.expectedServerSignature)) throw new Error('incorrect server signature');
  }
}

// ---------------------------------------------------------------------------
// RFC 3454 tables (stringprep), as [first, last] code point ranges

function ranges(spec: string): Uint32Array {
  const out: number[] = [];
  for (const item of spec.trim().split(/\s+/)) {
    const [a, b] = item.split('-');
    out.push(parseInt(a!, 16), parseInt(b ?? a!, 16));
  }
  return Uint32Array.from(out);
}

function inTable(cp: number, table: Uint32Array): boolean {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < table[mid * 2]!) hi = mid - 1;
    else if (cp > table[mid * 2 + 1]!) lo = mid + 1;
    else return true;
  }
  return false;
}

/** C.1.2 Non-ASCII space characters (mapped to U+0020). */
const NON_ASCII_SPACE = ranges(
  'A0 1680 2000-200B 202F 205F 3000 ' +
  '',
);
/** B.1 Commonly mapped to nothing. */
const MAPPED_TO_NOTHING = ranges(
  'AD 34F 1806 180B-180D 200B-200D 2060 FE00-FE0F FEFF ' +
  '',
);
/** SASLprep prohibited output: C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8, C.9. */
const PROHIBITED = ranges(
  '0-1F 7F-A0 340-341 6DD 70F 1680 180E 2000-200F 2028-202F 205F-2063 206A-206F 2FF0-2FFB 3000 ' +
  'D800-F8FF FDD0-FDEF FEFF FFF9-FFFF 1D173-1D17A 1FFFE-1FFFF 2FFFE-2FFFF 3FFFE-3FFFF 4FFFE-4FFFF ' +
  '5FFFE-5FFFF 6FFFE-6FFFF 7FFFE-7FFFF 8FFFE-8FFFF 9FFFE-9FFFF AFFFE-AFFFF BFFFE-BFFFF CFFFE-CFFFF ' +
  'DFFFE-DFFFF E0001 E0020-E007F EFFFE-10FFFF ' +
  '',
);
/** A.1 Unassigned code points in Unicode 3.2. */
const UNASSIGNED = ranges(
  '221 234-24F 2AE-2AF 2EF-2FF 350-35F 370-373 376-379 37B-37D 37F-383 38B 38D 3A2 3CF 3F7-3FF 487 4CF ' +
  '4F6-4F7 4FA-4FF 510-530 557-558 560 588 58B-590 5A2 5BA 5C5-5CF 5EB-5EF 5F5-60B 60D-61A 61C-61E 620 ' +
  '63B-63F 656-65F 6EE-6EF 6FF 70E 72D-72F 74B-77F 7B2-900 904 93A-93B 94E-94F 955-957 971-980 984 ' +
  '98D-98E 991-992 9A9 9B1 9B3-9B5 9BA-9BB 9BD 9C5-9C6 9C9-9CA 9CE-9D6 9D8-9DB 9DE 9E4-9E5 9FB-A01 ' +
  'A03-A04 A0B-A0E A11-A12 A29 A31 A34 A37 A3A-A3B A3D A43-A46 A49-A4A A4E-A58 A5D A5F-A65 A75-A80 A84 ' +
  'A8C A8E A92 AA9 AB1 AB4 ABA-ABB AC6 ACA ACE-ACF AD1-ADF AE1-AE5 AF0-B00 B04 B0D-B0E B11-B12 B29 B31 ' +
  'B34-B35 B3A-B3B B44-B46 B49-B4A B4E-B55 B58-B5B B5E B62-B65 B71-B81 B84 B8B-B8D B91 B96-B98 B9B B9D ' +
  'BA0-BA2 BA5-BA7 BAB-BAD BB6 BBA-BBD BC3-BC5 BC9 BCE-BD6 BD8-BE6 BF3-C00 C04 C0D C11 C29 C34 C3A-C3D ' +
  'C45 C49 C4E-C54 C57-C5F C62-C65 C70-C81 C84 C8D C91 CA9 CB4 CBA-CBD CC5 CC9 CCE-CD4 CD7-CDD CDF ' +
  'CE2-CE5 CF0-D01 D04 D0D D11 D29 D3A-D3D D44-D45 D49 D4E-D56 D58-D5F D62-D65 D70-D81 D84 D97-D99 DB2 ' +
  'DBC DBE-DBF DC7-DC9 DCB-DCE DD5 DD7 DE0-DF1 DF5-E00 E3B-E3E E5C-E80 E83 E85-E86 E89 E8B-E8C E8E-E93 ' +
  'E98 EA0 EA4 EA6 EA8-EA9 EAC EBA EBE-EBF EC5 EC7 ECE-ECF EDA-EDB EDE-EFF F48 F6B-F70 F8C-F8F F98 FBD ' +
  'FCD-FCE FD0-FFF 1022 1028 102B 1033-1035 103A-103F 105A-109F 10C6-10CF 10F9-10FA 10FC-10FF 115A-115E ' +
  '11A3-11A7 11FA-11FF 1207 1247 1249 124E-124F 1257 1259 125E-125F 1287 1289 128E-128F 12AF 12B1 ' +
  '12B6-12B7 12BF 12C1 12C6-12C7 12CF 12D7 12EF 130F 1311 1316-1317 131F 1347 135B-1360 137D-139F ' +
  '13F5-1400 1677-167F 169D-169F 16F1-16FF 170D 1715-171F 1737-173F 1754-175F 176D 1771 1774-177F ' +
  '17DD-17DF 17EA-17FF 180F 181A-181F 1878-187F 18AA-1DFF 1E9C-1E9F 1EFA-1EFF 1F16-1F17 1F1E-1F1F ' +
  '1F46-1F47 1F4E-1F4F 1F58 1F5A 1F5C 1F5E 1F7E-1F7F 1FB5 1FC5 1FD4-1FD5 1FDC 1FF0-1FF1 1FF5 1FFF ' +
  '2053-2056 2058-205E 2064-2069 2072-2073 208F-209F 20B2-20CF 20EB-20FF 213B-213C 214C-2152 2184-218F ' +
  '23CF-23FF 2427-243F 244B-245F 24FF 2614-2615 2618 267E-267F 268A-2700 2705 270A-270B 2728 274C 274E ' +
  '2753-2755 2757 275F-2760 2795-2797 27B0 27BF-27CF 27EC-27EF 2B00-2E7F 2E9A 2EF4-2EFF 2FD6-2FEF ' +
  '2FFC-2FFF 3040 3097-3098 3100-3104 312D-3130 318F 31B8-31EF 321D-321F 3244-3250 327C-327E 32CC-32CF ' +
  '32FF 3377-337A 33DE-33DF 33FF 4DB6-4DFF 9FA6-9FFF A48D-A48F A4C7-ABFF D7A4-D7FF FA2E-FA2F FA6B-FAFF ' +
  'FB07-FB12 FB18-FB1C FB37 FB3D FB3F FB42 FB45 FBB2-FBD2 FD40-FD4F FD90-FD91 FDC8-FDCF FDFD-FDFF ' +
  'FE10-FE1F FE24-FE2F FE47-FE48 FE53 FE67 FE6C-FE6F FE75 FEFD-FEFE FF00 FFBF-FFC1 FFC8-FFC9 FFD0-FFD1 ' +
  'FFD8-FFD9 FFDD-FFDF FFE7 FFEF-FFF8 10000-102FF 1031F 10324-1032F 1034B-103FF 10426-10427 1044E-1CFFF ' +
  '1D0F6-1D0FF 1D127-1D129 1D1DE-1D3FF 1D455 1D49D 1D4A0-1D4A1 1D4A3-1D4A4 1D4A7-1D4A8 1D4AD 1D4BA ' +
  '1D4BC 1D4C1 1D4C4 1D506 1D50B-1D50C 1D515 1D51D 1D53A 1D53F 1D545 1D547-1D549 1D551 1D6A4-1D6A7 ' +
  '1D7CA-1D7CD 1D800-1FFFD 2A6D7-2F7FF 2FA1E-2FFFD 30000-3FFFD 40000-4FFFD 50000-5FFFD 60000-6FFFD ' +
  '70000-7FFFD 80000-8FFFD 90000-9FFFD A0000-AFFFD B0000-BFFFD C0000-CFFFD D0000-DFFFD E0000 ' +
  'E0002-E001F E0080-EFFFD ' +
  '',
);
/** D.1 Characters with bidirectional property R or AL. */
const RAND_AL_CAT = ranges(
  '5BE 5C0 5C3 5D0-5EA 5F0-5F4 61B 61F 621-63A 640-64A 66D-66F 671-6D5 6DD 6E5-6E6 6FA-6FE 700-70D 710 ' +
  '712-72C 780-7A5 7B1 200F FB1D FB1F-FB28 FB2A-FB36 FB38-FB3C FB3E FB40-FB41 FB43-FB44 FB46-FBB1 ' +
  'FBD3-FD3D FD50-FD8F FD92-FDC7 FDF0-FDFC FE70-FE74 FE76-FEFC ' +
  '',
);
/** D.2 Characters with bidirectional property L. */
const L_CAT = ranges(
  '41-5A 61-7A AA B5 BA C0-D6 D8-F6 F8-220 222-233 250-2AD 2B0-2B8 2BB-2C1 2D0-2D1 2E0-2E4 2EE 37A 386 ' +
  '388-38A 38C 38E-3A1 3A3-3CE 3D0-3F5 400-482 48A-4CE 4D0-4F5 4F8-4F9 500-50F 531-556 559-55F 561-587 ' +
  '589 903 905-939 93D-940 949-94C 950 958-961 964-970 982-983 985-98C 98F-990 993-9A8 9AA-9B0 9B2 ' +
  '9B6-9B9 9BE-9C0 9C7-9C8 9CB-9CC 9D7 9DC-9DD 9DF-9E1 9E6-9F1 9F4-9FA A05-A0A A0F-A10 A13-A28 A2A-A30 ' +
  'A32-A33 A35-A36 A38-A39 A3E-A40 A59-A5C A5E A66-A6F A72-A74 A83 A85-A8B A8D A8F-A91 A93-AA8 AAA-AB0 ' +
  'AB2-AB3 AB5-AB9 ABD-AC0 AC9 ACB-ACC AD0 AE0 AE6-AEF B02-B03 B05-B0C B0F-B10 B13-B28 B2A-B30 B32-B33 ' +
  'B36-B39 B3D-B3E B40 B47-B48 B4B-B4C B57 B5C-B5D B5F-B61 B66-B70 B83 B85-B8A B8E-B90 B92-B95 B99-B9A ' +
  'B9C B9E-B9F BA3-BA4 BA8-BAA BAE-BB5 BB7-BB9 BBE-BBF BC1-BC2 BC6-BC8 BCA-BCC BD7 BE7-BF2 C01-C03 ' +
  'C05-C0C C0E-C10 C12-C28 C2A-C33 C35-C39 C41-C44 C60-C61 C66-C6F C82-C83 C85-C8C C8E-C90 C92-CA8 ' +
  'CAA-CB3 CB5-CB9 CBE CC0-CC4 CC7-CC8 CCA-CCB CD5-CD6 CDE CE0-CE1 CE6-CEF D02-D03 D05-D0C D0E-D10 ' +
  'D12-D28 D2A-D39 D3E-D40 D46-D48 D4A-D4C D57 D60-D61 D66-D6F D82-D83 D85-D96 D9A-DB1 DB3-DBB DBD ' +
  'DC0-DC6 DCF-DD1 DD8-DDF DF2-DF4 E01-E30 E32-E33 E40-E46 E4F-E5B E81-E82 E84 E87-E88 E8A E8D E94-E97 ' +
  'E99-E9F EA1-EA3 EA5 EA7 EAA-EAB EAD-EB0 EB2-EB3 EBD EC0-EC4 EC6 ED0-ED9 EDC-EDD F00-F17 F1A-F34 F36 ' +
  'F38 F3E-F47 F49-F6A F7F F85 F88-F8B FBE-FC5 FC7-FCC FCF 1000-1021 1023-1027 1029-102A 102C 1031 1038 ' +
  '1040-1057 10A0-10C5 10D0-10F8 10FB 1100-1159 115F-11A2 11A8-11F9 1200-1206 1208-1246 1248 124A-124D ' +
  '1250-1256 1258 125A-125D 1260-1286 1288 128A-128D 1290-12AE 12B0 12B2-12B5 12B8-12BE 12C0 12C2-12C5 ' +
  '12C8-12CE 12D0-12D6 12D8-12EE 12F0-130E 1310 1312-1315 1318-131E 1320-1346 1348-135A 1361-137C ' +
  '13A0-13F4 1401-1676 1681-169A 16A0-16F0 1700-170C 170E-1711 1720-1731 1735-1736 1740-1751 1760-176C ' +
  '176E-1770 1780-17B6 17BE-17C5 17C7-17C8 17D4-17DA 17DC 17E0-17E9 1810-1819 1820-1877 1880-18A8 ' +
  '1E00-1E9B 1EA0-1EF9 1F00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D ' +
  '1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB 1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 200E ' +
  '2071 207F 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D 212F-2131 2133-2139 213D-213F ' +
  '2145-2149 2160-2183 2336-237A 2395 249C-24E9 3005-3007 3021-3029 3031-3035 3038-303C 3041-3096 ' +
  '309D-309F 30A1-30FA 30FC-30FF 3105-312C 3131-318E 3190-31B7 31F0-321C 3220-3243 3260-327B 327F-32B0 ' +
  '32C0-32CB 32D0-32FE 3300-3376 337B-33DD 33E0-33FE 3400-4DB5 4E00-9FA5 A000-A48C AC00-D7A3 D800-FA2D ' +
  'FA30-FA6A FB00-FB06 FB13-FB17 FF21-FF3A FF41-FF5A FF66-FFBE FFC2-FFC7 FFCA-FFCF FFD2-FFD7 FFDA-FFDC ' +
  '10300-1031E 10320-10323 10330-1034A 10400-10425 10428-1044D 1D000-1D0F5 1D100-1D126 1D12A-1D166 ' +
  '1D16A-1D172 1D183-1D184 1D18C-1D1A9 1D1AE-1D1DD 1D400-1D454 1D456-1D49C 1D49E-1D49F 1D4A2 ' +
  '1D4A5-1D4A6 1D4A9-1D4AC 1D4AE-1D4B9 1D4BB 1D4BD-1D4C0 1D4C2-1D4C3 1D4C5-1D505 1D507-1D50A ' +
  '1D50D-1D514 1D516-1D51C 1D51E-1D539 1D53B-1D53E 1D540-1D544 1D546 1D54A-1D550 1D552-1D6A3 ' +
  '1D6A8-1D7C9 20000-2A6D6 2F800-2FA1D F0000-FFFFD 100000-10FFFD ' +
  '',
);
