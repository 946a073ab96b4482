/**
 * The JavaScript path of ingest (TLS, or `pump: false`): XLogData is queued
 * as it arrives and written through the thread pool with group commit.
 * Everything that has arrived is appended, and the fsync happens when
 * nothing more is immediately readable or `flushBytes` were appended since
 * the last one; reading from the upstream pauses above `maxQueuedBytes`.
 */
import type { Lsn } from '../lsn.js';
import type { UpstreamCopy } from './copy.js';

/** What goes down in one append: one thread-pool hop per few MiB instead of one per message. */
const MAX_WRITE = 4 * 1024 * 1024;

export interface WriterConfig {
  flushBytes: number;
  maxQueuedBytes: number;
}

export class GroupCommitWriter {
  private readonly queue: { start: Lsn; data: Buffer }[] = [];
  private queued = 0;
  private paused = false;
  private done = false;
  private wakeUp: (() => void) | null = null;
  /** The fsync in flight; one at a time. */
  private flushing: Promise<void> | null = null;
  private flushAgain = false;
  private readonly running: Promise<void>;

  constructor(
    private readonly ctx: UpstreamCopy,
    private readonly cfg: WriterConfig,
    /** After each fsync: the node decides commit_lsn. */
    private readonly flushed: () => void,
  ) {
    ctx.onFatal = () => this.wake();
    // A failed write must end the copy at once: the upstream keeps sending, and the copy would not end by itself.
    this.running = this.run().catch((err: Error) => ctx.storageFail(`cannot write received WAL: ${err.message}`));
  }

  /** Queues checked, contiguous WAL. */
  push(start: Lsn, data: Buffer): void {
    this.queue.push({ start, data });
    this.queued += data.length;
    if (this.queued > this.cfg.maxQueuedBytes && !this.paused) {
      this.paused = true;
      this.ctx.copy.pause();
    }
    this.wake();
  }

  /** The copy ended: writes and fsyncs what is queued (unless it failed), then resolves. */
  finish(): Promise<void> {
    this.done = true;
    this.wake();
    return this.running;
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private resumeIfDrained(): void {
    if (this.paused && this.queued < this.cfg.maxQueuedBytes / 2) {
      this.paused = false;
      this.ctx.copy.resume();
    }
  }

  // Group commit, pipelined: one fsync at a time runs on the thread pool
  // while new WAL keeps being appended; it covers everything appended
  // before it started, and when it ends, what came meanwhile gets the
  // next one.
  private startFlush(): void {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    const ctx = this.ctx;
    const p = (async () => {
      await ctx.stream.flushWal();
      this.flushed();
      ctx.sendStatus(false);
    })().finally(() => {
      this.flushing = null;
      if (this.flushAgain && !ctx.fatal) {
        this.flushAgain = false;
        this.startFlush();
      }
    });
    this.flushing = p;
    p.catch((err: Error) => ctx.storageFail(`cannot flush received WAL: ${err.message}`));
  }

  private async run(): Promise<void> {
    const ctx = this.ctx;
    const queue = this.queue;
    let unflushed = 0;
    while (!this.done || queue.length > 0) {
      if (ctx.fatal) return;
      if (queue.length === 0) {
        // Nothing more is readable right now: make what we have durable.
        if (unflushed > 0) {
          this.startFlush();
          unflushed = 0;
        }
        await new Promise<void>((r) => (this.wakeUp = r));
        continue;
      }
      let n = 0;
      let bytes = 0;
      while (n < queue.length && (n === 0 || bytes + queue[n]!.data.length <= MAX_WRITE)) bytes += queue[n++]!.data.length;
      const items = queue.splice(0, n);
      const data = items.length === 1 ? items[0]!.data : Buffer.concat(items.map((i) => i.data), bytes);
      this.queued -= data.length;
      if (queue.length === 0 && unflushed === 0 && !this.flushing) {
        // Caught up (a commit's worth of WAL, typically): write and fsync
        // in one thread-pool hop, since the primary's synchronous commit
        // waits for every hop.
        const done = ctx.stream.appendAndFlushWal(items[0]!.start, data).then((f) => {
          ctx.written = f;
          this.flushed();
          ctx.sendStatus(false);
        });
        // (a failure is handled below, where the writer awaits it)
        this.flushing = done
          .finally(() => {
            this.flushing = null;
          })
          .catch(() => undefined);
        try {
          await done;
        } catch (err) {
          ctx.storageFail(`cannot write received WAL: ${(err as Error).message}`);
          return;
        }
        ctx.progressed = true;
        this.resumeIfDrained();
        continue;
      }
      ctx.written = await ctx.stream.appendWal(items[0]!.start, data);
      ctx.progressed = true;
      unflushed += data.length;
      this.resumeIfDrained();
      if (unflushed >= this.cfg.flushBytes) {
        this.startFlush();
        unflushed = 0;
      }
    }
    if (ctx.fatal) return;
    if (unflushed > 0) this.startFlush();
    while (this.flushing) await this.flushing;
  }
}
