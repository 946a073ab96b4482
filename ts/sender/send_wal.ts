/**
 * The WAL sender: one START_REPLICATION, from CopyBothResponse to the end
 * of the copy. It follows PostgreSQL's walsender.c where clients can tell
 * the difference, and Neon's safekeeper send_wal.rs where the WAL's end is
 * a quorum's commit_lsn rather than a local flush pointer:
 *
 * - regular clients see WAL up to commit_lsn, recovery clients (a peer
 *   catching up) up to flush_lsn and then a clean end;
 * - every XLogData and keepalive carries the latest end position as walEnd,
 *   never 0/0 (Neon bug: a receiver took 0/0 for "no WAL" and switched away);
 * - waiting is on the commit_lsn (or flush_lsn) watch, so new WAL goes out
 *   in the same tick it becomes visible; the 1 s timer only makes keepalives;
 * - two reused message buffers per connection: a slow client holds at most
 *   two messages' worth of memory, a fast one is never throttled by timers;
 * - a client more than PUMP_MIN behind is caught up by the Rust send pump
 *   (on a thread of its own per connection, as PostgreSQL has a walsender
 *   per client): eight replicas catching up at once would otherwise all be
 *   framed and written on this one thread, while PostgreSQL's eight
 *   walsenders use every core.
 */
import { formatLsn, segmentFileName, type Lsn } from '../lsn.js';
import { PgError, ProtocolError, SQLSTATE } from '../protocol/errors.js';
import type { FrontendMessage } from '../protocol/messages.js';
import {
  decodeHotStandbyFeedback,
  decodeNeonFeedback,
  decodeStandbyStatus,
  keepalive,
  pgNow,
  xlogDataHeader,
} from '../protocol/replication.js';
import { backend } from '../protocol/serializer.js';
import type { ServerConnection } from '../server/connection.js';
import { nextTimelineRows } from '../server/walsender.js';
import type { Logger } from '../log.js';
import type { Replica } from '../stream/replica.js';
import { MAX_SEND_SIZE } from '../defaults.js';
import type { Slot, Stream } from '../stream/stream.js';
import { isWalcoreError, type SendPump, XLOGDATA_HEADER_SIZE } from '../wal/wal_storage.js';

export interface SenderConfig {
  /** Idle time after which a keepalive (reply requested) is sent. Neon: POLL_STATE_TIMEOUT 1 s. */
  keepaliveIntervalMs: number;
  /** No message from the client for this long ends the connection (wal_sender_timeout). */
  senderTimeoutMs: number;
  /** Largest XLogData payload (MAX_SEND_SIZE). */
  maxSendSize: number;
  /** Catch clients up through the Rust send pump where the platform can (Unix, no TLS). Off: WALKEEPER_SEND_PUMP=0 (read by `walkeeper node`). */
  sendPump: boolean;
}

export const DEFAULT_SENDER_CONFIG: SenderConfig = {
  keepaliveIntervalMs: 1000,
  senderTimeoutMs: 60_000,
  maxSendSize: MAX_SEND_SIZE,
  sendPump: true,
};

/**
 * A client at least this far behind is served by the send pump. Closer to
 * the end — a caught-up replica getting each commit — one message framed on
 * this thread from the page cache costs less than a round trip to the pump's thread.
 */
const PUMP_MIN = 512 * 1024;
/**
 * Bytes one pump run may send: bounds how long the client's own writes
 * (keepalive replies) wait, ~10 ms at loopback speed. Each run costs a
 * round trip to another thread; with 1 MiB runs eight consumers got 15% less.
 */
const PUMP_BUDGET = 16 * 1024 * 1024;
/**
 * How long one run may wait on its own thread for room in a full socket
 * (see `Room` in send_pump.rs) before it hands the tail back: also bounds
 * how long our own writes wait behind a slow client. A keepalive reply a
 * tenth of a second late is nothing against wal_sender_timeout.
 */
const PUMP_WAIT_MS = 100;

export interface StartRequest {
  start: Lsn;
  tli: number;
  slot: Slot | null;
  recovery: boolean;
}

/** How a START_REPLICATION ended, for the session to finish the command. */
export type SenderEnd =
  /** The copy ended normally; the session sends C START_REPLICATION and Z. */
  | { kind: 'done' }
  /** An ErrorResponse was sent inside the copy; the session sends Z. */
  | { kind: 'error-sent' }
  /** The connection is gone or was closed on purpose. */
  | { kind: 'closed' };

export class WalSender {
  private readonly bufs: Buffer[];
  private readonly busy: boolean[] = [false, false];
  private bufferFree: (() => void) | null = null;
  private sent: Lsn;
  private stopRequested = false;
  private clientDone = false;
  private wakeSender: (() => void) | null = null;
  private lastClientMessageAt = Date.now();
  private pingSentAt = 0;
  private endReason: { code: string; message: string } | null = null;
  private shuttingDown = false;
  /** Set when the send side has finished the copy: the receive loop must not take the client's next command. */
  private copyOver = false;
  private readonly log: Logger;
  private readonly historicEnd: Lsn | null;
  /** Opened at the first catch-up; false once it cannot be used on this connection. */
  private pump: SendPump | null | false = null;

  constructor(
    private readonly stream: Stream,
    private readonly conn: ServerConnection,
    private readonly replica: Replica,
    private readonly req: StartRequest,
    private readonly cfg: SenderConfig,
    log: Logger,
  ) {
    this.log = log;
    this.sent = req.start;
    this.bufs = [Buffer.allocUnsafe(XLOGDATA_HEADER_SIZE + cfg.maxSendSize), Buffer.allocUnsafe(XLOGDATA_HEADER_SIZE + cfg.maxSendSize)];
    this.historicEnd = req.tli === stream.tli ? null : (stream.timelineEnd(req.tli) ?? null);
  }

  get sentLsn(): Lsn {
    return this.sent;
  }

  /** Bytes this sender has handed to the socket that the kernel has not taken yet. */
  get queuedBytes(): number {
    return this.conn.socket.writableLength;
  }

  get replicaInfo(): Replica {
    return this.replica;
  }

  /** The position this client may be sent up to right now. */
  private endPtr(): Lsn {
    if (this.historicEnd !== null) return this.historicEnd;
    return this.req.recovery ? this.stream.flushLsn : this.stream.commitLsn;
  }

  /** walEnd for messages: the client's end of WAL, never below what was sent (so never 0/0). */
  private walEnd(): Lsn {
    const e = this.endPtr();
    return e > this.sent ? e : this.sent;
  }

  /** Ends the stream from the server side with SQLSTATE 00000 ("ending streaming to …"), as Neon's safekeeper does. */
  endStreaming(why: string): void {
    this.endReason ??= {
      code: SQLSTATE.SUCCESSFUL_COMPLETION,
      message: `ending streaming to ${this.replica.name} at ${formatLsn(this.sent)}: ${why}`,
    };
    this.kick();
  }

  /** A CancelRequest for this session: end with 57014, as a walsender does on SIGINT. */
  cancel(): void {
    this.endReason ??= { code: SQLSTATE.QUERY_CANCELED, message: 'canceling statement due to user request' };
    this.kick();
  }

  /** Node shutdown: send what is left, wait for the client to confirm it, then `C COPY 0` and close. */
  shutdown(): void {
    this.shuttingDown = true;
    this.kick();
  }

  private kick(): void {
    const w = this.wakeSender;
    this.wakeSender = null;
    w?.();
  }

  /** Streams until the copy ends. The caller has sent nothing yet for this command. */
  async run(): Promise<SenderEnd> {
    this.conn.write(backend.copyBothResponse());
    this.replica.state = 'catchup';
    const receiving = this.receiveLoop();
    let end: SenderEnd;
    const stopPump = () => {
      if (this.pump) this.pump.stop();
    };
    void this.conn.closed.then(stopPump);
    try {
      end = await this.sendLoop();
    } finally {
      this.copyOver = true;
      this.conn.interruptRead();
      if (this.pump) await this.pump.close();
    }
    await receiving.catch(() => undefined);
    return end;
  }

  // --- sending ----------------------------------------------------------------

  private async acquireBuffer(): Promise<number> {
    for (;;) {
      const i = this.busy.indexOf(false);
      if (i >= 0) return i;
      if (this.conn.isClosed) return -1;
      await new Promise<void>((resolve) => (this.bufferFree = resolve));
    }
  }

  private release(i: number): void {
    this.busy[i] = false;
    const f = this.bufferFree;
    this.bufferFree = null;
    f?.();
  }

  private async sendLoop(): Promise<SenderEnd> {
    const { stream, req } = this;
    const watch = req.recovery ? stream.flushWatch : stream.commitWatch;
    // Recovery clients get what is flushed now and then a clean end (Neon's stop_pos).
    const stopAt = req.recovery && this.historicEnd === null ? stream.flushLsn : null;
    let idleSince = Date.now();
    /** When the watch moved that last woke this (caught-up) sender: the next message's delay is measured from it. */
    let wokenAt: number | null = null;
    for (;;) {
      if (this.conn.isClosed) return { kind: 'closed' };
      if (this.endReason) return this.sendEndError(this.endReason.code, this.endReason.message);
      if (this.stopRequested) return this.finishCopy();
      const end = stopAt !== null && stopAt < this.endPtr() ? stopAt : this.endPtr();
      if (this.sent < end && stream.servedFromArchive(this.sent)) {
        const r = await this.sendArchived(end);
        if (r) return r;
        idleSince = Date.now();
        continue;
      }
      if (this.sent < end && end - this.sent >= PUMP_MIN && this.pump !== false && this.cfg.sendPump) {
        wokenAt = null; // (a run of the pump is not a caught-up client's next message)
        const r = await this.pumpSend(end);
        if (r) return r;
        idleSince = Date.now();
        this.maybePing();
        continue;
      }
      if (this.sent < end) {
        const i = await this.acquireBuffer();
        if (i < 0) return { kind: 'closed' };
        if (this.stopRequested || this.endReason) {
          this.release(i);
          continue;
        }
        const buf = this.bufs[i]!;
        this.busy[i] = true;
        let n: number;
        try {
          const r = stream.store.frame(buf, { tli: req.tli, start: this.sent, end, walEnd: this.walEnd(), maxSend: this.cfg.maxSendSize });
          n = typeof r === 'number' ? r : await r;
        } catch (err) {
          this.release(i);
          // Retention removed it meanwhile, after it was offloaded: read on from there.
          if (isWalcoreError(err, 'WALCORE_REMOVED') && stream.servedFromArchive(this.sent)) continue;
          return this.readFailed(err as Error);
        }
        this.sent += BigInt(n - XLOGDATA_HEADER_SIZE);
        this.replica.sentLsn = this.sent;
        stream.bytesSent += n - XLOGDATA_HEADER_SIZE;
        this.conn.write(buf.subarray(0, n), () => this.release(i));
        if (wokenAt !== null) {
          // The first message after waking for new WAL: how long since the watch moved.
          stream.onSendDelay?.((performance.now() - wokenAt) / 1000);
          wokenAt = null;
        }
        idleSince = Date.now();
        this.maybePing();
        continue;
      }
      // Caught up with what this client may see.
      if (this.historicEnd !== null && this.sent >= this.historicEnd) return this.endOfTimeline();
      if (stopAt !== null && this.sent >= stopAt) {
        return this.sendEndError(SQLSTATE.SUCCESSFUL_COMPLETION, `ending streaming to ${this.replica.name} at ${formatLsn(this.sent)}, recovery finished`);
      }
      if (this.shuttingDown) return this.shutdownCopy();
      if (this.replica.state === 'catchup') {
        this.replica.state = 'streaming';
        this.log.info({ lsn: formatLsn(this.sent) }, 'caught up, streaming');
      }
      const waitMs = Math.max(0, idleSince + this.cfg.keepaliveIntervalMs - Date.now());
      const w = watch.waitAbove(this.sent, waitMs);
      this.wakeSender = w.cancel;
      const r = await w.promise;
      this.wakeSender = null;
      if (r === 'advanced') wokenAt = watch.raisedAt;
      if (r === 'timeout') {
        this.sendKeepalive(true);
        idleSince = Date.now();
      }
      if (Date.now() - this.lastClientMessageAt > this.cfg.senderTimeoutMs) {
        this.log.warn({ timeout_ms: this.cfg.senderTimeoutMs }, 'terminating walsender due to replication timeout');
        this.conn.close();
        return { kind: 'closed' };
      }
    }
  }

  /**
   * One send pump run: lend the socket's write side once our own writes
   * reached the kernel, let the pump send up to `end`, then write the rest
   * of a message it could not finish and whatever was held back meanwhile.
   * Waiting for that tail to be written is how a slow client slows us down.
   * Returns how the copy ended, or null to go on.
   */
  private async pumpSend(end: Lsn): Promise<SenderEnd | null> {
    // (lendWrites waits for every earlier write's callback, the frame buffers' releases included)
    const fd = await this.conn.lendWrites();
    if (fd === null) {
      if (this.conn.isClosed) return { kind: 'closed' };
      this.pump = false; // TLS or no descriptor: the JS path serves this connection
      return null;
    }
    let r;
    try {
      if (!this.pump) this.pump = this.stream.store.sendPump(fd, this.req.tli, this.cfg.maxSendSize);
      // Payloads copied, never sendfile'd: see "Zero copy or not" in send_pump.rs.
      r = await this.pump.run(this.sent, end, this.walEnd(), PUMP_BUDGET, false, PUMP_WAIT_MS);
    } catch (err) {
      this.conn.returnWrites();
      this.log.info({ err: (err as Error).message }, 'send pump unavailable, sending from JS');
      this.pump = false;
      return null;
    }
    const n = r.sent - this.sent;
    this.sent = r.sent;
    this.replica.sentLsn = this.sent;
    this.stream.bytesSent += Number(n);
    this.stream.bytesPumped += Number(n);
    if (r.tail) {
      const tail = r.tail;
      await new Promise<void>((resolve) => this.conn.returnWrites(tail, () => resolve()));
    } else {
      this.conn.returnWrites();
    }
    switch (r.end) {
      case 'io':
        this.log.info({ err: r.message, lsn: formatLsn(this.sent) }, 'connection failed while sending WAL');
        this.conn.close();
        return { kind: 'closed' };
      case 'store':
        if (r.code === 'WALCORE_REMOVED' && this.stream.servedFromArchive(this.sent)) return null;
        return this.readFailed(Object.assign(new Error(r.message), { code: r.code }));
      default:
        return null;
    }
  }

  /**
   * Read-through: the segment at `sent` from object storage, sent as
   * XLogData exactly as local WAL would be (the client cannot tell), up to
   * the segment's end or `end`. Returns how the copy ended, or null to go
   * on (with the next segment, or with local WAL once `sent` reaches it).
   */
  private async sendArchived(end: Lsn): Promise<SenderEnd | null> {
    const { stream } = this;
    const seg = BigInt(stream.segmentSize);
    const segno = this.sent / seg;
    let data: Buffer | null;
    try {
      data = await stream.archive!.segment(segno);
    } catch (err) {
      this.log.error({ err: (err as Error).message, lsn: formatLsn(this.sent) }, 'cannot read WAL back from object storage');
      return this.sendEndError(SQLSTATE.INTERNAL_ERROR, `could not read WAL at ${formatLsn(this.sent)} of stream ${stream.name} from object storage`);
    }
    if (data === null) {
      const name = segmentFileName(this.req.tli, Number(segno), stream.segmentSize);
      return this.sendEndError(SQLSTATE.UNDEFINED_FILE, `requested WAL segment ${name} has already been removed`);
    }
    if (this.replica.state === 'catchup' && this.sent % seg === 0n) this.log.debug({ lsn: formatLsn(this.sent) }, 'sending WAL read back from object storage');
    const segStart = segno * seg;
    const stop = segStart + seg < end ? segStart + seg : end;
    while (this.sent < stop) {
      if (this.conn.isClosed || this.endReason || this.stopRequested) return null;
      const n = Number(stop - this.sent < BigInt(this.cfg.maxSendSize) ? stop - this.sent : BigInt(this.cfg.maxSendSize));
      const off = Number(this.sent - segStart);
      this.conn.write(xlogDataHeader(this.sent, this.walEnd(), pgNow(), n));
      const more = this.conn.write(data.subarray(off, off + n));
      this.sent += BigInt(n);
      this.replica.sentLsn = this.sent;
      stream.bytesSent += n;
      // A slow client slows us down: wait for the kernel to take what is queued.
      if (!more) await new Promise<void>((resolve) => this.conn.write(Buffer.alloc(0), () => resolve()));
      this.maybePing();
    }
    return null;
  }

  /** Like PostgreSQL, ask for a reply when the client has been silent for half the timeout. */
  private maybePing(): void {
    const now = Date.now();
    if (now - this.lastClientMessageAt > this.cfg.senderTimeoutMs / 2 && now - this.pingSentAt > this.cfg.senderTimeoutMs / 2) {
      this.sendKeepalive(true);
    }
    if (now - this.lastClientMessageAt > this.cfg.senderTimeoutMs) {
      this.log.warn({ timeout_ms: this.cfg.senderTimeoutMs }, 'terminating walsender due to replication timeout');
      this.conn.close();
    }
  }

  private sendKeepalive(replyRequested: boolean): void {
    if (replyRequested) this.pingSentAt = Date.now();
    this.conn.write(keepalive(this.walEnd(), pgNow(), replyRequested));
  }

  private readFailed(err: Error): SenderEnd {
    // The stream was removed (or suspended) under this read: its files went with it. The end asked for is the news, not the read.
    if (this.endReason) return this.sendEndError(this.endReason.code, this.endReason.message);
    if (isWalcoreError(err, 'WALCORE_REMOVED')) {
      return this.sendEndError(SQLSTATE.UNDEFINED_FILE, err.message.replace(/^.*?(requested WAL segment)/, '$1'));
    }
    this.log.error({ err: err.message, lsn: formatLsn(this.sent) }, 'cannot read WAL');
    return this.sendEndError(SQLSTATE.INTERNAL_ERROR, `could not read WAL at ${formatLsn(this.sent)} of stream ${this.stream.name}`);
  }

  /** An ErrorResponse inside the copy; PostgreSQL then leaves COPY mode and sends ReadyForQuery. */
  private sendEndError(code: string, message: string): SenderEnd {
    const err = new PgError(code, message);
    if (code === SQLSTATE.SUCCESSFUL_COMPLETION) this.log.info(message);
    else this.log.warn({ code }, message);
    this.conn.write(backend.errorResponse(err));
    return { kind: 'error-sent' };
  }

  /**
   * The client asked to stop (CopyDone): answer with our own CopyDone, and,
   * on a historic timeline, the next timeline's result set; then the
   * session completes the command.
   */
  private finishCopy(): SenderEnd {
    this.conn.write(backend.copyDone());
    this.sendNextTimelineResult();
    this.conn.write(backend.commandComplete('START_STREAMING'));
    return { kind: 'done' };
  }

  private sendNextTimelineResult(): void {
    if (this.historicEnd === null) return;
    const next = this.stream.nextTimeline(this.req.tli);
    if (!next) return;
    this.conn.write(nextTimelineRows(next.tli, next.start));
  }

  /**
   * End of a historic timeline: CopyDone, wait for the client's CopyDone,
   * then the next timeline and where it starts. pg_receivewal then asks for
   * that timeline's history and restarts at the segment start; a standby
   * sends IDENTIFY_SYSTEM and START_REPLICATION again on this connection.
   */
  private async endOfTimeline(): Promise<SenderEnd> {
    this.log.info({ tli: this.req.tli, end: formatLsn(this.sent) }, 'end of timeline reached');
    this.conn.write(backend.copyDone());
    while (!this.clientDone) {
      if (this.conn.isClosed) return { kind: 'closed' };
      await new Promise<void>((resolve) => {
        this.wakeSender = resolve;
        setTimeout(resolve, this.cfg.keepaliveIntervalMs).unref();
      });
      this.wakeSender = null;
      if (Date.now() - this.lastClientMessageAt > this.cfg.senderTimeoutMs) {
        this.conn.close();
        return { kind: 'closed' };
      }
    }
    this.sendNextTimelineResult();
    this.conn.write(backend.commandComplete('START_STREAMING'));
    return { kind: 'done' };
  }

  /**
   * Shutdown as PostgreSQL does it: all WAL sent, a keepalive asking for a
   * reply, then wait until the client reports it has written everything,
   * then `C "COPY 0"` while still in COPY, and close.
   */
  private async shutdownCopy(): Promise<SenderEnd> {
    this.replica.state = 'stopping';
    this.sendKeepalive(true);
    const deadline = Date.now() + Math.min(this.cfg.senderTimeoutMs, 10_000);
    const confirmed = () => {
      const f = this.replica.feedback;
      return (f.flushLsn !== 0n ? f.flushLsn : f.writeLsn) >= this.sent;
    };
    while (!confirmed() && !this.conn.isClosed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.wakeSender = resolve;
        setTimeout(resolve, 100).unref();
      });
      this.wakeSender = null;
    }
    this.conn.write(backend.commandComplete('COPY 0'));
    this.conn.close();
    return { kind: 'closed' };
  }

  // --- receiving ----------------------------------------------------------------

  private async receiveLoop(): Promise<void> {
    while (!this.copyOver) {
      const msg = await this.conn.nextMessage();
      if (msg === undefined) return;
      if (msg === null) {
        this.kick();
        return;
      }
      this.lastClientMessageAt = Date.now();
      this.replica.lastMessageAt = this.lastClientMessageAt;
      try {
        if (!this.onClientMessage(msg)) return;
      } catch (err) {
        const e = err instanceof PgError ? err : new ProtocolError((err as Error).message);
        this.log.warn({ err: e.message }, 'bad message from client during COPY');
        this.conn.fatal(e);
        this.kick();
        return;
      }
    }
  }

  /** Handles one client message during COPY; false ends the receive loop. */
  private onClientMessage(msg: FrontendMessage): boolean {
    switch (msg.type) {
      case 'copyData':
        this.onCopyData(msg.data);
        return true;
      case 'copyDone':
        this.clientDone = true;
        this.stopRequested = true;
        this.kick();
        return false;
      case 'terminate':
        this.conn.close();
        this.kick();
        return false;
      default:
        throw new ProtocolError(`invalid standby message type "${msg.type === 'other' ? msg.code : msg.type}"`);
    }
  }

  private onCopyData(data: Buffer): void {
    if (data.length === 0) throw new ProtocolError('empty CopyData message from standby');
    const f = this.replica.feedback;
    switch (data[0]) {
      case 0x72: {
        // 'r': standby status update
        const r = decodeStandbyStatus(data);
        f.writeLsn = r.write;
        f.flushLsn = r.flush;
        f.applyLsn = r.apply;
        f.replyTime = r.sendTime;
        this.replica.lastFeedbackAt = new Date();
        if (this.req.slot && r.flush !== 0n) this.stream.advanceSlot(this.req.slot, r.flush);
        if (r.replyRequested) this.sendKeepalive(false);
        this.stream.emit('feedback', this.replica);
        return;
      }
      case 0x68: {
        // 'h': hot standby feedback
        const h = decodeHotStandbyFeedback(data);
        f.xmin = h.xmin;
        f.xminEpoch = h.xminEpoch;
        f.catalogXmin = h.catalogXmin;
        f.catalogXminEpoch = h.catalogXminEpoch;
        this.replica.lastFeedbackAt = new Date();
        this.stream.emit('feedback', this.replica);
        return;
      }
      case 0x7a: {
        // 'z': Neon-style receiver feedback
        const z = decodeNeonFeedback(data);
        if (z.lastReceivedLsn !== undefined) f.lastReceivedLsn = z.lastReceivedLsn;
        if (z.diskConsistentLsn !== undefined) f.diskConsistentLsn = z.diskConsistentLsn;
        if (z.remoteConsistentLsn !== undefined) f.remoteConsistentLsn = z.remoteConsistentLsn;
        if (z.currentTimelineSize !== undefined) f.currentTimelineSize = z.currentTimelineSize;
        this.replica.lastFeedbackAt = new Date();
        this.stream.emit('feedback', this.replica);
        return;
      }
      default:
        this.log.warn({ tag: String.fromCharCode(data[0]!) }, 'unknown feedback message tag from client, ignored');
    }
  }
}
