/**
 * An LSN that only goes up, and waiters for it to pass a mark. Senders wait
 * on the commit_lsn (or flush_lsn) watch instead of polling: a new value
 * wakes exactly the senders it lets move, in the same tick.
 */
import type { Lsn } from '../lsn.js';

interface Waiter {
  above: Lsn;
  resolve: (r: WaitResult) => void;
  timer: NodeJS.Timeout | undefined;
}

export type WaitResult = 'advanced' | 'timeout' | 'cancelled';

export class LsnWatch {
  private waiters = new Set<Waiter>();
  private listeners = new Set<(lsn: Lsn) => void>();

  /** When the value was last raised (performance.now(), ms): how late a waiter got to it is measured from here. */
  raisedAt = 0;

  constructor(private current: Lsn = 0n) {}

  get value(): Lsn {
    return this.current;
  }

  /** Raises the value (lower values are ignored: the watch is monotonic). */
  set(lsn: Lsn): boolean {
    if (lsn <= this.current) return false;
    this.current = lsn;
    this.raisedAt = performance.now();
    for (const w of this.waiters) {
      if (lsn > w.above) this.settle(w, 'advanced');
    }
    for (const l of this.listeners) l(lsn);
    return true;
  }

  /**
   * Calls `fn` synchronously on every raise, before the caller of set() goes
   * on (waiters only run at the next microtask): for work that must leave
   * the process first, such as telling the peers about a flush before the
   * ingest acknowledges it upstream. Returns the unsubscribe function.
   */
  listen(fn: (lsn: Lsn) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Lowers the value: only when local WAL is cut back (a timeline switch
   * that diverged). Waiters keep waiting for the new value to pass them.
   */
  resetTo(lsn: Lsn): void {
    if (lsn < this.current) this.current = lsn;
  }

  /** Resolves when the value is above `above`, after `timeoutMs`, or on `cancel()`. */
  waitAbove(above: Lsn, timeoutMs: number): { promise: Promise<WaitResult>; cancel: () => void } {
    let waiter!: Waiter;
    const promise = new Promise<WaitResult>((resolve) => {
      waiter = { above, resolve, timer: undefined };
    });
    if (this.current > above) {
      waiter.resolve('advanced');
      return { promise, cancel: () => {} };
    }
    waiter.timer = setTimeout(() => this.settle(waiter, 'timeout'), timeoutMs);
    this.waiters.add(waiter);
    return { promise, cancel: () => this.settle(waiter, 'cancelled') };
  }

  /** Wakes every waiter with 'cancelled' (stream suspended or node stopping). */
  cancelAll(): void {
    for (const w of this.waiters) this.settle(w, 'cancelled');
  }

  get waiting(): number {
    return this.waiters.size;
  }

  private settle(w: Waiter, r: WaitResult): void {
    if (!this.waiters.delete(w)) return;
    if (w.timer) clearTimeout(w.timer);
    w.resolve(r);
  }
}
