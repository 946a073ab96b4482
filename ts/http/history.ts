/**
 * The last minutes of each stream, one sample a second, for the status
 * page's chart (GET /v1/streams/<name>/history): so the page shows where
 * things have been the moment it opens, not only from then on.
 */
import type { Lsn } from '../lsn.js';
import { neededLsn } from '../stream/replica.js';
import type { Stream } from '../stream/stream.js';

export interface Sample {
  /** ms since the epoch. */
  t: number;
  flushLsn: Lsn;
  commitLsn: Lsn;
  /** Totals so far (rates are differences of consecutive samples). */
  bytesReceived: number;
  bytesSent: number;
  /** How far the slowest replica's reported flush is behind commit_lsn (0 without replicas). */
  replicaLag: number;
  replicas: number;
}

export const HISTORY_SECONDS = 600;

export class StreamHistory {
  private readonly samples: Sample[] = [];

  constructor(private readonly stream: Stream) {}

  sample(now = Date.now()): void {
    const s = this.stream;
    let lag = 0n;
    for (const r of s.replicas.list()) {
      const need = neededLsn(r);
      if (s.commitLsn > need && s.commitLsn - need > lag) lag = s.commitLsn - need;
    }
    this.samples.push({ t: now, flushLsn: s.flushLsn, commitLsn: s.commitLsn, bytesReceived: s.bytesReceived, bytesSent: s.bytesSent, replicaLag: Number(lag), replicas: s.replicas.size });
    if (this.samples.length > HISTORY_SECONDS) this.samples.shift();
  }

  list(): readonly Sample[] {
    return this.samples;
  }
}
