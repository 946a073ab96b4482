/**
 * One writer per stream, and when peer recovery may be it. Pure: no I/O, no
 * timers; the caller passes the time. PeerRecovery (recovery.ts) and the
 * simulator (sim/) both run these.
 */
import type { Lsn } from '../lsn.js';

/** Who may append to a stream: ingest or recovery, one at a time. */
export class WriterLock {
  private holder: { who: string; yieldNow: () => void } | null = null;
  private readonly waiting: { who: string; resolve: (release: () => void) => void }[] = [];

  get heldBy(): string | null {
    return this.holder?.who ?? null;
  }

  /** Takes the lock if free; `yieldNow` is called when someone else asks for it. */
  tryAcquire(who: string, yieldNow: () => void): (() => void) | null {
    if (this.holder || this.waiting.length) return null;
    return this.grant(who, yieldNow);
  }

  /** Waits for the lock, asking the holder to yield. */
  acquire(who: string, yieldNow: () => void = () => undefined): Promise<() => void> {
    if (!this.holder) return Promise.resolve(this.grant(who, yieldNow));
    return new Promise((resolve) => {
      this.waiting.push({ who, resolve: (r) => resolve(r) });
      this.holder!.yieldNow();
    }).then((release) => {
      this.holder!.yieldNow = yieldNow;
      return release as () => void;
    });
  }

  private grant(who: string, yieldNow: () => void): () => void {
    const me = { who, yieldNow };
    this.holder = me;
    let released = false;
    return () => {
      if (released || this.holder !== me) return;
      released = true;
      this.holder = null;
      const next = this.waiting.shift();
      if (next) next.resolve(this.grant(next.who, () => undefined));
    };
  }
}

/** What recovery reads of a member (Quorum's MemberView has it). */
export interface RecoveryMember {
  key: string;
  flushLsn: Lsn | null;
  pgAddress: string | null;
  error: string | null;
}

/**
 * When peer recovery starts: the upstream has not been streaming for
 * `afterMs` (a primary restarting is not worth a peer connection), and a
 * member in good standing holds WAL past our flush_lsn. Returns the most
 * advanced such member, or null.
 */
export class RecoveryTrigger {
  private awaySince: number | null = null;

  constructor(private readonly afterMs: number) {}

  check(now: number, upstreamStreaming: boolean, own: Lsn, members: readonly RecoveryMember[]): RecoveryMember | null {
    if (upstreamStreaming) {
      this.awaySince = null;
      return null;
    }
    this.awaySince ??= now;
    if (now - this.awaySince < this.afterMs) return null;
    let best: RecoveryMember | null = null;
    for (const m of members) {
      if (m.error !== null || m.flushLsn === null || m.flushLsn <= own || m.pgAddress === null) continue;
      if (best === null || m.flushLsn > best.flushLsn!) best = m;
    }
    return best;
  }
}
