/**
 * The server half of a PostgreSQL connection: everything before the first
 * query (SSL/GSS negotiation, cancel requests, the startup packet,
 * authentication, ParameterStatus/BackendKeyData/ReadyForQuery) and then a
 * queue of frontend messages for whoever handles the session.
 *
 * The order of steps follows PostgreSQL's postmaster and backend startup,
 * because libpq checks it: a refused SSLRequest is answered with one 'N'
 * byte and the client continues on the same socket; protocol versions other
 * than 3.x are refused with FATAL 0A000; a failed password is FATAL 28P01.
 */
import { randomInt } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';

import { PgError, ProtocolError, SQLSTATE } from '../protocol/errors.js';
import type { FrontendMessage, StartupPacket } from '../protocol/messages.js';
import { parseSASLInitialResponse, ServerFramer } from '../protocol/parser.js';
import { ScramServerSession, type ScramVerifier } from '../protocol/scram.js';
import { backend } from '../protocol/serializer.js';
import { Writer } from '../protocol/buffer_writer.js';

export type AuthMethod = 'trust' | 'scram' | 'loopback-trust';

export interface AuthConfig {
  /** loopback-trust: trust connections from 127.0.0.0/8 and ::1, SCRAM from anywhere else. */
  method: AuthMethod;
  /** SCRAM verifiers by user name. */
  users: ReadonlyMap<string, ScramVerifier>;
}

export interface StartupInfo {
  params: Record<string, string>;
  user: string;
  applicationName: string;
  /** Remote address as host:port. */
  address: string;
  /** `-c name=value` / `--name=value` settings from the startup `options` parameter. */
  options: Record<string, string>;
  tls: boolean;
}

export interface ServerConnectionOptions {
  tls: tls.SecureContext | null;
  auth: AuthConfig;
  /**
   * Called once the client is authenticated: returns the ParameterStatus
   * values to report, or throws a PgError (sent as FATAL) to refuse.
   */
  accept(startup: StartupInfo): Record<string, string>;
  /** A CancelRequest for a (pid, key) pair. */
  cancel(pid: number, key: number): void;
  /** Largest frontend message accepted after startup. */
  maxMessageSize?: number;
  /**
   * A persistent server secret mixed into the fake SCRAM salt of unknown
   * users (PostgreSQL's mock_authentication_nonce), so that a client cannot
   * tell an unknown user from a wrong password.
   */
  mockSecret?: Buffer;
}

/** Splits a startup `options` value the way PostgreSQL's pg_split_opts does (whitespace, backslash escapes). */
export function splitOptions(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) out.push(cur);
  return out;
}

/** `-c a=b`, `-ca=b` and `--a=b` settings from a startup options string. */
export function parseStartupOptions(text: string): Record<string, string> {
  const words = splitOptions(text);
  const out: Record<string, string> = {};
  for (let i = 0; i < words.length; i++) {
    let w = words[i]!;
    if (w === '-c') w = words[++i] ?? '';
    else if (w.startsWith('-c')) w = w.slice(2);
    else if (w.startsWith('--')) w = w.slice(2);
    else throw new PgError(SQLSTATE.PROTOCOL_VIOLATION, `invalid command-line argument for server process: ${w}`, { severity: 'FATAL', hint: 'Use -c name=value.' });
    const eq = w.indexOf('=');
    if (eq <= 0) throw new PgError(SQLSTATE.SYNTAX_ERROR, `-c ${w} requires a value`, { severity: 'FATAL' });
    out[w.slice(0, eq).replace(/-/g, '_').toLowerCase()] = w.slice(eq + 1);
  }
  return out;
}

export function isLoopback(addr: string | undefined): boolean {
  if (!addr) return false;
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

let nextPid = 1 + randomInt(100_000);

export class ServerConnection {
  /** Identifies the session in BackendKeyData and cancel requests. */
  readonly pid = nextPid++;
  readonly key = randomInt(0x7fffffff);
  private framer: ServerFramer;
  /** Resolves the reader waiting for more bytes (or for the end). */
  private wake: (() => void) | null = null;
  private ended = false;
  private failure: Error | null = null;
  private raw: net.Socket;
  socket: net.Socket | tls.TLSSocket;
  startup: StartupInfo | null = null;
  /** Set once the connection is closed (by either side). */
  readonly closed: Promise<void>;
  private markClosed!: () => void;

  constructor(socket: net.Socket, private readonly opts: ServerConnectionOptions) {
    this.raw = socket;
    this.socket = socket;
    this.framer = new ServerFramer({ maxMessageSize: opts.maxMessageSize ?? 1 << 20 });
    this.closed = new Promise((r) => (this.markClosed = r));
    socket.setNoDelay(true);
    this.attach(socket);
  }

  get remoteAddress(): string {
    const a = this.raw.remoteAddress ?? 'unknown';
    return `${a.includes(':') ? `[${a}]` : a}:${this.raw.remotePort ?? 0}`;
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private onData = (chunk: Buffer) => {
    this.framer.push(chunk);
    this.wakeReader();
  };

  private wakeReader(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private waitData(): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve) => (this.wake = resolve));
  }

  private attach(s: net.Socket | tls.TLSSocket): void {
    s.on('data', this.onData);
    s.on('error', (err) => {
      this.failure ??= err;
      this.finish();
    });
    s.on('close', () => this.finish());
    s.on('end', () => this.finish());
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.socket.destroy();
    this.raw.destroy();
    this.wakeReader();
    const w = this.flushedWaiter;
    this.flushedWaiter = null;
    w?.();
    this.markClosed();
  }

  /**
   * The next frontend message after startup; null once the connection is
   * gone or broke the protocol; undefined when `interruptRead` stopped the
   * wait (no message is lost: messages are only taken out synchronously).
   */
  async nextMessage(): Promise<FrontendMessage | null | undefined> {
    for (;;) {
      let m: FrontendMessage | null;
      try {
        m = this.framer.next();
      } catch (err) {
        this.protocolFailure(err as Error);
        return null;
      }
      if (m) return m;
      if (this.ended) return null;
      await this.waitData();
      if (this.interrupted) {
        this.interrupted = false;
        return undefined;
      }
    }
  }

  private interrupted = false;

  /** Makes a pending `nextMessage` return undefined (used when a COPY ends from the server side). */
  interruptRead(): void {
    if (!this.wake) return;
    this.interrupted = true;
    this.wakeReader();
  }

  private protocolFailure(err: Error): void {
    const e = err instanceof PgError ? err : new ProtocolError(err.message);
    this.fatal(e);
  }

  write(buf: Buffer, cb?: (err?: Error | null) => void): boolean {
    if (this.ended) {
      cb?.(new Error('connection closed'));
      return false;
    }
    if (this.writesLent) {
      this.held.push([buf, cb]);
      return true;
    }
    this.inflight++;
    return this.socket.write(buf, (err) => {
      this.inflight--;
      cb?.(err);
      if (this.inflight === 0) {
        const w = this.flushedWaiter;
        this.flushedWaiter = null;
        w?.();
      }
    });
  }

  // --- lending the socket's write side ------------------------------------

  /** Writes handed to the socket whose callback has not run yet. */
  private inflight = 0;
  private flushedWaiter: (() => void) | null = null;
  private writesLent = false;
  /** Writes made while lent, in order, for returnWrites(). */
  private held: Array<[Buffer, ((err?: Error | null) => void) | undefined]> = [];
  private closeHeld = false;

  /**
   * Lends the write side of the socket to a writer on another thread (the
   * send pump) once everything written so far has reached the kernel, so
   * that bytes cannot interleave: until returnWrites(), write() holds
   * messages back (and close() waits) instead of writing. Reading goes on.
   * Returns the descriptor, or null where none can be lent (TLS, Windows,
   * a closed connection).
   */
  async lendWrites(): Promise<number | null> {
    while (this.inflight > 0 && !this.ended) await new Promise<void>((resolve) => (this.flushedWaiter = resolve));
    if (this.ended || this.writesLent || this.socket !== this.raw || this.raw.writableLength > 0) return null;
    const fd = (this.raw as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return null;
    this.writesLent = true;
    return fd;
  }

  /**
   * Ends lendWrites(). `tail` — the rest of a message the other writer could
   * not finish — goes out first (`cb` when the kernel took it), then what was
   * written meanwhile.
   */
  returnWrites(tail?: Buffer, cb?: (err?: Error | null) => void): void {
    this.writesLent = false;
    if (tail) this.write(tail, cb);
    else cb?.();
    const held = this.held;
    this.held = [];
    for (const [b, hcb] of held) this.write(b, hcb);
    if (this.closeHeld) {
      this.closeHeld = false;
      this.close();
    }
  }

  /** Sends an ErrorResponse; a FATAL one also closes the connection, as a backend exiting would. */
  sendError(err: PgError): void {
    this.write(backend.errorResponse(err));
    if (err.severity === 'FATAL' || err.severity === 'PANIC') this.close();
  }

  fatal(err: PgError): void {
    this.sendError(new PgError(err.code, err.message, { severity: 'FATAL', detail: err.detail, hint: err.hint }));
  }

  /** Flushes what was written, then closes. */
  close(): void {
    if (this.ended) return;
    if (this.writesLent) {
      this.closeHeld = true;
      return;
    }
    this.socket.end(() => this.finish());
    setTimeout(() => this.finish(), 2000).unref();
  }

  // --- startup ------------------------------------------------------------

  private async nextStartupPacket(): Promise<StartupPacket | null> {
    for (;;) {
      const p = this.framer.nextStartup();
      if (p) return p;
      if (this.ended) return null;
      await this.waitData();
    }
  }

  private async nextAuthMessage(): Promise<FrontendMessage | null> {
    for (;;) {
      const m = this.framer.next();
      if (m) return m;
      if (this.ended) return null;
      await this.waitData();
    }
  }

  /**
   * Runs the startup phase. Resolves with the session's startup info once
   * ReadyForQuery was sent, or null when the connection ended without a
   * session (a cancel request, a refusal, the client going away).
   */
  async handshake(): Promise<StartupInfo | null> {
    try {
      return await this.handshakeInner();
    } catch (err) {
      const e = err instanceof PgError ? err : new ProtocolError((err as Error).message);
      this.refusal = e;
      this.fatal(e);
      return null;
    }
  }

  /** Why the handshake refused the client, when it did. */
  refusal: PgError | null = null;

  /** What the client sent in its startup packet, once it did (for logs about refused clients). */
  startupParams: Record<string, string> | null = null;

  private async handshakeInner(): Promise<StartupInfo | null> {
    let sslDone = false;
    let gssDone = false;
    for (;;) {
      const p = await this.nextStartupPacket();
      if (!p) return null;
      switch (p.kind) {
        case 'ssl': {
          if (sslDone) throw new ProtocolError('SSLRequest sent twice');
          sslDone = true;
          if (this.framer.buffered > 0) throw new ProtocolError('received unencrypted data after SSL request');
          if (!this.opts.tls) {
            this.write(backend.sslResponse('N'));
            continue;
          }
          this.write(backend.sslResponse('S'));
          await this.startTls(this.opts.tls);
          continue;
        }
        case 'gssenc':
          if (gssDone) throw new ProtocolError('GSSENCRequest sent twice');
          gssDone = true;
          if (this.framer.buffered > 0) throw new ProtocolError('received unencrypted data after GSSAPI encryption request');
          this.write(backend.sslResponse('N'));
          continue;
        case 'cancel':
          this.opts.cancel(p.pid, p.key);
          this.finish();
          return null;
        case 'unsupported': {
          const major = p.code >>> 16;
          const minor = p.code & 0xffff;
          throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`, { severity: 'FATAL' });
        }
        case 'startup':
          return this.afterStartupPacket(p.minor, p.params);
      }
    }
  }

  private startTls(ctx: tls.SecureContext): Promise<void> {
    this.raw.off('data', this.onData);
    const t = new tls.TLSSocket(this.raw, { isServer: true, secureContext: ctx });
    this.socket = t;
    this.attach(t);
    return new Promise((resolve, reject) => {
      t.once('secure', () => resolve());
      t.once('error', reject);
      void this.closed.then(() => reject(new Error('connection closed during TLS handshake')));
    });
  }

  private async afterStartupPacket(minor: number, params: Record<string, string>): Promise<StartupInfo | null> {
    this.startupParams = params;
    if (minor > 0 || Object.keys(params).some((k) => k.startsWith('_pq_.'))) {
      // NegotiateProtocolVersion: we speak 3.0 and no protocol extensions (libpq 15–17 ask for none).
      const unknown = Object.keys(params).filter((k) => k.startsWith('_pq_.'));
      const w = new Writer().int32(0).int32(unknown.length);
      for (const k of unknown) w.cstring(k);
      this.write(w.flush('v'));
    }
    const user = params.user;
    if (!user) throw new PgError(SQLSTATE.INVALID_AUTHORIZATION_SPECIFICATION, 'no PostgreSQL user name specified in startup packet', { severity: 'FATAL' });
    const info: StartupInfo = {
      params,
      user,
      applicationName: params.application_name ?? '',
      address: this.remoteAddress,
      options: parseStartupOptions(params.options ?? ''),
      tls: this.socket instanceof tls.TLSSocket,
    };
    if (!(await this.authenticate(info))) return null;
    const parameters = this.opts.accept(info);
    const out: Buffer[] = [backend.authenticationOk()];
    for (const [k, v] of Object.entries(parameters)) out.push(backend.parameterStatus(k, v));
    out.push(backend.backendKeyData(this.pid, this.key), backend.readyForQuery('I'));
    this.write(Buffer.concat(out));
    this.startup = info;
    return info;
  }

  /** Returns false when the client went away or failed (a FATAL was sent). */
  private async authenticate(info: StartupInfo): Promise<boolean> {
    const { method, users } = this.opts.auth;
    if (method === 'trust' || (method === 'loopback-trust' && isLoopback(this.raw.remoteAddress))) return true;
    const secret = this.opts.mockSecret?.toString('hex') ?? '';
    const session = new ScramServerSession(users.get(info.user) ?? null, { mockSeed: `${info.user}\0${secret}` });
    this.write(backend.authenticationSASL(session.mechanisms));
    const first = await this.nextAuthMessage();
    if (!first) return false;
    if (first.type !== 'password') throw new ProtocolError(`expected SASL response, got message type "${first.type === 'other' ? first.code : first.type}"`);
    const init = parseSASLInitialResponse(first.payload);
    let serverFirst = session.clientFirst(init.mechanism, init.data);
    if (init.data === null) {
      // No initial response: an empty challenge, and the client's answer is its first message.
      this.write(backend.authenticationSASLContinue(serverFirst));
      const again = await this.nextAuthMessage();
      if (!again) return false;
      if (again.type !== 'password') throw new ProtocolError('expected SASL response');
      serverFirst = session.clientFirst(init.mechanism, again.payload);
    }
    this.write(backend.authenticationSASLContinue(serverFirst));
    const fin = await this.nextAuthMessage();
    if (!fin) return false;
    if (fin.type !== 'password') throw new ProtocolError(`expected SASL response, got message type "${fin.type === 'other' ? fin.code : fin.type}"`);
    const r = session.clientFinal(fin.payload);
    if (!r.ok) {
      throw new PgError(SQLSTATE.INVALID_PASSWORD, `password authentication failed for user "${info.user}"`, { severity: 'FATAL' });
    }
    this.write(backend.authenticationSASLFinal(r.serverFinal));
    return true;
  }
}
