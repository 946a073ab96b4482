/**
 * Prometheus metrics at `GET /metrics` (prom-client), one registry per node
 * so that several nodes in one process (tests, embedding tools) do not mix.
 * LSN and byte gauges are read from the streams at scrape time; events
 * (fsyncs, receiver switches) are counted as they happen.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

import { neededLsn } from '../stream/replica.js';
import type { Stream } from '../stream/stream.js';

/** Sub-millisecond to a second: a commit's steps through a node. */
// Fine below a millisecond: a commit's steps through a node take tenths of one (bench/cluster reads them).
const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1];

export interface MetricsNodeView {
  readonly nodeId: number;
  readonly streams: ReadonlyMap<string, { readonly stream: Stream; readonly offloader: { status(): { active: boolean; healthy: boolean } } | null }>;
}

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly fsyncSeconds: Histogram<'stream'>;
  private readonly commitWaitSeconds: Histogram<'stream'>;
  private readonly ackDelaySeconds: Histogram<'stream'>;
  private readonly sendDelaySeconds: Histogram<'stream'>;
  private readonly switches: Counter<'stream' | 'reason'>;
  private readonly offloadBytes: Counter<'stream' | 'kind'>;
  private readonly offloadCompressed: Counter<'stream' | 'kind'>;
  private readonly offloadObjects: Counter<'stream' | 'kind'>;
  private readonly offloadErrors: Counter<'stream'>;

  constructor(node: MetricsNodeView) {
    const r = this.registry;
    r.setDefaultLabels({ node_id: String(node.nodeId) });
    collectDefaultMetrics({ register: r, prefix: 'walkeeper_process_' });
    const each = (fn: (s: Stream) => void) => () => {
      for (const sv of node.streams.values()) fn(sv.stream);
    };
    const lsnGauge = (name: string, help: string, get: (s: Stream) => bigint) =>
      new Gauge({
        name,
        help,
        labelNames: ['stream'],
        registers: [r],
        collect(this: Gauge<'stream'>) {
          this.reset();
          each((s) => this.set({ stream: s.name }, Number(get(s))))();
        },
      });
    lsnGauge('walkeeper_flush_lsn', 'End of WAL fsynced on this node (bytes).', (s) => s.flushLsn);
    lsnGauge('walkeeper_commit_lsn', 'End of WAL on a quorum of the members (bytes); what regular clients are served up to.', (s) => s.commitLsn);
    lsnGauge('walkeeper_oldest_lsn', 'Start of the oldest segment held (bytes).', (s) => s.oldestLsn ?? 0n);
    const total = (name: string, help: string, get: (s: Stream) => number) =>
      new Counter({
        name,
        help,
        labelNames: ['stream'],
        registers: [r],
        collect(this: Counter<'stream'>) {
          this.reset();
          each((s) => this.inc({ stream: s.name }, get(s)))();
        },
      });
    total('walkeeper_wal_received_bytes_total', 'WAL bytes written to this node (from the upstream or peers).', (s) => s.bytesReceived);
    total('walkeeper_wal_sent_bytes_total', 'WAL bytes sent to clients.', (s) => s.bytesSent);
    total('walkeeper_wal_sent_pumped_bytes_total', 'Of the WAL bytes sent, those the send pump sent (sendfile, to clients catching up).', (s) => s.bytesPumped);
    total('walkeeper_removed_segments_total', 'Segments removed by retention.', (s) => s.removedSegments);
    new Gauge({
      name: 'walkeeper_replicas',
      help: 'Connected replication clients.',
      labelNames: ['stream'],
      registers: [r],
      collect(this: Gauge<'stream'>) {
        this.reset();
        each((s) => this.set({ stream: s.name }, s.replicas.size))();
      },
    });
    new Gauge({
      name: 'walkeeper_replica_lag_bytes',
      help: "How far a replica's reported flush is behind commit_lsn (its start, before it reports).",
      labelNames: ['stream', 'replica'],
      registers: [r],
      collect(this: Gauge<'stream' | 'replica'>) {
        this.reset();
        each((s) => {
          for (const rep of s.replicas.list()) {
            const need = neededLsn(rep);
            this.set({ stream: s.name, replica: `${rep.id} ${rep.name}` }, Number(s.commitLsn > need ? s.commitLsn - need : 0n));
          }
        })();
      },
    });
    // Offload: gauges only for streams with remote storage.
    const offloaded = (fn: (s: Stream, o: { status(): { active: boolean; healthy: boolean } }) => void) => () => {
      for (const sv of node.streams.values()) if (sv.offloader) fn(sv.stream, sv.offloader);
    };
    new Gauge({
      name: 'walkeeper_backup_lsn',
      help: 'End of the WAL known to be complete in object storage (bytes; 0 before the first segment).',
      labelNames: ['stream'],
      registers: [r],
      collect(this: Gauge<'stream'>) {
        this.reset();
        offloaded((s) => this.set({ stream: s.name }, Number(s.backupLsn ?? 0n)))();
      },
    });
    new Gauge({
      name: 'walkeeper_offload_lag_bytes',
      help: 'WAL at or below commit_lsn not yet in object storage (commit_lsn − backup_lsn; from the oldest WAL held before the first upload).',
      labelNames: ['stream'],
      registers: [r],
      collect(this: Gauge<'stream'>) {
        this.reset();
        offloaded((s) => {
          const base = s.backupLsn ?? s.oldestLsn ?? s.commitLsn;
          this.set({ stream: s.name }, Number(s.commitLsn > base ? s.commitLsn - base : 0n));
        })();
      },
    });
    new Gauge({
      name: 'walkeeper_offloader',
      help: '1 while this node is the stream\'s offloader.',
      labelNames: ['stream'],
      registers: [r],
      collect(this: Gauge<'stream'>) {
        this.reset();
        offloaded((s, o) => this.set({ stream: s.name }, o.status().active ? 1 : 0))();
      },
    });
    new Gauge({
      name: 'walkeeper_offload_healthy',
      help: '0 while uploads to object storage fail (WAL accumulates locally), else 1.',
      labelNames: ['stream'],
      registers: [r],
      collect(this: Gauge<'stream'>) {
        this.reset();
        offloaded((s, o) => this.set({ stream: s.name }, o.status().healthy ? 1 : 0))();
      },
    });
    this.offloadBytes = new Counter({ name: 'walkeeper_offload_bytes_total', help: 'WAL bytes uploaded to object storage, before compression.', labelNames: ['stream', 'kind'], registers: [r] });
    this.offloadCompressed = new Counter({ name: 'walkeeper_offload_compressed_bytes_total', help: 'Bytes of the objects uploaded (after compression).', labelNames: ['stream', 'kind'], registers: [r] });
    this.offloadObjects = new Counter({ name: 'walkeeper_offload_objects_total', help: 'Objects uploaded to object storage, by kind (segment, history, partial).', labelNames: ['stream', 'kind'], registers: [r] });
    this.offloadErrors = new Counter({ name: 'walkeeper_offload_errors_total', help: 'Failed object storage requests (each is retried).', labelNames: ['stream'], registers: [r] });
    this.fsyncSeconds = new Histogram({
      name: 'walkeeper_fsync_seconds',
      help: 'Duration of WAL fsyncs.',
      labelNames: ['stream'],
      buckets: [...LATENCY_BUCKETS.filter((b) => b < 0.01), 0.01, 0.02, 0.05, 0.1, 0.25, 1],
      registers: [r],
    });
    // Where a commit's time goes on its way through a node to a caught-up client (issue 19's tail):
    // the upstream's send → this node's 'r' (receive and fsync: what a synchronous commit waits
    // for), this node's flush → commit_lsn (the quorum: peers' status pushes), then commit_lsn →
    // the message written to the client (the sender's wake-up and framing).
    this.ackDelaySeconds = new Histogram({
      name: 'walkeeper_ack_delay_seconds',
      help: "From the upstream sending WAL (its XLogData's sendTime) to this node's status update acknowledging its flush; between hosts, their clocks' difference is in it.",
      labelNames: ['stream'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.commitWaitSeconds = new Histogram({
      name: 'walkeeper_commit_wait_seconds',
      help: "From this node's flush of WAL to commit_lsn passing it (waiting for the quorum).",
      labelNames: ['stream'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.sendDelaySeconds = new Histogram({
      name: 'walkeeper_send_delay_seconds',
      help: 'From commit_lsn (flush_lsn for recovery clients) moving to the message carrying it written to a caught-up client.',
      labelNames: ['stream'],
      buckets: LATENCY_BUCKETS,
      registers: [r],
    });
    this.switches = new Counter({
      name: 'walkeeper_receiver_switches_total',
      help: "Switches of this node's receivers (peer recovery) by reason.",
      labelNames: ['stream', 'reason'],
      registers: [r],
    });
  }

  fsync(stream: string, seconds: number): void {
    this.fsyncSeconds.observe({ stream }, seconds);
  }

  ackDelay(stream: string, seconds: number): void {
    this.ackDelaySeconds.observe({ stream }, seconds);
  }

  commitWait(stream: string, seconds: number): void {
    this.commitWaitSeconds.observe({ stream }, seconds);
  }

  sendDelay(stream: string, seconds: number): void {
    this.sendDelaySeconds.observe({ stream }, seconds);
  }

  uploaded(stream: string, kind: 'segment' | 'history' | 'partial', bytes: number, compressedBytes: number): void {
    this.offloadBytes.inc({ stream, kind }, bytes);
    this.offloadCompressed.inc({ stream, kind }, compressedBytes);
    this.offloadObjects.inc({ stream, kind });
  }

  failed(stream: string): void {
    this.offloadErrors.inc({ stream });
  }

  receiverSwitch(stream: string, reason: string): void {
    this.switches.inc({ stream, reason });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
