/**
 * commit_lsn is durable before anyone hears of it.
 *
 * A node tells commit_lsn to its clients (walEnd, and the WAL it serves up
 * to there), to its peers (its status) and to receivers choosing a node.
 * After a crash it must not tell them less: a receiver that was handed WAL
 * up to C and comes back would be refused its own position, and a client
 * comparing two reports would see history shrink. The control file is
 * written lazily (a second behind), so before this class a restart could
 * bring commit_lsn back by up to a second of WAL — the simulator's first
 * finding (docs/simulation.md).
 *
 * So a new commit_lsn is first written (one small O_DSYNC write on the
 * thread pool; see wal/commit_file.ts) and only then published on the watch
 * that senders, peers and the offloader follow: the watch's value is the
 * durable one. Writes are coalesced: while one is in flight, further raises
 * only move the target, and the next write takes the latest value. The
 * store and the timer are callbacks so that the simulator can give its own
 * disk and clock.
 */
import type { Lsn } from '../lsn.js';
import type { LsnWatch } from './watch.js';

export interface CommitStore {
  /** Makes `lsn` durable as commit_lsn; `done` once it is (or with why not). */
  write(lsn: Lsn, done: (err: Error | null) => void): void;
}

/** Runs `fn` after `ms`; returns what cancels it. The simulator gives its own clock. */
export type Defer = (fn: () => void, ms: number) => () => void;

const realDefer: Defer = (fn, ms) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return () => clearTimeout(t);
};

export class DurableCommit {
  private wanted: Lsn;
  /** A write put off (nobody waits on commit_lsn at once): what cancels it. */
  private deferred: (() => void) | null = null;
  private writing = false;
  /** Bumped by resetTo: a write begun before it must not publish its value. */
  private generation = 0;
  private written = 0;
  private idle: (() => void)[] = [];

  constructor(
    /** The published value: raised only once durable. */
    readonly watch: LsnWatch,
    private readonly store: CommitStore,
    private readonly onError: (err: Error) => void,
    private readonly defer: Defer = realDefer,
  ) {
    this.wanted = watch.value;
  }

  /**
   * Asks for commit_lsn `lsn` (never lowers it). `waitMs` > 0 lets the write
   * wait that long, gathering the raises that come meanwhile into it: for a
   * stream where no client waits on commit_lsn, so that a busy node does not
   * add a write to stable storage to every flush (the disk is shared with
   * the WAL's own fsyncs). A raise with no wait writes at once.
   */
  raise(lsn: Lsn, waitMs = 0): void {
    if (lsn <= this.wanted) return;
    this.wanted = lsn;
    if (waitMs <= 0 || this.writing) {
      this.kickNow();
      return;
    }
    this.deferred ??= this.defer(() => {
      this.deferred = null;
      this.kick();
    }, waitMs);
  }

  private kickNow(): void {
    this.deferred?.();
    this.deferred = null;
    this.kick();
  }

  /**
   * Lowers commit_lsn (local WAL cut back at a timeline switch): the watch
   * at once, the file by a write the caller awaits through `settled`.
   */
  resetTo(lsn: Lsn): void {
    if (lsn >= this.wanted) return;
    this.wanted = lsn;
    this.watch.resetTo(lsn);
    this.generation++;
    this.kick();
  }

  /** Resolves when everything asked for is written, or a write failed (for close and truncation). */
  settled(): Promise<void> {
    if (this.deferred) this.kickNow();
    if (!this.writing && this.written === this.generation && this.wanted <= this.watch.value) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  private kick(): void {
    if (this.writing) return;
    if (this.wanted <= this.watch.value && this.written === this.generation) {
      for (const r of this.idle.splice(0)) r();
      return;
    }
    const target = this.wanted;
    const gen = this.generation;
    this.writing = true;
    this.store.write(target, (err) => {
      this.writing = false;
      if (err) {
        // Published stays where it is; the next raise tries again.
        this.onError(err);
        for (const r of this.idle.splice(0)) r();
        return;
      }
      if (gen === this.generation) {
        this.written = gen;
        this.watch.set(target);
      }
      this.kick();
    });
  }
}
