/**
 * One stream directory's WAL, through the Rust store. This is the only
 * place in TypeScript that touches segment files; ingest appends and
 * flushes, senders frame, start-up scans and truncates.
 */
import {
  native,
  type FrameRequest,
  type IngestPumpHandle,
  type IngestPumpOptions,
  type PumpHandle,
  type PumpReport,
  type ReceivePumpOptions,
  type ScanOptions,
  type SendPumpHandle,
  type SendPumpReport,
  type ScanResult,
  type SegmentInfo,
  type StoreHandle,
  type StoreState,
} from '../native/binding.js';
import type { Lsn } from '../lsn.js';
import { MAX_SEND_SIZE } from '../defaults.js';

export { MAX_SEND_SIZE };
export type { PumpReport, SegmentInfo };
export { isWalcoreError, type WalcoreError, type WalcoreErrorCode } from '../native/errors.js';

export const XLOGDATA_HEADER_SIZE = 30;
/** Buffers one appendv call takes (the N-API layer reads at most 12 arguments). */
export const MAX_APPENDV = 10;

export type { FrameRequest };

/** What a pump is told besides the socket it is lent (and this store). */
type Lent<T> = Omit<T, 'fd' | 'pending' | 'store'>;

export class WalStore {
  private constructor(private readonly h: StoreHandle) {}

  static async open(dir: string, segmentSize: number, tli: number): Promise<WalStore> {
    return new WalStore(await native().storeOpen(dir, segmentSize, tli));
  }

  get state(): StoreState {
    return native().storeState(this.h);
  }

  setTimeline(tli: number): void {
    native().storeSetTimeline(this.h, tli);
  }

  list(): SegmentInfo[] {
    return native().storeList(this.h);
  }

  /** Appends at exactly `lsn`; resolves to the new write position. */
  append(lsn: Lsn, data: Buffer): Promise<Lsn> {
    return native().storeAppend(this.h, lsn, data);
  }

  /** Appends contiguous buffers (at most MAX_APPENDV) at exactly `lsn` in one thread-pool hop, without copying them together. */
  appendv(lsn: Lsn, data: Buffer[]): Promise<Lsn> {
    if (data.length === 0 || data.length > MAX_APPENDV) throw new RangeError(`appendv takes 1 to ${MAX_APPENDV} buffers`);
    return native().storeAppend(this.h, lsn, ...data);
  }

  /** Appends at exactly `lsn` and fsyncs, in one thread-pool hop; resolves to the new flush position. */
  appendFlush(lsn: Lsn, data: Buffer): Promise<Lsn> {
    return native().storeAppendFlush(this.h, lsn, data);
  }

  /** fsyncs what was appended; resolves to the new flush position. */
  flush(): Promise<Lsn> {
    return native().storeFlush(this.h);
  }

  /**
   * Lends a replication socket in COPY to a Rust pump that appends its
   * XLogData here (see crates/walcore/src/receive_pump.rs). `pending`: bytes already
   * read from the socket.
   */
  pump(fd: number, pending: Buffer, o: Lent<ReceivePumpOptions>): ReceivePump {
    return new ReceivePump(native().pumpOpen({ ...o, fd, pending, store: this.h }));
  }

  /**
   * Node ingest: lends a replication socket in COPY to a Rust pump on a
   * thread of its own. It appends the XLogData here, fsyncs as soon as
   * nothing more is readable, and sends the standby status updates itself
   * right after each fsync (see receive_pump.rs `Answer`). `onReport` runs on the
   * JS thread after progress, with everything since the previous report; the
   * one with `end` is the last.
   */
  ingestPump(
    fd: number,
    pending: Buffer,
    o: Lent<IngestPumpOptions>,
    onReport: (r: PumpReport) => void,
  ): IngestPump {
    const onNative = (r: PumpReport | Error) => {
      // (never throw back into the native call: Node would report it as uncaught)
      try {
        if (r instanceof Error) throw r;
        onReport(r);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    };
    return new IngestPump(
      native().ingestPumpStart({ ...o, fd, pending, store: this.h }, onNative),
    );
  }

  /**
   * A Rust pump that writes timeline `tli`'s WAL from here to a replication
   * socket in COPY, as XLogData of at most `maxSend` bytes, with sendfile
   * (see crates/walcore/src/send_pump.rs). Unix only.
   */
  sendPump(fd: number, tli: number, maxSend: number): SendPump {
    return new SendPump(native().sendPumpOpen({ fd, store: this.h, tli, maxSend }));
  }

  truncate(lsn: Lsn): Promise<void> {
    return native().storeTruncate(this.h, lsn);
  }

  removeBelow(segno: number): Promise<string[]> {
    return native().storeRemoveBelow(this.h, segno);
  }

  read(tli: number, lsn: Lsn, buf: Buffer): Promise<number> {
    return native().storeRead(this.h, tli, lsn, buf);
  }

  /**
   * Fills `buf` with one CopyData/XLogData message and returns its length.
   * Served synchronously when the WAL is in the page cache (the common case
   * for a caught-up replica), otherwise on the thread pool. `buf` must not be
   * touched until the returned value (or promise) is settled.
   */
  frame(buf: Buffer, r: FrameRequest): number | Promise<number> {
    const n = this.frameNoWait(buf, r);
    return n >= 0 ? n : this.frameAsync(buf, r);
  }

  /** The synchronous half of `frame`: -1 when the WAL is not in the page cache. */
  frameNoWait(buf: Buffer, r: FrameRequest): number {
    return native().storeFrameNoWait(this.h, buf, r.tli, r.start, r.end, r.walEnd, r.maxSend, r.sendTime);
  }

  /** Always on the thread pool (for tests and cold reads). */
  frameAsync(buf: Buffer, r: FrameRequest): Promise<number> {
    return native().storeFrame(this.h, buf, r.tli, r.start, r.end, r.walEnd, r.maxSend, r.sendTime);
  }

  putHistory(tli: number, content: string | Buffer): Promise<void> {
    return native().storePutHistory(this.h, tli, Buffer.isBuffer(content) ? content : Buffer.from(content));
  }

  async getHistory(tli: number): Promise<string | null> {
    const b = await native().storeGetHistory(this.h, tli);
    return b === null ? null : b.toString('utf8');
  }
}

/** Decodes records forward from `start` in `dir` and reports where valid WAL ends. */
export function findEndOfWal(dir: string, tli: number, segmentSize: number, start: Lsn, opts: ScanOptions = {}): Promise<ScanResult> {
  return native().findEndOfWal({ ...opts, dir, tli, segSize: segmentSize, start });
}

/** What both pumps share: one run at a time, stop(), and close() once the last run settled. */
abstract class LentPump<R> {
  private running: Promise<R> | null = null;

  protected track(p: Promise<R>): Promise<R> {
    this.running = p;
    return p;
  }

  abstract stop(): void;
  /** Drops the Rust side and its duplicate of the socket. */
  protected abstract release(): void;

  /** Closes the pump's duplicate of the socket, after the last run() settled. */
  async close(): Promise<void> {
    this.stop();
    await this.running?.catch(() => undefined);
    this.release();
  }
}

/** A running receive pump: run() until a report has `end`, then close(). */
export class ReceivePump extends LentPump<PumpReport> {
  constructor(private readonly h: PumpHandle) {
    super();
  }

  /** Works on the thread pool until something to act on, or `maxMs`. */
  run(maxMs: number): Promise<PumpReport> {
    return this.track(native().pumpRun(this.h, maxMs));
  }

  /** Makes a running run() return soon (within ~20 ms). */
  stop(): void {
    native().pumpStop(this.h);
  }

  protected release(): void {
    native().pumpClose(this.h);
  }
}

/** A running ingest pump (see WalStore.ingestPump). */
export class IngestPump {
  constructor(private readonly h: IngestPumpHandle) {}

  /** Queues whole protocol messages (hot standby feedback): while the pump runs, only it writes to the socket. */
  send(message: Buffer): void {
    native().ingestPumpSend(this.h, message);
  }

  /** Asks the pump to fsync, acknowledge and end (its last report says "stopped"). */
  stop(): void {
    native().ingestPumpStop(this.h);
  }
}

/** A send pump: run() while behind, writing each report's tail before anything else; close() at the end. */
export class SendPump extends LentPump<SendPumpReport> {
  constructor(private readonly h: SendPumpHandle) {
    super();
  }

  /**
   * Sends [start, end) without blocking, on the pump's own thread, until done,
   * full, or `budget` bytes; `zeroCopy`: payloads by sendfile (see send_pump.rs);
   * `waitMs`: how long, in all, the run may wait for room in a full socket.
   */
  run(start: Lsn, end: Lsn, walEnd: Lsn, budget: number, zeroCopy: boolean, waitMs = 0): Promise<SendPumpReport> {
    return this.track(native().sendPumpRun(this.h, { start, end, walEnd, budget, zeroCopy, waitMs }));
  }

  /** Makes a running run() return before its next message. */
  stop(): void {
    native().sendPumpStop(this.h);
  }

  protected release(): void {
    native().sendPumpClose(this.h);
  }
}
