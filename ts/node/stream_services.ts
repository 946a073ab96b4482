/**
 * One stream's services, owned in one place (Neon's safekeeper keeps the
 * same shape in its `Timeline`): the stream itself, its commit quorum, the
 * writer lock that ingest and peer recovery share, peer recovery, the
 * status-page history, the upstream's ingest when there is one, the
 * offloader when the node has remote storage, the senders serving it and
 * its attachment to the broker. The node creates one
 * per stream and starts and stops it as a whole; everything else holds a
 * reference to it.
 */
import type { Broker } from '../cluster/broker/broker.js';
import { PeerDemand, Quorum } from '../cluster/quorum.js';
import { PeerRecovery, WriterLock, type RecoveryConfig } from '../cluster/recovery.js';
import { retentionHorizon, type RetentionConfig } from '../cluster/retention.js';
import { StreamHistory } from '../http/history.js';
import type { NodeMetrics } from '../http/metrics.js';
import type { Ingest } from '../ingest/ingest.js';
import type { Lsn } from '../lsn.js';
import { Offloader, type OffloadConfig } from '../offload/offloader.js';
import { ArchiveReader } from '../offload/archive_reader.js';
import type { RemoteStorage } from '../remote/remote_storage.js';
import type { WalSender } from '../sender/send_wal.js';
import type { Stream } from '../stream/stream.js';

/** What a stream's services need from the node around them. */
export interface StreamServicesHost {
  readonly nodeId: number;
  readonly broker: Broker;
  readonly metrics: NodeMetrics;
  readonly recovery: RecoveryConfig;
  /** How long peers keep pushing every flush after the last client waiting on commit_lsn left (ms). */
  readonly promptGraceMs: number;
  /** Object storage for offload (null: none configured). */
  readonly remote: RemoteStorage | null;
  readonly offload: OffloadConfig;
  /** What this node tells the members about `stream` (memberStatusJson). */
  memberStatus(stream: Stream): Record<string, unknown>;
}

export class StreamServices {
  /** commit_lsn, from the members' flush positions. */
  readonly quorum: Quorum;
  /** One writer at a time: ingest or peer recovery. */
  readonly writer = new WriterLock();
  readonly recovery: PeerRecovery;
  /** The last minutes of the stream, for the status page. */
  readonly history: StreamHistory;
  /** The upstream this stream follows, when the node has one for it. */
  ingest: Ingest | null = null;
  /** Uploads the stream's WAL to object storage when this node is chosen to (null: no remote storage). */
  readonly offloader: Offloader | null;
  /** The senders streaming this stream's WAL right now. */
  readonly senders = new Set<WalSender>();
  private detachBroker: (() => void) | null = null;
  private demandTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly stream: Stream,
    private readonly host: StreamServicesHost,
  ) {
    const b = host.broker;
    const peers = b.initialMembers;
    this.quorum = new Quorum(stream, { nodeId: host.nodeId }, { peers: peers ?? [], membershipKnown: peers !== null });
    this.recovery = new PeerRecovery(
      stream,
      this.quorum,
      this.writer,
      {
        upstreamStreaming: () => this.ingest?.status().state === 'streaming',
        flushed: () => this.flushed(),
        switched: (reason) => host.metrics.receiverSwitch(stream.name, reason),
      },
      host.recovery,
    );
    this.history = new StreamHistory(stream);
    this.offloader = host.remote ? new Offloader(stream, this.quorum, host.remote, { nodeId: host.nodeId }, host.metrics, host.offload) : null;
    if (host.remote) stream.archive = new ArchiveReader(stream, host.remote);
  }

  get name(): string {
    return this.stream.name;
  }

  /** Starts what runs on its own: peer recovery, history sampling, the peers' demand and the senders' reactions to the stream. */
  start(): void {
    const s = this.stream;
    // commit_lsn moved: members and receivers hear of it (etcd publishes; HTTP serves it).
    s.commitWatch.listen(() => this.host.broker.changed(s.name));
    s.onFsync = (secs) => this.host.metrics.fsync(s.name, secs);
    s.onAck = (secs) => this.host.metrics.ackDelay(s.name, secs);
    s.onSendDelay = (secs) => this.host.metrics.sendDelay(s.name, secs);
    this.measureCommitWait();
    this.recovery.start();
    this.offloader?.start();
    this.history.sample();
    if (this.host.broker.kind === 'embedded') this.followDemand();
    else s.followPeers = null;
    s.on('end', (why: string) => {
      for (const sender of this.senders) sender.endStreaming(why);
    });
    // Local WAL cut back (a diverged timeline): clients past that point were sent WAL that is gone.
    s.on('rewind', (lsn: Lsn, why: string) => {
      for (const sender of this.senders) if (sender.sentLsn > lsn) sender.endStreaming(why);
    });
  }

  /** Starts the status exchange with the other members; once the node's addresses are known (they are part of it). */
  attachBroker(): void {
    if (this.detachBroker) return;
    const s = this.stream;
    const host = this.host;
    this.detachBroker = host.broker.attach(
      { name: s.name, get flushLsn() { return s.flushLsn; }, get follow() { return s.followPeers ?? 'flush'; }, status: () => host.memberStatus(s) },
      { members: (keys) => this.quorum.setMembers(keys), status: (st) => this.quorum.onStatus(st), heard: (key) => this.quorum.heard(key) },
    );
  }

  /** After a flush (ingest or recovery): commit_lsn is what a quorum of members (just us, without peers) has flushed. */
  flushed(): void {
    this.quorum.update();
    this.host.broker.changed(this.stream.name);
  }

  /** Removes the segments every horizon has passed (see retention.ts); a failure is logged, the next pass retries. */
  async removeOldWal(config: RetentionConfig, now = Date.now()): Promise<void> {
    const s = this.stream;
    if (s.state !== 'active') return;
    const h = retentionHorizon({
      commitLsn: s.commitLsn,
      flushLsn: s.flushLsn,
      slots: [...s.slots.values()].map((sl) => ({ name: sl.name, restartLsn: sl.restartLsn })),
      replicas: s.replicas.retention(now, config.replicaWindowMs),
      keepBytes: config.keepBytes,
      ...(this.offloader ? { backupLsn: s.backupLsn } : {}),
    });
    try {
      await s.removeWalBelow(h.lsn, h.heldBy);
    } catch (err) {
      s.log.error({ err: (err as Error).message }, 'cannot remove old WAL');
    }
  }

  /**
   * Stops the writers and the status exchange: ingest, then peer recovery
   * (neither writes afterwards), the offloader (an upload in flight is
   * abandoned, never recorded), then the broker attachment. Senders are
   * ended by the node, which ends them all together with its listener.
   */
  async stopWriters(): Promise<void> {
    await this.ingest?.stop();
    await this.recovery.stop();
    await this.offloader?.stop();
    clearTimeout(this.demandTimer);
    this.detachBroker?.();
    this.detachBroker = null;
  }

  /** Persists the control file; the last step of a stop. */
  async close(): Promise<void> {
    await this.stream.close().catch((err: Error) => this.stream.log.error({ err: err.message }, 'cannot persist control file'));
  }

  /**
   * How long each flush of this node waits for commit_lsn to pass it (the
   * quorum: its peers' flushes and their status pushes), into a histogram.
   * commit_lsn never passes this node's own flush_lsn, so every flush noted
   * here is observed once commit_lsn reaches it; at most PENDING are kept
   * while commit_lsn stands still (peers away).
   */
  private measureCommitWait(): void {
    const s = this.stream;
    const PENDING = 4096;
    const pending: { lsn: Lsn; at: number }[] = [];
    s.flushWatch.listen((lsn) => {
      if (pending.length < PENDING) pending.push({ lsn, at: performance.now() });
    });
    s.commitWatch.listen((lsn) => {
      const now = performance.now();
      let i = 0;
      for (; i < pending.length && pending[i]!.lsn <= lsn; i++) this.host.metrics.commitWait(s.name, (now - pending[i]!.at) / 1000);
      pending.splice(0, i);
    });
  }

  /** Asks the peers for every flush while a client here waits on commit_lsn (see PeerDemand). */
  private followDemand(): void {
    const s = this.stream;
    const demand = new PeerDemand(this.host.promptGraceMs);
    const apply = (): void => {
      clearTimeout(this.demandTimer);
      const now = Date.now();
      const want = demand.prompt(now) ? 'flush' : 'heartbeat';
      if (want !== s.followPeers) {
        s.followPeers = want;
        s.log.info({ follow_peers: want }, want === 'flush' ? 'a client waits on commit_lsn: peers push every flush' : 'no client waits on commit_lsn: peers send a heartbeat');
        this.host.broker.demandChanged(s.name);
      }
      const at = demand.lapsesAt(now);
      if (at !== null) this.demandTimer = setTimeout(apply, at - now).unref();
    };
    s.replicas.listen(() => {
      demand.setClients(s.replicas.regular, Date.now());
      apply();
    });
    s.once('end', () => clearTimeout(this.demandTimer));
  }
}
