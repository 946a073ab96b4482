/**
 * One START_REPLICATION from the upstream: the state that the JavaScript
 * writer (writer.ts) and the pump's supervision (pump_supervisor.ts) share,
 * and the few things either may do to the copy — acknowledge, send hot
 * standby feedback, or end it because the WAL is bad or cannot be stored.
 */
import type { CopyBoth, ReplicationClient } from '../client/client.js';
import type { Logger } from '../log.js';
import type { Lsn } from '../lsn.js';
import { hotStandbyFeedback } from '../protocol/replication.js';
import type { Stream } from '../stream/stream.js';
import type { IngestPump } from '../wal/wal_storage.js';

/** The upstream did something that retrying cannot fix (other system id, bad WAL): ingest stops. */
export class IngestFatal extends Error {}

/**
 * The node could not store what the upstream sent (disk full, an I/O
 * error): nothing past flush_lsn is acknowledged or served; ingest retries
 * with backoff after throwing away what was written but not fsynced, so it
 * continues by itself when space returns.
 */
export class StorageError extends Error {}

/** Where the upstream is, as far as this node has heard (for /v1/streams and lag). */
export class UpstreamPosition {
  /** End of the WAL received (not necessarily written). */
  received: Lsn | null = null;
  /** The upstream's own end of WAL, from XLogData and keepalives. */
  end: Lsn | null = null;

  sawEnd(lsn: Lsn): void {
    if (this.end === null || lsn > this.end) this.end = lsn;
  }
}

export class UpstreamCopy {
  /** The first reason the copy must end; nothing is acknowledged after it. */
  fatal: Error | null = null;
  /** The next byte the upstream must send. */
  expected: Lsn;
  /** End of what is written locally (the 'r' write position). */
  written: Lsn;
  /** Whether any WAL was written (the reconnect backoff starts over after progress). */
  progressed = false;
  /** While set, the pump owns the socket's writing and answers the upstream itself. */
  pump: IngestPump | null = null;
  /** Called when the copy fails, so that a waiting writer notices. */
  onFatal: () => void = () => undefined;
  private lastXmin: string | null = null;

  constructor(
    readonly client: ReplicationClient,
    readonly copy: CopyBoth,
    readonly stream: Stream,
    readonly position: UpstreamPosition,
    readonly log: Logger,
    start: Lsn,
  ) {
    this.expected = start;
    this.written = start;
  }

  /** 'r' with write = what is written, flush = apply = what is fsynced: only flushed WAL is ever acknowledged. */
  sendStatus(replyRequested = false): void {
    if (!this.copy.canSend || this.pump) return;
    const f = this.stream.flushLsn;
    this.copy.sendStatus({ write: this.written, flush: f, apply: f, replyRequested });
    this.sendFeedback(false);
  }

  /** 'h' with the oldest xmin our replicas report, so the primary keeps the rows their queries need. */
  sendFeedback(force: boolean): void {
    if (!this.copy.canSend) return;
    const a = this.stream.replicas.aggregates();
    const key = `${a.minXmin}/${a.minCatalogXmin}`;
    if (key === this.lastXmin && !force) return;
    this.lastXmin = key;
    const xmin = a.minXmin ?? 0n;
    const cat = a.minCatalogXmin ?? 0n;
    (this.pump ?? this.copy).send(
      hotStandbyFeedback({
        xmin: Number(xmin & 0xffffffffn),
        xminEpoch: Number(xmin >> 32n),
        catalogXmin: Number(cat & 0xffffffffn),
        catalogXminEpoch: Number(cat >> 32n),
      }),
    );
  }

  /** The upstream sent WAL we must not take: the copy ends and ingest stops. */
  fail(msg: string): void {
    this.fatal ??= new IngestFatal(msg);
    this.log.error({ err: msg }, 'refusing WAL from the upstream');
    this.onFatal();
    this.client.destroy(this.fatal);
  }

  /** A write or fsync failed: the copy ends (nothing more can be stored, and the primary must not count on us; it keeps the WAL in our slot). */
  storageFail(msg: string): void {
    if (this.fatal) return;
    this.fatal = new StorageError(msg);
    this.stream.storageFailed(msg, this.expected);
    this.onFatal();
    this.client.destroy(this.fatal);
  }
}
