/**
 * Who offloads a stream, re-decided by every member once a second, as
 * Neon's safekeepers decide who backs up a timeline (wal_backup.rs): among
 * the live members that hold WAL back to backup_lsn and whose commit_lsn is
 * within `maxLagBytes` of the highest, sorted by node id, the one at
 * hash(stream) mod n. There is no lock: for the moment two members disagree
 * (a status in flight), both upload — the same bytes under the same names.
 * Pure: the caller passes the members and the time.
 */
import type { Lsn } from '../lsn.js';

/** A member not heard from for this long is not a candidate (statuses come every 250 ms – 1 s). */
export const OFFLOADER_STALE_MS = 3000;
/** A member this far behind the highest commit_lsn hands over (Neon's max_offloader_lag). */
export const MAX_OFFLOADER_LAG = 128n * 1024n * 1024n;

export interface OffloadCandidate {
  nodeId: number;
  /** null: the member does not know it yet (restarted after a crash; see stream/commit_lsn.ts). */
  commitLsn: Lsn | null;
  /** Oldest WAL the member holds locally (null: none). */
  oldestLsn: Lsn | null;
  /** When its status was last heard (ms); null for this node itself. */
  heardAt: number | null;
}

export interface Election {
  /** The chosen member's node id, or null when no member can offload. */
  offloader: number | null;
  /** Node ids of the eligible members, in order. */
  eligible: number[];
  /** Why a fallback was taken: no member holds WAL back to backup_lsn (the archive has a gap there). */
  gap: boolean;
}

/** FNV-1a (32 bits): the same on every node, for any stream name. */
export function streamHash(name: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, 'utf8')) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export function electOffloader(
  stream: string,
  self: OffloadCandidate,
  peers: readonly OffloadCandidate[],
  backupLsn: Lsn | null,
  now: number,
  opts: { staleMs?: number; maxLagBytes?: bigint } = {},
): Election {
  const staleMs = opts.staleMs ?? OFFLOADER_STALE_MS;
  const maxLag = opts.maxLagBytes ?? MAX_OFFLOADER_LAG;
  const live = [self, ...peers.filter((p) => p.nodeId !== self.nodeId && p.heardAt !== null && now - p.heardAt <= staleMs)];
  let top = 0n;
  for (const m of live) if (m.commitLsn !== null && m.commitLsn > top) top = m.commitLsn;
  // A member that does not know its commit_lsn yet cannot say it is caught up: it stays out until it does, in every member's count alike.
  const caughtUp = live.filter((m) => m.commitLsn !== null && m.oldestLsn !== null && top - m.commitLsn <= maxLag);
  const holding = caughtUp.filter((m) => backupLsn === null || m.oldestLsn! <= backupLsn);
  const gap = holding.length === 0 && caughtUp.length > 0;
  const pool = (gap ? caughtUp : holding).map((m) => m.nodeId).sort((a, b) => a - b);
  return { offloader: pool.length === 0 ? null : pool[streamHash(stream) % pool.length]!, eligible: pool, gap };
}
