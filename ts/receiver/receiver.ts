/**
 * WalReceiver: follows the best node of a stream, as Neon's pageserver
 * walreceiver does, and hands WAL to its user in order, with no gap and no
 * duplicate across switches. The decisions come from the pure policy
 * (policy.ts); this class is the I/O shell around it: candidate status in,
 * one connection at a time, chunks out, acknowledgements back to the node.
 *
 *   const r = new WalReceiver({ stream: 'main', nodes: ['http://10.0.0.1:7676', …] });
 *   for await (const { startLsn, endLsn, data, tli } of r) { …write it…; r.ack(endLsn); }
 */
import { EventEmitter } from 'node:events';

import { formatLsn, type Lsn } from '../lsn.js';
import type { WalStore } from '../wal/wal_storage.js';
import { BadNode, ReceiverConnection, type ConnectionEnd } from './connection.js';
import { ConnectionPolicy, describeReason, type PolicyConfig, type SwitchReason } from './policy.js';
import type { NodeStatus } from '../member_status.js';
import { HttpStatusSource, type CandidateSource } from './sources.js';
import { DEFAULT_STREAM } from '../defaults.js';

const FEEDBACK_MIN_MS = 50;

export interface WalChunk {
  startLsn: Lsn;
  endLsn: Lsn;
  data: Buffer;
  tli: number;
}

export interface WalReceiverOptions {
  /** Stream name on the nodes (default 'main'). */
  stream?: string;
  /** Nodes by their HTTP URL (their status names the replication address). */
  nodes?: string[];
  /** Or any other source of candidates (the broker). */
  source?: CandidateSource;
  /** First byte wanted. Default: the segment start of the first node's position (as pg_receivewal in an empty directory). */
  startLsn?: Lsn;
  /** Timeline of startLsn (default: the node's current one). */
  tli?: number;
  /** The database system this receiver holds WAL of; nodes of another one are refused. */
  systemId?: bigint;
  /** Stop (the iterator ends) once WAL up to here was received. */
  endLsn?: Lsn;
  policy?: Partial<PolicyConfig>;
  applicationName?: string;
  user?: string;
  password?: string;
  statusIntervalMs?: number;
  /** Pause the connection above this many undelivered bytes. */
  maxQueuedBytes?: number;
  signal?: AbortSignal;
  /**
   * @internal Write the WAL straight into this store (walkeeper receive's
   * directory): a Rust pump reads each connection's socket, checks, appends
   * and fsyncs, and the iterator yields nothing. Where no socket descriptor
   * can be lent (Windows), chunks reach the iterator as without a sink, for
   * the rest of the receiver's life.
   */
  sink?: { store: WalStore; synchronous?: boolean };
}

export interface SwitchEvent {
  from: string | null;
  to: string;
  pgAddress: string;
  reason: SwitchReason;
  description: string;
  at: Lsn;
}

export interface ReceiverEvents {
  connect: [{ nodeId: string; pgAddress: string; startLsn: Lsn; tli: number }];
  switch: [SwitchEvent];
  timeline: [{ tli: number; startLsn: Lsn; history: string }];
  error: [Error & { nodeId?: string }];
  status: [NodeStatus];
  /** With a sink: WAL received (appended) and flushed so far. */
  progress: [{ received: Lsn; flushed: Lsn }];
}

export class WalReceiver extends EventEmitter<ReceiverEvents> implements AsyncIterable<WalChunk> {
  readonly policy: ConnectionPolicy;
  private readonly source: CandidateSource;
  private readonly statuses = new Map<string, NodeStatus>();
  private conn: ReceiverConnection | null = null;
  private connDone: Promise<void> | null = null;
  private systemId: bigint | null;
  private tli: number | null;
  private next: Lsn | null;
  private acked: Lsn = 0n;
  private queue: WalChunk[] = [];
  private queued = 0;
  private paused = false;
  private stopped = false;
  private finished = false;
  private failure: Error | null = null;
  private wakeLoop: (() => void) | null = null;
  private wakeReader: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private readonly histories = new Map<number, string>();
  private feedbackTimer: NodeJS.Timeout | null = null;
  /** The sink could not be used (no socket descriptor): WAL goes to the iterator. */
  private noPump = false;

  constructor(private readonly opts: WalReceiverOptions) {
    super();
    if (!opts.source && !(opts.nodes && opts.nodes.length)) throw new Error('WalReceiver needs nodes (HTTP URLs) or a source');
    this.policy = new ConnectionPolicy(opts.policy);
    this.source = opts.source ?? new HttpStatusSource(opts.nodes!, opts.stream ?? DEFAULT_STREAM, opts.statusIntervalMs ?? 250);
    this.systemId = opts.systemId ?? null;
    this.tli = opts.tli ?? null;
    this.next = opts.startLsn ?? null;
    if (this.next !== null) this.policy.lastReceivedLsn = this.next;
    opts.signal?.addEventListener('abort', () => void this.stop(), { once: true });
  }

  /** The history file text of a timeline learned from a node, if any. */
  history(tli: number): string | undefined {
    return this.histories.get(tli);
  }

  /** Next byte wanted (the end of what was received). */
  get position(): Lsn | null {
    return this.next;
  }

  /**
   * Takes, without waiting, the chunks already received (up to about
   * `maxBytes`), in order — for consumers that write in batches.
   */
  /** Bytes received and not yet taken by the iterator. */
  get queuedBytes(): number {
    return this.queued;
  }

  takeQueued(maxBytes: number): WalChunk[] {
    const out: WalChunk[] = [];
    let bytes = 0;
    while (this.queue.length > 0 && (out.length === 0 || bytes + this.queue[0]!.data.length <= maxBytes)) {
      const c = this.queue.shift()!;
      this.queued -= c.data.length;
      bytes += c.data.length;
      out.push(c);
    }
    if (this.paused && this.queued < (this.opts.maxQueuedBytes ?? 32 << 20) / 2) {
      this.paused = false;
      this.conn?.resume();
    }
    return out;
  }

  /** Chunks received and not yet taken by the iterator. */
  get pending(): number {
    return this.queue.length;
  }

  get currentNode(): string | null {
    return this.conn?.node.nodeId ?? null;
  }

  /** Reports that everything below `lsn` is durable at the caller (flush / disk_consistent_lsn to the node). */
  ack(lsn: Lsn): void {
    if (lsn <= this.acked) return;
    this.acked = lsn;
    // At most one status message per FEEDBACK_MIN_MS: a caller acking every
    // chunk must not double the traffic (pg_receivewal reports every 10 s).
    const wait = this.lastFeedbackAt + FEEDBACK_MIN_MS - Date.now();
    if (wait <= 0) this.sendFeedback();
    else this.feedbackSoon ??= setTimeout(() => this.sendFeedback(), wait);
  }

  private lastFeedbackAt = 0;
  private feedbackSoon: NodeJS.Timeout | null = null;

  private sendFeedback(): void {
    if (this.feedbackSoon) clearTimeout(this.feedbackSoon);
    this.feedbackSoon = null;
    this.lastFeedbackAt = Date.now();
    this.conn?.feedback(this.acked);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.source.stop();
    if (this.feedbackTimer) clearInterval(this.feedbackTimer);
    this.conn?.close();
    this.kick();
    await this.loopDone;
    this.finish();
  }

  private finish(err?: Error): void {
    if (err) this.failure ??= err;
    this.finished = true;
    if (this.feedbackTimer) clearInterval(this.feedbackTimer);
    this.feedbackTimer = null;
    if (this.feedbackSoon) clearTimeout(this.feedbackSoon);
    this.feedbackSoon = null;
    const w = this.wakeReader;
    this.wakeReader = null;
    w?.();
  }

  /**
   * 'error' reports what the receiver recovers from by itself (a node
   * dropped, a connection lost): emitted only to listeners, so that an
   * application that does not listen is not crashed by Node's rule for
   * unhandled 'error' events.
   */
  private notify(e: Error & { nodeId?: string }): void {
    if (this.listenerCount('error') > 0) this.emit('error', e);
  }

  private kick(): void {
    const w = this.wakeLoop;
    this.wakeLoop = null;
    w?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<WalChunk> {
    this.startLoop();
    return {
      next: async (): Promise<IteratorResult<WalChunk>> => {
        for (;;) {
          const c = this.queue.shift();
          if (c) {
            this.queued -= c.data.length;
            if (this.paused && this.queued < (this.opts.maxQueuedBytes ?? 32 << 20) / 2) {
              this.paused = false;
              this.conn?.resume();
            }
            return { value: c, done: false };
          }
          if (this.failure) throw this.failure;
          if (this.finished) return { value: undefined, done: true };
          await new Promise<void>((r) => (this.wakeReader = r));
        }
      },
      return: async (): Promise<IteratorResult<WalChunk>> => {
        await this.stop();
        return { value: undefined, done: true };
      },
    };
  }

  private startLoop(): void {
    if (this.loopDone) return;
    this.source.start(
      (s) => {
        this.statuses.set(s.nodeId, s);
        this.policy.updateCandidate(
          // A node that does not know its commit_lsn yet (restarted) is kept but not chosen, as one at 0/0.
          { nodeId: s.nodeId, commitLsn: s.commitLsn ?? 0n, pgAddress: s.pgAddress, availabilityZone: s.availabilityZone },
          Date.now(),
        );
        this.emit('status', s);
        this.kick();
      },
      () => undefined,
    );
    this.feedbackTimer = setInterval(() => this.conn?.feedback(this.acked), 1000);
    this.loopDone = this.loop().catch((err: Error) => this.finish(err));
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const now = Date.now();
      const d = this.policy.decide(now);
      if (d.action === 'connect') {
        const status = this.statuses.get(d.candidate.nodeId);
        if (status) await this.switchTo(status, d.reason);
      }
      if (this.stopped) break;
      const at = this.policy.nextDecisionAt(Date.now());
      const wait = Math.max(10, Math.min(250, at === null ? 250 : at - Date.now()));
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        this.wakeLoop = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wakeLoop = null;
    }
    if (this.conn) {
      this.conn.close();
      await this.connDone;
    }
  }

  private async switchTo(status: NodeStatus, reason: SwitchReason): Promise<void> {
    const from = this.conn?.node.nodeId ?? null;
    if (this.conn) {
      this.conn.close();
      await this.connDone;
    }
    if (this.stopped) return;
    const ev: SwitchEvent = { from, to: status.nodeId, pgAddress: status.pgAddress, reason, description: describeReason(reason), at: this.next ?? 0n };
    this.emit('switch', ev);
    const now = Date.now();
    this.policy.connectionStarted(status.nodeId, now);
    const conn = new ReceiverConnection(
      status,
      {
        stream: this.opts.stream ?? DEFAULT_STREAM,
        startLsn: this.next,
        tli: this.tli,
        systemId: this.systemId,
        user: this.opts.user ?? 'postgres',
        password: this.opts.password,
        applicationName: this.opts.applicationName ?? 'walkeeper_receiver',
        connectTimeoutMs: this.policy.config.connectTimeoutMs,
        sink: this.opts.sink && !this.noPump ? { store: this.opts.sink.store, synchronous: this.opts.sink.synchronous ?? false, endLsn: this.opts.endLsn } : undefined,
      },
      {
        established: (startLsn, tli, systemId) => {
          if (this.conn !== conn) return;
          this.next = startLsn;
          this.policy.lastReceivedLsn = startLsn;
          this.tli = tli;
          this.systemId ??= systemId;
          this.policy.connectionEstablished(Date.now());
          conn.feedback(this.acked);
          this.emit('connect', { nodeId: status.nodeId, pgAddress: status.pgAddress, startLsn, tli });
        },
        data: (start, data, walEnd, tli) => {
          if (this.conn !== conn || this.stopped) return;
          const end = this.opts.endLsn;
          this.queue.push({ startLsn: start, endLsn: start + BigInt(data.length), data, tli });
          this.queued += data.length;
          this.next = start + BigInt(data.length);
          this.policy.walReceived(this.next, walEnd, Date.now());
          if (this.queued > (this.opts.maxQueuedBytes ?? 32 << 20) && !this.paused) {
            this.paused = true;
            conn.pause();
          }
          const w = this.wakeReader;
          this.wakeReader = null;
          w?.();
          if (end !== undefined && this.next > end) {
            this.stopped = true;
            this.source.stop();
            conn.close();
            this.kick();
            this.finish();
          }
        },
        keepalive: (walEnd) => {
          if (this.conn !== conn) return;
          this.policy.keepaliveReceived(walEnd, Date.now());
        },
        progress: (r) => {
          if (this.conn !== conn) return;
          const now = Date.now();
          this.next = r.received;
          if (r.flushed > this.acked) this.acked = r.flushed;
          if (r.messages > 0) this.policy.walReceived(r.received, r.walEnd, now);
          if (r.keepalives > 0) this.policy.keepaliveReceived(r.walEnd, now);
          this.emit('progress', { received: r.received, flushed: r.flushed });
        },
        noPump: () => {
          this.noPump = true;
        },
        timeline: (tli, startLsn, history) => {
          if (this.conn !== conn) return;
          this.histories.set(tli, history);
          this.tli = tli;
          this.emit('timeline', { tli, startLsn, history });
        },
      },
    );
    this.conn = conn;
    this.connDone = conn.run().then((end: ConnectionEnd) => {
      const t = Date.now();
      if (end.kind === 'endpos' || end.kind === 'store') {
        // Sink mode: done (WAL past endLsn is durable), or the directory cannot take more.
        this.stopped = true;
        this.source.stop();
        if (this.conn === conn) this.conn = null;
        this.kick();
        this.finish(end.kind === 'store' ? end.error : undefined);
        return;
      }
      if (end.kind === 'bad') {
        this.policy.markBad(status.nodeId, t);
        const e = Object.assign(new Error(`node ${status.nodeId} dropped: ${end.error.message}`), { nodeId: status.nodeId });
        this.notify(e);
      } else {
        this.policy.connectionEnded(t);
        if (end.kind === 'lost' && !this.stopped && this.conn === conn && !/switching to another node/.test(end.error.message)) {
          this.notify(Object.assign(new Error(`connection to ${status.nodeId} lost: ${end.error.message}`), { nodeId: status.nodeId }));
        }
      }
      if (this.conn === conn) this.conn = null;
      this.kick();
    });
  }
}

export { BadNode };
export type { NodeStatus, CandidateSource };
export const lsnText = formatLsn;
