/**
 * A minimal PostgreSQL client for replication connections: startup (with
 * optional TLS), trust / cleartext / MD5 / SCRAM-SHA-256 authentication,
 * simple queries (replication commands such as IDENTIFY_SYSTEM), and
 * START_REPLICATION's CopyBoth stream.
 *
 *   const c = await ReplicationClient.connect({ host, port });
 *   const sys = await c.identifySystem();
 *   const copy = c.startReplication(`START_REPLICATION 0/3000000 TIMELINE 1`);
 *   copy.onXLogData = (m) => { ... };
 *   copy.onKeepalive = (k) => { if (k.replyRequested) copy.sendStatus({ write, flush, apply: 0n }); };
 *   const result = await copy.end();   // or: await copy.done (the server ended the stream)
 *   await c.close();
 *
 * One command at a time: calling query()/startReplication() while another
 * is in progress throws.
 */

import { createHash } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';

import { parseLsn } from '../lsn.js';
import { Reader } from '../protocol/buffer_reader.js';
import { PgError, ProtocolError, SQLSTATE } from '../protocol/errors.js';
import type { FieldDescription, NoticeFields } from '../protocol/messages.js';
import { ClientFramer, errorFromNotice, parseBackendMessage, parseNoticeFields } from '../protocol/parser.js';
import {
  decodeKeepalive,
  decodeXLogData,
  KEEPALIVE_TAG,
  standbyStatus,
  XLOG_DATA_HEADER_SIZE,
  XLOG_DATA_TAG,
  type Keepalive,
  type StandbyStatusInit,
  type XLogData,
} from '../protocol/replication.js';
import { ScramClientSession } from '../protocol/scram.js';
import { frontend } from '../protocol/serializer.js';

export interface ConnectOptions {
  host: string;
  port: number;
  /** Default 'postgres'. */
  user?: string;
  /** Needed when the server asks for cleartext, MD5 or SCRAM authentication. */
  password?: string;
  /** Default 'replication' (what pg_receivewal and the walreceiver send). */
  database?: string;
  applicationName?: string;
  /** The startup `options` parameter, e.g. '-c stream=main'. */
  options?: string;
  /** The startup `replication` parameter: 'true' (physical, the default), 'database', ...; false omits it. */
  replication?: string | false;
  /**
   * false (the default): no SSLRequest. 'prefer': ask, use TLS if the server
   * agrees (certificate not verified, like libpq's sslmode=prefer).
   * 'require': fail unless the server agrees (not verified, like
   * sslmode=require). tls.ConnectionOptions: require TLS with these options
   * (Node verifies the certificate unless rejectUnauthorized is false).
   */
  ssl?: false | 'prefer' | 'require' | tls.ConnectionOptions;
  /** Time allowed for TCP connect + TLS + authentication until ReadyForQuery. Default 10000 ms. */
  connectTimeoutMs?: number;
  /** More startup parameters (they override the ones above). */
  extraParams?: Record<string, string>;
}

/** One command's result: its columns, its rows (text; NULL as null) and its CommandComplete tag. */
export interface ResultSet {
  fields: FieldDescription[];
  rows: (string | null)[][];
  /** null for an EmptyQueryResponse. */
  tag: string | null;
}

export interface QueryResult {
  /** Columns and rows of the first result set that had a RowDescription ([] when none had). */
  fields: FieldDescription[];
  rows: (string | null)[][];
  /** Every CommandComplete tag, in order. */
  tags: string[];
  /** Every result set, one per CommandComplete (or EmptyQueryResponse). */
  results: ResultSet[];
}

export interface IdentifySystemResult {
  systemId: bigint;
  timeline: number;
  xlogpos: bigint;
  dbname: string | null;
}

export type ReplicationMessage =
  | ({ type: 'xlogData' } & XLogData)
  | ({ type: 'keepalive' } & Keepalive)
  /** Any other CopyData payload (tag byte first). */
  | { type: 'copyData'; data: Buffer };

/**
 * How a CopyBoth stream ended.
 *
 * - 'clientEnd': end() sent CopyDone first; the server answered CopyDone and
 *   the results (`C START_STREAMING`, `C START_REPLICATION`), then ReadyForQuery.
 * - 'serverEnd': the server sent CopyDone first (end of a historic timeline);
 *   the client answered CopyDone and collected the results (`T/D next_tli,
 *   next_tli_startpos` → `nextTimeline`, the two tags) until ReadyForQuery.
 * - 'commandComplete': a CommandComplete arrived while in COPY (`C "COPY 0"`,
 *   a walsender shutting down). The server exits after it, so the client
 *   closes the connection (usable = false).
 * - 'error': an ErrorResponse with SQLSTATE 00000 (successful completion)
 *   ended the stream; it is in `error`. (Neon's safekeepers end streams this
 *   way.) An ErrorResponse with any other SQLSTATE rejects `done` with that
 *   PgError instead.
 * - 'noCopy': the server answered START_REPLICATION with results instead of
 *   entering COPY (the start point is exactly the end of a historic
 *   timeline): `nextTimeline` says where to go.
 *
 * A socket close or error before the end rejects `done`.
 */
export interface PostCopyResult {
  reason: 'clientEnd' | 'serverEnd' | 'commandComplete' | 'error' | 'noCopy';
  /** Result sets received after the COPY (or instead of it). */
  results: ResultSet[];
  /** Their tags, plus 'COPY 0' for reason 'commandComplete'. */
  tags: string[];
  /** From a `next_tli, next_tli_startpos` row, when the server sent one. */
  nextTimeline: { timeline: number; startLsn: bigint } | null;
  /** The SQLSTATE 00000 ErrorResponse for reason 'error', else null. */
  error: PgError | null;
  /** True when ReadyForQuery arrived: the connection can run more commands. */
  usable: boolean;
}

interface Handler {
  onMessage(code: number, payload: Buffer): void;
  onClose(err: Error): void;
}

const noop = (): void => undefined;

function md5Hex(data: string | Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

/** Collects T/D/C/I/E until Z. */
class ResultCollector {
  readonly results: ResultSet[] = [];
  readonly tags: string[] = [];
  error: PgError | null = null;
  private cur: ResultSet | null = null;
  private inCopyOut = false;

  constructor(private readonly client: ReplicationClient) {}

  /** Returns true on ReadyForQuery. */
  handle(code: number, payload: Buffer): boolean {
    switch (code) {
      case 0x54: {
        // T
        const m = parseBackendMessage(code, payload);
        if (m.type !== 'rowDescription') throw new ProtocolError('bad RowDescription');
        this.cur = { fields: m.fields, rows: [], tag: null };
        return false;
      }
      case 0x44: {
        // D
        this.cur ??= { fields: [], rows: [], tag: null };
        this.cur.rows.push(decodeTextRow(payload));
        return false;
      }
      case 0x43: {
        // C
        const r = new Reader(payload);
        const tag = r.cstring('command tag');
        r.end('CommandComplete');
        const set = this.cur ?? { fields: [], rows: [], tag: null };
        set.tag = tag;
        this.results.push(set);
        this.tags.push(tag);
        this.cur = null;
        return false;
      }
      case 0x49: // I
        this.results.push({ fields: [], rows: [], tag: null });
        this.cur = null;
        return false;
      case 0x45: // E
        this.error ??= errorFromNotice(parseNoticeFields(payload));
        this.cur = null;
        return false;
      case 0x5a: // Z
        return true;
      case 0x47: // G CopyInResponse: not supported here, refuse it
        this.client.write(frontend.copyFail('COPY FROM STDIN is not supported by this client'));
        return false;
      case 0x48: // H CopyOutResponse: discard the data
        this.inCopyOut = true;
        return false;
      case 0x57: // W CopyBothResponse from query(): leave COPY at once
        this.error ??= new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'query() cannot run a command that starts a COPY BOTH stream; use startReplication()');
        this.client.write(frontend.copyDone());
        this.inCopyOut = true;
        return false;
      case 0x64: // d
      case 0x63: // c
        if (this.inCopyOut) return false;
        throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' outside COPY`);
      default:
        throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' in a query response`);
    }
  }
}

function decodeTextRow(payload: Buffer): (string | null)[] {
  if (payload.length < 2) throw new ProtocolError('message truncated while reading DataRow column count');
  const n = payload.readInt16BE(0);
  const row: (string | null)[] = new Array(n);
  let off = 2;
  for (let i = 0; i < n; i++) {
    if (payload.length - off < 4) throw new ProtocolError('message truncated while reading DataRow value length');
    const len = payload.readInt32BE(off);
    off += 4;
    if (len === -1) {
      row[i] = null;
      continue;
    }
    if (len < 0 || payload.length - off < len) throw new ProtocolError('message truncated while reading DataRow value');
    row[i] = payload.toString('utf8', off, off + len);
    off += len;
  }
  if (off !== payload.length) throw new ProtocolError("message contents do not agree with length in message type 'D'");
  return row;
}

function queryResult(c: ResultCollector): QueryResult {
  const first = c.results.find((r) => r.fields.length > 0);
  return { fields: first?.fields ?? [], rows: first?.rows ?? [], tags: c.tags, results: c.results };
}

function nextTimelineOf(results: ResultSet[]): PostCopyResult['nextTimeline'] {
  for (const r of results) {
    if (r.fields.length >= 2 && r.fields[0]!.name === 'next_tli' && r.rows.length === 1) {
      const [tli, pos] = r.rows[0]!;
      if (tli == null || pos == null) return null;
      return { timeline: Number(tli), startLsn: parseLsn(pos) };
    }
  }
  return null;
}

// ---------------------------------------------------------------- CopyBoth

type CopyState = 'starting' | 'copy' | 'ending' | 'finishing' | 'done';

/**
 * A START_REPLICATION stream. Messages go to the callbacks when any is set
 * (onXLogData for 'w', onKeepalive for 'k', onCopyData for anything else
 * and for 'w'/'k' whose callback is unset), otherwise they are queued for
 * the async iterator (`for await (const m of copy)`), which pauses reading
 * from the socket while more than `highWaterMark` bytes are queued.
 * Callbacks run synchronously as messages arrive; `pause()` / `resume()`
 * stop and restart delivery (for consumers that write asynchronously). A
 * callback that throws ends the connection and rejects `done` with the error.
 */
export class CopyBoth implements AsyncIterable<ReplicationMessage> {
  onXLogData: ((m: XLogData) => void) | null = null;
  onKeepalive: ((m: Keepalive) => void) | null = null;
  onCopyData: ((payload: Buffer) => void) | null = null;
  /** Called on CopyBothResponse, before any message after it is delivered (the moment to lend()). */
  onStart: (() => void) | null = null;

  /** Resolves true on CopyBothResponse, false when the server answered with results instead (see PostCopyResult 'noCopy'); rejects on an ErrorResponse before COPY. */
  readonly started: Promise<boolean>;
  /** Settles when the stream and its trailing results are over (see PostCopyResult). */
  readonly done: Promise<PostCopyResult>;

  /** End LSN of the last XLogData received (its start + data length); 0n before any. */
  lastReceived = 0n;
  /** The latest walEnd the server reported (XLogData or keepalive). */
  serverWalEnd = 0n;
  /** Bytes the async iterator may queue before reading pauses. */
  highWaterMark = 8 * 1024 * 1024;

  /** Payload bytes queued for the async iterator. */
  get queued(): number {
    return this.queuedBytes;
  }

  private state: CopyState = 'starting';
  private endRequested = false;
  private clientDoneSent = false;
  private reason: PostCopyResult['reason'] = 'serverEnd';
  private collector: ResultCollector;
  private resolveStarted!: (v: boolean) => void;
  private rejectStarted!: (e: Error) => void;
  private resolveDone!: (v: PostCopyResult) => void;
  private rejectDone!: (e: Error) => void;
  private settled: { error: Error } | { result: PostCopyResult } | null = null;
  // async iterator
  private queue: ReplicationMessage[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  private waiter: { resolve: (r: IteratorResult<ReplicationMessage>) => void; reject: (e: Error) => void } | null = null;
  private userPaused = false;
  private queuePaused = false;

  /** @internal use ReplicationClient.startReplication() */
  constructor(private readonly client: ReplicationClient) {
    this.collector = new ResultCollector(client);
    this.started = new Promise<boolean>((resolve, reject) => {
      this.resolveStarted = resolve;
      this.rejectStarted = reject;
    });
    this.done = new Promise<PostCopyResult>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // Whoever awaits one of them sees the rejection; the other must not crash the process.
    this.started.catch(noop);
    this.done.catch(noop);
  }

  /** True between CopyBothResponse and the server's end of the stream. */
  get inCopy(): boolean {
    return this.state === 'copy' || this.state === 'ending';
  }

  /** True while messages can be sent: in COPY, and CopyDone not sent yet. */
  get canSend(): boolean {
    return this.state === 'copy' && !this.clientDoneSent;
  }

  /**
   * Sends a complete CopyData message (e.g. from standbyStatus()). Returns
   * false, sending nothing, when not in COPY or after CopyDone was sent
   * (a status update then is pointless, and the protocol forbids it).
   */
  send(message: Buffer): boolean {
    if (!this.canSend) return false;
    this.client.write(message);
    return true;
  }

  /** Sends a standby status update ('r'); see send(). */
  sendStatus(s: StandbyStatusInit): boolean {
    return this.send(standbyStatus(s));
  }

  /**
   * Ends the stream from the client side: sends CopyDone (once), then
   * collects the server's results until ReadyForQuery. Returns `done`.
   */
  end(): Promise<PostCopyResult> {
    this.endRequested = true;
    if (this.state === 'copy') this.sendCopyDone('clientEnd');
    return this.done;
  }

  /** Stops delivering messages (and reading from the socket) until resume(). */
  pause(): void {
    this.userPaused = true;
    this.client.setPaused(true);
  }

  resume(): void {
    this.userPaused = false;
    if (!this.queuePaused) this.client.setPaused(false);
  }

  /**
   * Lends the rest of the stream to another reader (walkeeper's receive
   * pump): reading and delivery stop, and the socket's descriptor and the
   * bytes already read past the current message are returned. Null where
   * there is no descriptor to lend (TLS, Windows). The other reader gives
   * back what it did not consume with giveBack(); writing (status updates)
   * goes on meanwhile.
   */
  lend(): { fd: number; pending: Buffer } | null {
    return this.client.lend();
  }

  giveBack(leftover: Buffer): void {
    this.client.giveBack(leftover);
  }

  private sendCopyDone(reason: PostCopyResult['reason']): void {
    if (this.clientDoneSent) return;
    this.clientDoneSent = true;
    this.reason = reason;
    this.state = 'ending';
    this.client.write(frontend.copyDone());
    // Ending must not wait on a consumer that stopped reading.
    this.queuePaused = false;
    this.userPaused = false;
    this.client.setPaused(false);
  }

  /** @internal */
  handleMessage(code: number, payload: Buffer): void {
    switch (this.state) {
      case 'starting':
        if (code === 0x57) {
          // W
          const m = parseBackendMessage(code, payload);
          if (m.type !== 'copyBothResponse') throw new ProtocolError('bad CopyBothResponse');
          this.state = 'copy';
          this.onStart?.();
          this.resolveStarted(true);
          if (this.endRequested) this.sendCopyDone('clientEnd');
          return;
        }
        if (this.collector.handle(code, payload)) this.finish('noCopy');
        return;
      case 'copy':
      case 'ending':
        switch (code) {
          case 0x64: // d
            this.deliver(payload);
            return;
          case 0x63: // c
            if (payload.length !== 0) throw new ProtocolError('invalid CopyDone message');
            if (!this.clientDoneSent) this.sendCopyDone('serverEnd');
            this.state = 'finishing';
            return;
          case 0x43: {
            // C while in COPY: the walsender is exiting.
            const r = new Reader(payload);
            const tag = r.cstring('command tag');
            r.end('CommandComplete');
            this.collector.tags.push(tag);
            this.settle({
              result: {
                reason: 'commandComplete',
                results: this.collector.results,
                tags: this.collector.tags,
                nextTimeline: null,
                error: null,
                usable: false,
              },
            });
            this.client.destroy();
            return;
          }
          case 0x45: // E: COPY is over; the server follows with ReadyForQuery (ERROR) or closes (FATAL)
            this.collector.handle(code, payload);
            this.state = 'finishing';
            return;
          default:
            throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' during COPY`);
        }
      case 'finishing':
        if (code === 0x64 || code === 0x63) return; // late CopyData / CopyDone: ignore
        if (this.collector.handle(code, payload)) this.finish(this.reason);
        return;
      case 'done':
        throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' after the end of COPY`);
    }
  }

  /** @internal the connection closed or failed. */
  handleClose(err: Error): void {
    if (this.collector.error && this.state !== 'done') {
      // ErrorResponse (often FATAL), then the server closed: report the error.
      this.finish(this.state === 'starting' ? 'noCopy' : this.reason, false);
      return;
    }
    this.settle({ error: err });
  }

  private finish(reason: PostCopyResult['reason'], usable = true): void {
    const c = this.collector;
    if (c.error && c.error.code !== SQLSTATE.SUCCESSFUL_COMPLETION) {
      this.settle({ error: c.error });
      return;
    }
    this.settle({
      result: {
        reason: c.error ? 'error' : reason,
        results: c.results,
        tags: c.tags,
        nextTimeline: nextTimelineOf(c.results),
        error: c.error,
        usable,
      },
    });
  }

  private settle(s: { error: Error } | { result: PostCopyResult }): void {
    if (this.settled) return;
    this.settled = s;
    const wasStarting = this.state === 'starting';
    this.state = 'done';
    this.client.copyFinished();
    if ('error' in s) {
      this.rejectStarted(s.error);
      this.rejectDone(s.error);
    } else {
      if (wasStarting) this.resolveStarted(false);
      this.resolveDone(s.result);
    }
    this.wakeIterator();
  }

  private deliver(payload: Buffer): void {
    const tag = payload.length > 0 ? payload[0] : -1;
    const callbacks = this.onXLogData !== null || this.onKeepalive !== null || this.onCopyData !== null;
    let m: ReplicationMessage;
    if (tag === XLOG_DATA_TAG) {
      if (payload.length < XLOG_DATA_HEADER_SIZE) decodeXLogData(payload); // throws the ProtocolError
      const start = payload.readBigUInt64BE(1);
      this.lastReceived = start + BigInt(payload.length - XLOG_DATA_HEADER_SIZE);
      if (callbacks && this.onXLogData === null) {
        // raw consumer: no decoding beyond the start position
        this.onCopyData?.(payload);
        return;
      }
      const end = payload.readBigUInt64BE(9);
      this.serverWalEnd = end;
      const sendTime = payload.readBigInt64BE(17);
      const data = payload.subarray(XLOG_DATA_HEADER_SIZE);
      if (this.onXLogData !== null) {
        this.onXLogData({ start, end, sendTime, data });
        return;
      }
      m = { type: 'xlogData', start, end, sendTime, data };
    } else if (tag === KEEPALIVE_TAG) {
      const k = decodeKeepalive(payload);
      this.serverWalEnd = k.walEnd;
      if (callbacks) {
        if (this.onKeepalive !== null) this.onKeepalive(k);
        else this.onCopyData?.(payload);
        return;
      }
      m = { type: 'keepalive', walEnd: k.walEnd, sendTime: k.sendTime, replyRequested: k.replyRequested };
    } else {
      if (callbacks) {
        this.onCopyData?.(payload);
        return;
      }
      m = { type: 'copyData', data: payload };
    }
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: m, done: false });
      return;
    }
    this.queue.push(m);
    this.queuedBytes += payload.length;
    if (this.queuedBytes > this.highWaterMark && !this.clientDoneSent && !this.queuePaused) {
      this.queuePaused = true;
      this.client.setPaused(true);
    }
  }

  private wakeIterator(): void {
    if (!this.waiter || this.queueHead < this.queue.length) return;
    const w = this.waiter;
    this.waiter = null;
    if (this.settled && 'error' in this.settled) w.reject(this.settled.error);
    else w.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<ReplicationMessage> {
    return {
      next: (): Promise<IteratorResult<ReplicationMessage>> => {
        if (this.queueHead < this.queue.length) {
          const m = this.queue[this.queueHead]!;
          this.queue[this.queueHead++] = undefined as unknown as ReplicationMessage;
          this.queuedBytes -= m.type === 'xlogData' ? m.data.length + XLOG_DATA_HEADER_SIZE : m.type === 'keepalive' ? 18 : m.data.length;
          if (this.queueHead === this.queue.length) {
            this.queue = [];
            this.queueHead = 0;
          }
          if (this.queuePaused && this.queuedBytes <= this.highWaterMark / 2) {
            this.queuePaused = false;
            if (!this.userPaused) this.client.setPaused(false);
          }
          return Promise.resolve({ value: m, done: false });
        }
        if (this.settled) {
          if ('error' in this.settled) return Promise.reject(this.settled.error);
          return Promise.resolve({ value: undefined, done: true });
        }
        if (this.waiter) return Promise.reject(new Error('CopyBoth iterator: next() called again before the previous call settled'));
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      // Leaving a for-await loop does not end the stream: call end().
      return: (): Promise<IteratorResult<ReplicationMessage>> => Promise.resolve({ value: undefined, done: true }),
    };
  }
}

// ------------------------------------------------------- reads into slabs

interface ReadSink {
  fn: (chunk: Buffer) => void;
}

/**
 * Read buffers for `net.connect({ onread })`: each read lands in the unused
 * tail of a 1 MiB slab, and the bytes read are passed on as a view of it.
 * Views are never overwritten (a slab is only written past what was handed
 * out), so consumers may keep them; a slab is dropped once its tail gets
 * small, and garbage-collected when its last view is.
 */
class SlabReader {
  private slab = Buffer.allocUnsafe(SLAB);
  private used = 0;
  private current: Buffer = this.slab;
  readonly sink: ReadSink = { fn: () => undefined };

  next(): Uint8Array {
    if (SLAB - this.used < MIN_READ) {
      this.slab = Buffer.allocUnsafe(SLAB);
      this.used = 0;
    }
    this.current = this.slab.subarray(this.used);
    return this.current;
  }

  read(n: number): void {
    const chunk = this.current.subarray(0, n);
    this.used += n;
    this.sink.fn(chunk);
  }
}

const SLAB = 1 << 20;
const MIN_READ = 256 * 1024;

// ------------------------------------------------------- ReplicationClient

export class ReplicationClient {
  /** ParameterStatus values reported by the server (server_version, integer_datetimes, ...). */
  readonly parameters: Record<string, string> = {};
  /** BackendKeyData, when the server sent it. */
  backendKey: { pid: number; key: number } | null = null;
  /** Called for every NoticeResponse. */
  onNotice: ((n: NoticeFields) => void) | null = null;

  private readonly framer = new ClientFramer();
  private handler: Handler | null = null;
  private _closed = false;
  private closeError: Error | null = null;
  private paused = false;
  private closedPromise: Promise<void>;
  private draining = false;

  private constructor(
    private socket: net.Socket,
    /** Whether the connection is encrypted (TLS). */
    readonly encrypted: boolean,
    /** Set for sockets created with `onread` (plain TCP): where their reads go. */
    sink: ReadSink | null = null,
  ) {
    this.closedPromise = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    if (sink) {
      sink.fn = (chunk) => this.onData(chunk);
      this.framer.slabReads = true;
    }
    else socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => {
      this.closeError ??= err;
    });
    socket.on('close', () => this.onSocketClose());
  }

  /** Connects, negotiates TLS if asked, authenticates, and waits for ReadyForQuery. */
  static async connect(opts: ConnectOptions): Promise<ReplicationClient> {
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const where = `${opts.host}:${opts.port}`;
    let socket: net.Socket | null = null;
    let sink: ReadSink | null = null;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket?.destroy(new Error(`timeout after ${timeoutMs} ms connecting to ${where}`));
    }, timeoutMs);
    try {
      const ssl = opts.ssl ?? false;
      const open = async (slabReads: boolean): Promise<void> => {
        // Plain TCP reads go into large slabs we hand out views of (instead
        // of Node's fresh 64 KiB buffer per read): a 128 KiB XLogData then
        // usually arrives in one piece and reaches the caller without being
        // copied. Only such a socket stops reading at once when paused,
        // which is what lend() needs.
        if (slabReads) {
          const slabs = new SlabReader();
          socket = net.connect({ host: opts.host, port: opts.port, onread: { buffer: () => slabs.next(), callback: (n: number) => (slabs.read(n), true) } });
          sink = slabs.sink;
        } else {
          socket = net.connect({ host: opts.host, port: opts.port });
          sink = null;
        }
        socket.setNoDelay(true);
        // Errors are handled by whoever is listening for the phase at hand (and
        // by the TLS socket once upgraded); this keeps one between phases from
        // becoming an uncaught exception.
        socket.on('error', noop);
        await new Promise<void>((resolve, reject) => {
          const s = socket!;
          const onErr = (e: Error): void => {
            s.off('connect', onOk);
            reject(e);
          };
          const onOk = (): void => {
            s.off('error', onErr);
            resolve();
          };
          s.once('error', onErr);
          s.once('connect', onOk);
        });
      };
      // sslmode=prefer (libpq's default) mostly meets servers without SSL:
      // ask on a plain-read socket, and only if the server says yes, ask
      // again on one TLS can take over.
      await open(ssl === false || ssl === 'prefer');
      let encrypted = false;
      if (ssl !== false) {
        let answer = await sslHandshakeByte(socket!, sink);
        if (answer === 'S' && sink) {
          socket!.destroy();
          await open(false);
          answer = await sslHandshakeByte(socket!, null);
        }
        if (answer === 'S') {
          const tlsOpts: tls.ConnectionOptions = typeof ssl === 'object' ? { ...ssl } : { rejectUnauthorized: false };
          if (tlsOpts.servername === undefined && net.isIP(opts.host) === 0) tlsOpts.servername = opts.host;
          socket = await upgradeToTls(socket!, tlsOpts);
          encrypted = true;
        } else if (ssl !== 'prefer') {
          throw new Error(`server ${where} does not support SSL, but SSL was required`);
        }
      }
      const client = new ReplicationClient(socket!, encrypted, encrypted ? null : sink);
      await client.startup(opts);
      return client;
    } catch (e) {
      socket?.destroy();
      const err = e as Error;
      if (timedOut) throw new Error(`timeout after ${timeoutMs} ms connecting to ${where}`);
      if (err instanceof PgError) throw err;
      throw new Error(`could not connect to ${where}: ${err.message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  /** True once the connection is closed (by either side). */
  get closed(): boolean {
    return this._closed;
  }

  /** The server's server_version parameter. */
  get serverVersion(): string | undefined {
    return this.parameters.server_version;
  }

  private startup(opts: ConnectOptions): Promise<void> {
    const user = opts.user ?? 'postgres';
    const params: Record<string, string> = { user, database: opts.database ?? 'replication' };
    const replication = opts.replication ?? 'true';
    if (replication !== false) params.replication = replication;
    if (opts.applicationName !== undefined) params.application_name = opts.applicationName;
    if (opts.options !== undefined) params.options = opts.options;
    Object.assign(params, opts.extraParams ?? {});

    return new Promise<void>((resolve, reject) => {
      let scram: ScramClientSession | null = null;
      let scramVerified = false;
      const needPassword = (what: string): string => {
        if (opts.password === undefined) throw new Error(`the server requested ${what} authentication, but no password was given`);
        return opts.password;
      };
      this.handler = {
        onMessage: (code, payload) => {
          switch (code) {
            case 0x52: {
              // R
              const m = parseBackendMessage(code, payload);
              switch (m.type) {
                case 'authenticationOk':
                  if (scram && !scramVerified) throw new Error('the server accepted the connection without completing SCRAM authentication');
                  return;
                case 'authenticationCleartextPassword':
                  this.write(frontend.password(needPassword('password')));
                  return;
                case 'authenticationMD5Password': {
                  const pw = needPassword('MD5 password');
                  const inner = md5Hex(pw + user);
                  this.write(frontend.password('md5' + md5Hex(Buffer.concat([Buffer.from(inner, 'latin1'), m.salt]))));
                  return;
                }
                case 'authenticationSASL': {
                  if (!m.mechanisms.includes('SCRAM-SHA-256')) {
                    throw new Error(`none of the server's SASL authentication mechanisms are supported: ${m.mechanisms.join(', ')}`);
                  }
                  scram = new ScramClientSession(user, needPassword('SCRAM-SHA-256'));
                  this.write(frontend.saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
                  return;
                }
                case 'authenticationSASLContinue':
                  if (!scram) throw new ProtocolError('unexpected AuthenticationSASLContinue');
                  this.write(frontend.saslResponse(scram.handleServerFirst(m.data.toString('utf8'))));
                  return;
                case 'authenticationSASLFinal':
                  if (!scram) throw new ProtocolError('unexpected AuthenticationSASLFinal');
                  scram.verifyServerFinal(m.data.toString('utf8'));
                  scramVerified = true;
                  return;
                default:
                  throw new Error(`authentication method ${m.type === 'authenticationOther' ? m.method : m.type} is not supported`);
              }
            }
            case 0x4b: {
              // K
              const m = parseBackendMessage(code, payload);
              if (m.type === 'backendKeyData') this.backendKey = { pid: m.pid, key: m.key };
              return;
            }
            case 0x45: // E: authentication failed, too many connections, ...
              throw errorFromNotice(parseNoticeFields(payload));
            case 0x5a: // Z
              this.handler = null;
              resolve();
              return;
            case 0x76: // v NegotiateProtocolVersion: we ask for 3.0 without options; nothing to adjust
              return;
            default:
              throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' during startup`);
          }
        },
        onClose: reject,
      };
      this.write(frontend.startup(params));
    });
  }

  /** Runs a simple query. Rejects with the server's PgError (after ReadyForQuery) if it failed. */
  query(sql: string): Promise<QueryResult> {
    this.assertIdle('query');
    return new Promise<QueryResult>((resolve, reject) => {
      const c = new ResultCollector(this);
      this.handler = {
        onMessage: (code, payload) => {
          if (!c.handle(code, payload)) return;
          this.handler = null;
          if (c.error) reject(c.error);
          else resolve(queryResult(c));
        },
        onClose: (err) => reject(c.error ?? err),
      };
      this.write(frontend.query(sql));
    });
  }

  async identifySystem(): Promise<IdentifySystemResult> {
    const r = await this.query('IDENTIFY_SYSTEM');
    const row = r.rows[0];
    if (r.rows.length !== 1 || !row || row.length < 3 || row[0] == null || row[1] == null || row[2] == null) {
      throw new Error(`unexpected IDENTIFY_SYSTEM result: ${r.rows.length} rows, ${r.fields.length} fields`);
    }
    return { systemId: BigInt(row[0]), timeline: Number(row[1]), xlogpos: parseLsn(row[2]), dbname: row[3] ?? null };
  }

  /** TIMELINE_HISTORY tli: the history file's name and content. */
  async timelineHistory(tli: number): Promise<{ filename: string; content: string }> {
    const r = await this.query(`TIMELINE_HISTORY ${tli}`);
    const row = r.rows[0];
    if (r.rows.length !== 1 || !row || row.length < 2 || row[0] == null || row[1] == null) {
      throw new Error(`unexpected TIMELINE_HISTORY result: ${r.rows.length} rows, ${r.fields.length} fields`);
    }
    return { filename: row[0], content: row[1] };
  }

  /**
   * Sends a START_REPLICATION command and returns its stream at once, so
   * callbacks can be attached before any message is delivered. See
   * CopyBoth.started and CopyBoth.done for how it goes on.
   */
  startReplication(command: string): CopyBoth {
    this.assertIdle('startReplication');
    const copy = new CopyBoth(this);
    this.handler = {
      onMessage: (code, payload) => copy.handleMessage(code, payload),
      onClose: (err) => copy.handleClose(err),
    };
    this.write(frontend.query(command));
    return copy;
  }

  /**
   * Asks the server to cancel the running command (a CancelRequest with this
   * session's BackendKeyData on a new connection, as libpq's PQcancel does).
   */
  async cancel(): Promise<void> {
    const key = this.backendKey;
    if (!key) throw new Error('the server sent no BackendKeyData: cannot cancel');
    const { remoteAddress: host, remotePort: port } = this.socket;
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: host!, port: port! }, () => s.end(frontend.cancelRequest(key.pid, key.key)));
      s.on('error', reject);
      s.on('close', () => resolve());
      s.resume();
    });
  }

  /** Sends Terminate and closes the socket; a command in progress fails. */
  async close(): Promise<void> {
    if (!this._closed) {
      this.closeError ??= new Error('connection closed by the client');
      if (!this.socket.destroyed && this.socket.writable) {
        // A socket not being read (lent to a pump, or paused by the
        // application) would not see the server's close until the timeout:
        // then say goodbye and close our end once it is written, as libpq's
        // PQfinish does — `walkeeper receive --endpos` otherwise sat here
        // after its last byte.
        this.socket.end(frontend.terminate(), this.paused ? () => this.socket.destroy() : undefined);
        const t = setTimeout(() => this.socket.destroy(), 2000);
        await this.closedPromise;
        clearTimeout(t);
      } else {
        this.socket.destroy();
        await this.closedPromise;
      }
    }
    await this.closedPromise;
  }

  /** @internal */
  write(buf: Buffer): void {
    if (this._closed || this.socket.destroyed) return;
    this.socket.write(buf);
  }

  /** @internal closes the socket at once. */
  destroy(err?: Error): void {
    if (err) this.closeError ??= err;
    this.socket.destroy();
  }

  /** @internal see CopyBoth.lend() */
  lend(): { fd: number; pending: Buffer } | null {
    // Only a socket read with `onread` stops reading the moment it is paused;
    // any other would go on taking bytes the other reader needs.
    if (this.encrypted || !this.framer.slabReads || this._closed || this.socket.destroyed) return null;
    const fd = (this.socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return null;
    // Sockets read with `onread` stop reading (uv_read_stop) on pause.
    this.setPaused(true);
    return { fd, pending: this.framer.takeAll() };
  }

  /** @internal see CopyBoth.lend() */
  giveBack(leftover: Buffer): void {
    this.framer.push(leftover);
    this.setPaused(false);
  }

  /** @internal */
  copyFinished(): void {
    if (this.paused) this.setPaused(false);
    if (this.handler) this.handler = null;
  }

  /** @internal stops / restarts reading and dispatching. */
  setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    if (paused) {
      this.socket.pause();
    } else {
      this.socket.resume();
      // Messages already framed wait in the framer: deliver them, outside the caller's stack.
      queueMicrotask(() => this.drain());
    }
  }

  private assertIdle(what: string): void {
    if (this._closed || this.socket.destroyed) throw this.closeError ?? new Error('connection is closed');
    if (this.handler) throw new Error(`ReplicationClient.${what}: another command is in progress`);
  }

  private onData(chunk: Buffer): void {
    this.framer.push(chunk);
    this.drain();
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      while (!this.paused && !this._closed) {
        const m = this.framer.nextRaw();
        if (m === null) break;
        this.dispatch(m.code, m.payload);
      }
    } catch (e) {
      this.fail(e as Error);
    } finally {
      this.draining = false;
    }
  }

  private dispatch(code: number, payload: Buffer): void {
    if (code === 0x4e) {
      // N
      const n = parseNoticeFields(payload);
      this.onNotice?.(n);
      return;
    }
    if (code === 0x53) {
      // S
      const r = new Reader(payload);
      const name = r.cstring('parameter name');
      const value = r.cstring('parameter value');
      r.end('ParameterStatus');
      this.parameters[name] = value;
      return;
    }
    if (this.handler) {
      this.handler.onMessage(code, payload);
      return;
    }
    if (code === 0x45) {
      // E while idle: the server is about to close (e.g. FATAL 57P01 at shutdown).
      this.closeError = errorFromNotice(parseNoticeFields(payload));
      return;
    }
    throw new ProtocolError(`unexpected message type '${String.fromCharCode(code)}' while idle`);
  }

  private fail(err: Error): void {
    this.closeError ??= err;
    const h = this.handler;
    this.handler = null;
    this.socket.destroy();
    h?.onClose(err);
  }

  private onSocketClose(): void {
    if (this._closed) return;
    this._closed = true;
    const err = this.closeError ?? new Error('server closed the connection unexpectedly');
    this.closeError = err;
    const h = this.handler;
    this.handler = null;
    h?.onClose(err);
  }
}

/** Sends SSLRequest and reads the answer byte (from `sink` for a socket read with `onread`). */
function sslHandshakeByte(socket: net.Socket, sink: ReadSink | null): Promise<'S' | 'N'> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      if (sink) sink.fn = () => undefined;
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      cleanup();
      const b = String.fromCharCode(chunk[0]!);
      if (chunk.length > 1) {
        // CVE-2021-23222: bytes after the answer were not protected by TLS.
        reject(new ProtocolError('received unencrypted data after SSL response'));
      } else if (b === 'S' || b === 'N') {
        resolve(b);
      } else if (b === 'E') {
        reject(new Error('server does not support SSL (it answered the SSLRequest with an error)'));
      } else {
        reject(new ProtocolError(`received invalid response to SSL negotiation: ${JSON.stringify(b)}`));
      }
    };
    const onError = (e: Error): void => {
      cleanup();
      reject(e);
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('server closed the connection during SSL negotiation'));
    };
    if (sink) sink.fn = onData;
    else socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.write(frontend.sslRequest());
  });
}

function upgradeToTls(socket: net.Socket, opts: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const t = tls.connect({ ...opts, socket });
    const cleanup = (): void => {
      t.off('secureConnect', onOk);
      t.off('error', onErr);
      t.off('close', onClose);
    };
    const onErr = (e: Error): void => {
      cleanup();
      t.destroy();
      reject(new Error(`TLS handshake failed: ${e.message}`, { cause: e }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('server closed the connection during the TLS handshake'));
    };
    const onOk = (): void => {
      cleanup();
      resolve(t);
    };
    t.once('error', onErr);
    t.once('close', onClose);
    t.once('secureConnect', onOk);
  });
}
