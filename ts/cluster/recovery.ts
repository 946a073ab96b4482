/**
 * Peer recovery: a node whose upstream is unreachable and whose flush_lsn is
 * behind a peer's pulls the missing WAL from the most advanced peer, as a
 * recovery client (application_name `walkeeper_recovery`, so the peer serves
 * up to its flush_lsn rather than its commit_lsn). It is walkeeper's own
 * WalReceiver underneath: the peer's system id, contiguity and page headers
 * are checked as for any receiver, and a failing peer is left for another.
 *
 * One writer per stream: ingest and recovery take the stream's WriterLock.
 * When the upstream answers again, ingest asks for the lock and recovery
 * yields at once; ingest then continues from what recovery flushed.
 */
import { formatLsn, type Lsn } from '../lsn.js';
import { WalReceiver } from '../receiver/receiver.js';
import type { NodeStatus } from '../member_status.js';
import type { CandidateSource } from '../receiver/sources.js';
import type { Logger } from '../log.js';
import type { Quorum } from './quorum.js';
import type { Stream } from '../stream/stream.js';
import { RecoveryTrigger, type WriterLock } from './writer_lock.js';

export { WriterLock } from './writer_lock.js';

export const RECOVERY_APPLICATION_NAME = 'walkeeper_recovery';

/** Candidates for recovery: the members the quorum heard from, ranked by flush_lsn (the receiver ranks by the field it calls commit_lsn). */
class MemberSource implements CandidateSource {
  private timer: NodeJS.Timeout | null = null;
  constructor(
    private readonly stream: Stream,
    private readonly quorum: Quorum,
  ) {}

  start(onStatus: (s: NodeStatus) => void): void {
    const tick = (): void => {
      for (const m of this.quorum.list()) {
        if (m.error !== null || m.flushLsn === null || m.pgAddress === null) continue;
        onStatus({
          nodeId: m.key,
          nodeNumber: m.nodeId,
          commitLsn: m.flushLsn,
          flushLsn: m.flushLsn,
          pgAddress: m.pgAddress,
          availabilityZone: null,
          systemId: this.stream.systemId,
          tli: this.stream.tli,
          segmentSize: this.stream.segmentSize,
          pgVersion: this.stream.pgVersion,
          httpAddress: m.httpAddress,
          remoteConsistentLsn: null,
          oldestLsn: m.oldestLsn,
          backupLsn: m.backupLsn,
        });
      }
    };
    tick();
    this.timer = setInterval(tick, 250);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}

export interface RecoveryHost {
  /** Whether the stream's upstream is streaming now (recovery is for when it is not). */
  upstreamStreaming(): boolean;
  /** After a flush: the node recomputes commit_lsn and tells the members. */
  flushed(): void;
  /** A switch of the recovery receiver (metrics). */
  switched(reason: string): void;
}

export interface RecoveryConfig {
  /** How long the upstream must have been away before recovery starts. */
  afterMs: number;
  /** How often the conditions are checked. */
  checkMs: number;
}

export const DEFAULT_RECOVERY: RecoveryConfig = { afterMs: 1000, checkMs: 250 };

export class PeerRecovery {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private receiver: WalReceiver | null = null;
  private readonly trigger: RecoveryTrigger;
  private readonly log: Logger;
  private stopped = false;

  constructor(
    private readonly stream: Stream,
    private readonly quorum: Quorum,
    private readonly lock: WriterLock,
    private readonly host: RecoveryHost,
    private readonly cfg: RecoveryConfig = DEFAULT_RECOVERY,
  ) {
    this.log = stream.log.child({ component: 'recovery' });
    this.trigger = new RecoveryTrigger(cfg.afterMs);
  }

  get active(): boolean {
    return this.running !== null;
  }

  start(): void {
    this.timer = setInterval(() => this.check(), this.cfg.checkMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.receiver?.stop();
    await this.running;
  }

  private check(): void {
    if (this.stopped || this.running) return;
    const own = this.stream.flushLsn;
    const go = this.trigger.check(Date.now(), this.host.upstreamStreaming(), own, this.quorum.list());
    if (!go) return;
    const release = this.lock.tryAcquire('recovery', () => void this.receiver?.stop());
    if (!release) return;
    this.running = this.run(own, go.flushLsn!)
      .catch((err: Error) => this.log.error({ err: err.message }, 'peer recovery failed'))
      .finally(() => {
        release();
        this.receiver = null;
        this.running = null;
      });
  }

  /** `peerFlush`: the flush_lsn of the most advanced member, as the trigger found it. */
  private async run(from: Lsn, peerFlush: Lsn): Promise<void> {
    const s = this.stream;
    this.log.info({ from: formatLsn(from), peer_flush_lsn: formatLsn(peerFlush) }, 'upstream unreachable and a peer is ahead: recovering WAL from peers');
    const rx = new WalReceiver({
      stream: s.name,
      source: new MemberSource(s, this.quorum),
      startLsn: from,
      tli: s.tli,
      systemId: s.systemId,
      applicationName: RECOVERY_APPLICATION_NAME,
    });
    this.receiver = rx;
    rx.on('switch', (e) => this.host.switched(e.reason.kind));
    rx.on('connect', (e) => this.log.info({ peer: e.nodeId, start: formatLsn(e.startLsn) }, 'recovering from peer'));
    rx.on('error', (e) => this.log.warn({ err: e.message }, 'peer recovery connection'));
    let unflushed = 0;
    const flush = async (): Promise<void> => {
      if (!unflushed) return;
      unflushed = 0;
      const f = await s.flushWal();
      rx.ack(f);
      this.host.flushed();
    };
    try {
      for await (const first of rx) {
        const batch = [first, ...rx.takeQueued(4 << 20)];
        for (const c of batch) {
          if (c.tli !== s.tli) {
            // Following a peer across a timeline switch is ingest's job (it has the upstream's history).
            this.log.info({ tli: c.tli }, 'the peer moved to another timeline; recovery stops there');
            await flush();
            return;
          }
          await s.appendWal(c.startLsn, c.data);
          unflushed += c.data.length;
        }
        // Flush when caught up with what arrived, and at least every 16 MiB.
        if (rx.queuedBytes === 0 || unflushed >= 16 << 20) await flush();
      }
    } finally {
      await rx.stop();
      await flush();
      this.log.info({ flush_lsn: formatLsn(s.flushLsn) }, 'peer recovery stopped');
    }
  }
}
