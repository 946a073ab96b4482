/**
 * Which local WAL may go. A segment is removed only when it lies wholly
 * below every horizon:
 *   - commit_lsn (WAL not yet on a quorum may still be needed by a peer,
 *     and is what regular clients are about to be sent);
 *   - every persisted slot's restart_lsn (Stream.removeWalBelow enforces
 *     this one again, whatever it is asked);
 *   - every replica's reported flush, also for replicas that left within
 *     the replica window (a standby restarting asks for where it was);
 *   - flush_lsn − wal_keep_size, as PostgreSQL's wal_keep_size;
 *   - with remote storage, backup_lsn: nothing is removed before it is safe
 *     in object storage (and nothing at all before the first upload), so
 *     when the store is away WAL accumulates — it is never dropped.
 * The arithmetic is pure; the node runs it on a timer.
 */
import { formatLsn, type Lsn } from '../lsn.js';

export interface RetentionConfig {
  /** WAL kept behind flush_lsn whatever else says (--wal-keep-size). */
  keepBytes: bigint;
  /** How long a departed replica's position still holds WAL. */
  replicaWindowMs: number;
  /** How often the node looks. */
  intervalMs: number;
}

export const DEFAULT_RETENTION: RetentionConfig = {
  keepBytes: 1n << 30n,
  replicaWindowMs: 10 * 60_000,
  intervalMs: 10_000,
};

export interface RetentionInput {
  commitLsn: Lsn;
  flushLsn: Lsn;
  slots: { name: string; restartLsn: Lsn }[];
  replicas: { name: string; lsn: Lsn }[];
  keepBytes: bigint;
  /** With remote storage: the end of what is offloaded (null: nothing yet). Without: undefined. */
  backupLsn?: Lsn | null;
}

/** The lowest LSN still needed, and what holds it (for the log). */
export function retentionHorizon(i: RetentionInput): { lsn: Lsn; heldBy: string } {
  let lsn = i.commitLsn;
  let heldBy = `commit_lsn ${formatLsn(i.commitLsn)}`;
  const lower = (l: Lsn, why: string) => {
    if (l < lsn) {
      lsn = l;
      heldBy = why;
    }
  };
  const keep = i.flushLsn > i.keepBytes ? i.flushLsn - i.keepBytes : 0n;
  lower(keep, `wal_keep_size (${i.keepBytes} bytes behind flush_lsn)`);
  for (const s of i.slots) if (s.restartLsn !== 0n) lower(s.restartLsn, `slot ${s.name}`);
  for (const r of i.replicas) lower(r.lsn, `replica ${r.name}`);
  if (i.backupLsn === null) lower(0n, 'backup_lsn (nothing offloaded yet)');
  else if (i.backupLsn !== undefined) lower(i.backupLsn, `backup_lsn ${formatLsn(i.backupLsn)} (not yet in object storage)`);
  return { lsn, heldBy };
}

/** Parses a size like PostgreSQL's: 1024, 512kB, 64MB, 1GB, 2TB (units of 1024). */
export function parseSize(text: string, what: string): bigint {
  const m = /^\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*$/i.exec(text);
  if (!m) throw new Error(`${what} must be a size such as 512MB or 1GB, not ${JSON.stringify(text)}`);
  const unit = (m[2] ?? 'B').toUpperCase();
  const mult = { B: 1n, KB: 1n << 10n, MB: 1n << 20n, GB: 1n << 30n, TB: 1n << 40n }[unit]!;
  return BigInt(m[1]!) * mult;
}
