/**
 * The pump path of ingest: once in COPY the socket is lent to a Rust pump
 * on a thread of its own (WalStore.ingestPump), which checks, appends,
 * fsyncs and sends the 'r' itself, as PostgreSQL's walreceiver does from
 * the one process — a primary waiting on this node for a synchronous commit
 * waits for that 'r', and the way through JavaScript and the thread pool
 * added ~0.5 ms to each. Here we only hear its reports (flushes, for
 * commit_lsn) and decide what its end means for the copy.
 */
import type { Lsn } from '../lsn.js';
import type { PumpReport } from '../wal/wal_storage.js';
import type { UpstreamCopy } from './copy.js';

export interface PumpConfig {
  tli: number;
  flushBytes: number;
  statusIntervalMs: number;
}

export class PumpSupervisor {
  /** Resolves with the pump's last report. */
  readonly ended: Promise<PumpReport>;

  constructor(
    private readonly ctx: UpstreamCopy,
    lent: { fd: number; pending: Buffer },
    start: Lsn,
    cfg: PumpConfig,
    /** After a flush moved flush_lsn: the node decides commit_lsn. */
    flushed: () => void,
  ) {
    const stream = ctx.stream;
    let last = start;
    let ended!: (r: PumpReport) => void;
    this.ended = new Promise<PumpReport>((resolve) => (ended = resolve));
    ctx.pump = stream.store.ingestPump(
      lent.fd,
      lent.pending,
      { start, tli: cfg.tli, systemId: stream.systemId, pgVersion: stream.pgVersion, flushBytes: cfg.flushBytes, statusIntervalMs: cfg.statusIntervalMs },
      (r) => {
        try {
          if (r.received > last) {
            ctx.progressed = true;
            ctx.position.received = ctx.expected = r.received;
          }
          ctx.position.sawEnd(r.walEnd);
          const before = stream.flushLsn;
          stream.ingested(Number(r.received - last), r.flushed, r.fsyncs, r.acks);
          last = r.received;
          ctx.written = r.flushed;
          if (stream.flushLsn > before) flushed();
        } catch (err) {
          ctx.log.error({ err: (err as Error).message }, 'ingest: handling a pump report failed');
        }
        if (r.end) ended(r);
      },
    );
  }

  /** Asks the pump to fsync, acknowledge and give the socket back. */
  stop(): void {
    this.ctx.pump?.stop();
  }

  /** Waits for the pump's end and acts on it; afterwards the protocol code owns the socket again. */
  async run(): Promise<void> {
    const ctx = this.ctx;
    const r = await this.ended;
    ctx.pump = null;
    switch (r.end) {
      case 'other':
        // A message for the protocol code (CopyDone at a timeline's end, an ErrorResponse): from here on as without the pump.
        ctx.copy.giveBack(r.leftover!);
        break;
      case 'bad':
        ctx.fail(r.message!);
        break;
      case 'store':
        ctx.storageFail(`cannot store received WAL: ${r.message!}`);
        break;
      case 'stopped':
        break;
      default:
        ctx.client.destroy(new Error(r.message || `the upstream connection ended (${r.end})`));
    }
  }
}
