/**
 * commit_lsn, and what a node may say of it after a crash.
 *
 * A node tells commit_lsn to its peers and to receivers choosing a node (its
 * status), and it must never tell them less than before, also across a
 * crash: a receiver comparing two reports would see history shrink, and the
 * simulator checks it on every step (docs/simulation.md). The value itself
 * lives only in memory; the control file keeps a copy a second late, a
 * lower bound. So after a crash the node does not know what it said last.
 *
 * It knows a bound: anything it reported was at most its flush_lsn then,
 * and that WAL was fsynced, so at most the end of valid WAL it finds at
 * start-up. Until the quorum (recomputed from the members' fresh flush
 * positions, which only go forward) reaches that end, the node reports no
 * commit_lsn at all (null in its status: "not known yet"); from then on,
 * what it reports is at least what it could have reported before.
 * Meanwhile it serves clients up to what it does know — the control file's
 * value and whatever the quorum has confirmed since — which is WAL a quorum
 * holds, but it does not announce it.
 *
 * This costs nothing on the commit path. The first version of this class
 * wrote every new value to a file of its own with O_DSYNC before publishing
 * it; that put one write to stable storage between a peer's flush and every
 * caught-up client, +0.6 ms at the median on a shared disk
 * (bench/profile-pass.md). After a clean stop the control file says its
 * copy is exact, and the node knows commit_lsn at once.
 */
import { formatLsn, type Lsn } from '../lsn.js';
import type { LsnWatch } from './watch.js';

export class CommitLsn {
  /** Reports are held back until the value reaches this; null once it has. */
  private unknownBelow: Lsn | null;

  constructor(
    /** What clients may be served up to: only goes up, except at resetTo. */
    readonly watch: LsnWatch,
    /** The highest value the node may have reported before (the end of WAL found at start-up); null when nothing was (a clean stop, a new stream). */
    reportedAtMost: Lsn | null,
  ) {
    this.unknownBelow = reportedAtMost !== null && reportedAtMost > watch.value ? reportedAtMost : null;
  }

  get value(): Lsn {
    return this.watch.value;
  }

  /** What the node says commit_lsn is: null until it knows it is at least what it may have said before a crash. */
  get reported(): Lsn | null {
    return this.unknownBelow === null ? this.watch.value : null;
  }

  /** The value the quorum must reach before commit_lsn is reported again; null when it is. */
  get waitingFor(): Lsn | null {
    return this.unknownBelow;
  }

  /** Raises the value (never lowers it); returns true when this raise made it known. */
  raise(lsn: Lsn): boolean {
    // Known first, so that the watch's listeners (the status publishers) see the report they are told of.
    const known = this.unknownBelow !== null && lsn >= this.unknownBelow;
    if (known) this.unknownBelow = null;
    this.watch.set(lsn);
    return known;
  }

  /**
   * Lowers the value (local WAL cut back at a timeline switch): what was
   * reported above it is gone with that WAL, as before.
   */
  resetTo(lsn: Lsn): void {
    this.watch.resetTo(lsn);
    if (this.unknownBelow !== null && lsn <= this.unknownBelow) {
      this.unknownBelow = this.watch.value >= lsn ? null : lsn;
    }
  }
}

/** The start-up log's line: why commit_lsn is not reported yet. */
export function unknownCommitReason(waitingFor: Lsn): string {
  return `commit_lsn not known yet after a restart: reported again once a quorum has flushed up to ${formatLsn(waitingFor)}, the end of WAL here`;
}
