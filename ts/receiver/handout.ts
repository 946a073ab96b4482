/**
 * The receiver's hand-out rule, pure: where a connection starts and which
 * WAL messages may be handed on. Contiguity across switches rests on one
 * fact: a new connection starts at *this receiver's own* position (the end
 * of what it handed out), never at anything the node it switches to
 * reports — a node ahead would skip WAL, a node behind would send some twice.
 * Used by every connection (connection.ts) and by the simulator (sim/).
 */
import { formatLsn, type Lsn } from '../lsn.js';

export class WalHandout {
  private nextLsn: Lsn | null;

  /** `start`: the first byte wanted, or null for "where the first node is". */
  constructor(start: Lsn | null) {
    this.nextLsn = start;
  }

  /** The next byte wanted (the end of what was handed out); null before the first connection. */
  get next(): Lsn | null {
    return this.nextLsn;
  }

  /**
   * START_REPLICATION position on a node whose position (IDENTIFY_SYSTEM's
   * xlogpos) is `nodePosition`: our own next byte; with none yet, the start
   * of the node's segment, as pg_receivewal in an empty directory.
   */
  startOn(nodePosition: Lsn, segmentSize: number): Lsn {
    if (this.nextLsn === null) this.nextLsn = nodePosition - (nodePosition % BigInt(segmentSize));
    return this.nextLsn;
  }

  /**
   * A WAL message of `length` bytes at `start` from a node that announces
   * its WAL ends at `walEnd`: null when it is the next piece (it is then
   * counted as handed out), otherwise why the node is not to be trusted.
   */
  accept(start: Lsn, length: number, walEnd: Lsn): string | null {
    if (this.nextLsn !== null && start !== this.nextLsn) return `node sent WAL at ${formatLsn(start)}, expected ${formatLsn(this.nextLsn)} (not contiguous)`;
    const end = start + BigInt(length);
    if (end > walEnd) return `node sent WAL up to ${formatLsn(end)} beyond the end it announces, ${formatLsn(walEnd)}`;
    this.nextLsn = end;
    return null;
  }

  /** WAL up to `lsn` was handed out another way (the Rust pump wrote it, or a timeline switched at it). */
  advanceTo(lsn: Lsn): void {
    this.nextLsn = lsn;
  }
}
