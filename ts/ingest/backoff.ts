/**
 * Reconnect backoff, pure (the caller supplies the clock): the wait grows
 * ×1.5 from `min` to `max` after each failed attempt and drops back to `min`
 * once a connection made progress. As Neon's connection manager learned,
 * the wait belongs before the *next* attempt, never after a connection that
 * was just established.
 */
export interface BackoffConfig {
  minMs: number;
  maxMs: number;
  multiplier: number;
}

export const DEFAULT_BACKOFF: BackoffConfig = { minMs: 100, maxMs: 15_000, multiplier: 1.5 };

export class Backoff {
  private current: number;

  constructor(private readonly cfg: BackoffConfig = DEFAULT_BACKOFF) {
    this.current = cfg.minMs;
  }

  /** The wait before the next attempt, given when the last one started; advances the backoff. */
  next(lastAttemptStartedAt: number, now: number): number {
    const wait = Math.max(0, lastAttemptStartedAt + this.current - now);
    this.current = Math.min(this.cfg.maxMs, Math.max(this.cfg.minMs, this.current * this.cfg.multiplier));
    return wait;
  }

  /** A connection made progress: the next failure retries quickly. */
  reset(): void {
    this.current = this.cfg.minMs;
  }

  get currentMs(): number {
    return this.current;
  }
}
