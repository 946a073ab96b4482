/**
 * Ingest: a stream follows an upstream PostgreSQL server the way a standby's
 * walreceiver does — IDENTIFY_SYSTEM, a physical slot of its own
 * (`walkeeper_<node-id>`, so the primary keeps WAL while the node is down),
 * START_REPLICATION from the local end of valid WAL — and writes what it
 * receives through the Rust store. fsyncs are grouped: everything that has
 * arrived is appended, and the flush happens when nothing more is
 * immediately readable or a size bound is reached. Only flushed WAL is
 * acknowledged ('r' write/flush/apply, apply = flush), which is what lets the
 * primary count this node in synchronous_standby_names.
 *
 * Once in COPY the socket is lent to a Rust pump (pump_supervisor.ts);
 * this module then only hears of flushes (to decide commit_lsn) and says
 * what the pump cannot know (hot standby feedback). Where there is no
 * descriptor to lend (TLS), or with `pump: false`, the WAL goes through the
 * JavaScript writer (writer.ts) and the thread pool.
 *
 * WAL is checked before anything of it is written: it must continue exactly
 * where the stream ends, and its page headers must belong to this stream
 * (magic, pageaddr, system id, segment size). An upstream that breaks these
 * stops ingest for the stream with a logged error; the node keeps serving.
 */
import { formatLsn, parseLsn, segmentStart, type Lsn } from '../lsn.js';
import { ReplicationClient, type CopyBoth } from '../client/client.js';
import { ConnInfoError, parseConnInfo, redactConnInfo, toConnectOptions } from '../client/conninfo.js';
import { PgError } from '../protocol/errors.js';
import { Backoff } from './backoff.js';
import { IngestFatal, StorageError, UpstreamCopy, UpstreamPosition } from './copy.js';
import { PumpSupervisor } from './pump_supervisor.js';
import { GroupCommitWriter } from './writer.js';
import type { Logger } from '../log.js';
import type { Stream } from '../stream/stream.js';
import { nextTimeline, parseHistory, timelineEntry, timelineOfLsn, type TimelineEntry } from '../wal/timeline.js';
import { PageHeaderCheck } from '../wal/page_check.js';

export { IngestFatal, StorageError };

export type UpstreamState = 'connecting' | 'streaming' | 'waiting' | 'stopped' | 'failed';

export interface IngestConfig {
  /** libpq conninfo (URI or key=value) of the upstream. */
  conninfo: string;
  /** application_name, what the primary's synchronous_standby_names refers to. */
  applicationName: string;
  /** The physical slot on the upstream. */
  slotName: string;
  stream: string;
  /** Idle 'r'/'h' cadence (wal_receiver_status_interval). */
  statusIntervalMs: number;
  /** Flush at least this often in bytes even while data keeps coming. */
  flushBytes: number;
  /** Pause reading from the upstream above this many received-but-unwritten bytes. */
  maxQueuedBytes: number;
  /** Lend the socket to the Rust ingest pump when it can be (false: always the JavaScript path). */
  pump: boolean;
}

export const DEFAULT_INGEST: Omit<IngestConfig, 'conninfo' | 'applicationName' | 'slotName' | 'stream'> = {
  statusIntervalMs: 10_000,
  flushBytes: 2 * 1024 * 1024,
  maxQueuedBytes: 32 * 1024 * 1024,
  // Off: WALKEEPER_INGEST_PUMP=0, read by `walkeeper node` (for comparing the two paths).
  pump: true,
};

/** What ingest needs from the node. */
export interface IngestHost {
  stream(name: string): Stream | undefined;
  createStream(name: string, init: { systemId: bigint; pgVersion: number; segmentSize: number; tli: number; start: Lsn; histories: Map<number, string> }): Promise<Stream>;
  /** Called after each flush: the node decides commit_lsn (flush_lsn without peers; a quorum with them). */
  flushed(stream: Stream): void;
  /** The stream's writer lock (peer recovery may hold it while the upstream was away); resolves with its release. */
  acquireWriter(stream: Stream): Promise<() => void>;
  /**
   * Why `stream` may not take WAL of database system `systemId` on this
   * node (another stream here follows that system), or null.
   */
  systemTaken?(stream: string, systemId: bigint): string | null;
}

/**
 * A physical replication connection to the first host of `conninfo` that
 * answers (libpq's multi-host order); a wrong password or a bad conninfo is
 * not retried on the next host.
 */
export async function connectUpstream(conninfo: string, applicationName: string): Promise<{ client: ReplicationClient; connectedTo: string }> {
  const ci = parseConnInfo(conninfo);
  let last: Error | null = null;
  for (const h of ci.hosts) {
    try {
      const client = await ReplicationClient.connect({
        ...toConnectOptions(ci, h),
        database: 'replication',
        replication: 'true',
        applicationName,
      } as Parameters<typeof ReplicationClient.connect>[0]);
      return { client, connectedTo: `${h.host}:${h.port}` };
    } catch (err) {
      last = err as Error;
      if (err instanceof ConnInfoError || (err instanceof PgError && (err.code === '28P01' || err.code === '28000'))) throw err;
    }
  }
  throw last ?? new Error('no upstream host to connect to');
}

function parseSegmentSize(text: string): number {
  const m = /^(\d+)\s*(MB|GB|kB)$/.exec(text.trim());
  if (!m) throw new IngestFatal(`cannot parse the upstream's wal_segment_size "${text}"`);
  return Number(m[1]) * (m[2] === 'GB' ? 1 << 30 : m[2] === 'MB' ? 1 << 20 : 1 << 10);
}

export interface UpstreamStatus {
  conninfo: string;
  state: UpstreamState;
  connectedTo: string | null;
  receivedLsn: Lsn | null;
  upstreamEndLsn: Lsn | null;
  lastError: string | null;
  since: Date;
  reconnects: number;
}

export class Ingest {
  private _state: UpstreamState = 'connecting';
  private since = new Date();
  private lastError: string | null = null;
  private connectedTo: string | null = null;
  private readonly position = new UpstreamPosition();
  private reconnects = 0;
  private stopped = false;
  private client: ReplicationClient | null = null;
  /** The running pump, while the socket is lent to it. */
  private pump: PumpSupervisor | null = null;
  private wakeLoop: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private readonly backoff = new Backoff();
  private readonly log: Logger;

  constructor(
    private readonly host: IngestHost,
    private readonly cfg: IngestConfig,
    log: Logger,
  ) {
    this.log = log.child({ stream: cfg.stream, upstream: redactConnInfo(cfg.conninfo) });
  }

  /** The stream this ingest fills. */
  get streamName(): string {
    return this.cfg.stream;
  }

  get state(): UpstreamState {
    return this._state;
  }

  status(): UpstreamStatus {
    return {
      conninfo: redactConnInfo(this.cfg.conninfo),
      state: this._state,
      connectedTo: this.connectedTo,
      receivedLsn: this.position.received,
      upstreamEndLsn: this.position.end,
      lastError: this.lastError,
      since: this.since,
      reconnects: this.reconnects,
    };
  }

  private setState(s: UpstreamState): void {
    if (s !== this._state) {
      this._state = s;
      this.since = new Date();
    }
  }

  start(): void {
    this.running ??= this.loop();
  }

  /** Stops following: the current copy ends, what was received is flushed. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeLoop?.();
    // The pump fsyncs, acknowledges and lets go of the socket before the connection ends.
    if (this.pump) {
      this.pump.stop();
      await this.pump.ended;
    }
    await this.client?.close().catch(() => undefined);
    await this.running;
    if (this._state !== 'failed') this.setState('stopped');
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const startedAt = Date.now();
      let progressed = false;
      try {
        this.setState('connecting');
        progressed = await this.session();
      } catch (err) {
        if (this.stopped) break;
        if (err instanceof IngestFatal || err instanceof ConnInfoError) {
          this.lastError = err.message;
          this.setState('failed');
          this.log.error({ err: err.message }, 'ingest stopped');
          return;
        }
        this.lastError = (err as Error).message;
        if (err instanceof StorageError) this.log.error({ err: err.message }, 'cannot store WAL: acknowledging nothing past flush_lsn, retrying');
        else this.log.warn({ err: (err as Error).message }, 'upstream connection lost');
      } finally {
        this.connectedTo = null;
        const c = this.client;
        this.client = null;
        await c?.close().catch(() => undefined);
      }
      if (this.stopped) break;
      if (progressed) this.backoff.reset();
      this.reconnects++;
      this.setState('waiting');
      const wait = this.backoff.next(startedAt, Date.now());
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        this.wakeLoop = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wakeLoop = null;
    }
  }

  private async connect(): Promise<ReplicationClient> {
    const { client, connectedTo } = await connectUpstream(this.cfg.conninfo, this.cfg.applicationName);
    this.connectedTo = connectedTo;
    return client;
  }

  /** One connection; returns whether it received any WAL. */
  private async session(): Promise<boolean> {
    const client = (this.client = await this.connect());
    if (this.stopped) return false;
    const sys = await client.identifySystem();
    const segmentSize = parseSegmentSize(String((await client.query('SHOW wal_segment_size')).rows[0]?.[0]));
    const pgVersion = Number.parseInt(client.parameters.server_version ?? '', 10);
    const histories = new Map<number, string>();
    for (let t = 2; t <= sys.timeline; t++) {
      // Only the newest file is needed to know the history, but keep every
      // ancestor's too: clients ask for each TLI's file they lack.
      try {
        histories.set(t, (await client.timelineHistory(t)).content);
      } catch (err) {
        if (t === sys.timeline) throw err;
      }
    }
    const history: TimelineEntry[] = parseHistory(sys.timeline, histories.get(sys.timeline) ?? null);
    // One stream per database system on a node: two would hold the same WAL twice, with two slots holding it back on the primary.
    const taken = this.host.systemTaken?.(this.cfg.stream, sys.systemId) ?? null;
    if (taken !== null) throw new IngestFatal(taken);
    let stream = this.host.stream(this.cfg.stream);
    if (stream) {
      if (stream.systemId !== sys.systemId) {
        throw new IngestFatal(`stream ${stream.name} holds WAL of database system ${stream.systemId}; the upstream is system ${sys.systemId}; refusing its WAL`);
      }
      if (stream.segmentSize !== segmentSize) throw new IngestFatal(`stream ${stream.name} has ${stream.segmentSize}-byte segments, the upstream ${segmentSize}`);
      if (stream.pgVersion !== pgVersion) throw new IngestFatal(`stream ${stream.name} holds PostgreSQL ${stream.pgVersion} WAL, the upstream is PostgreSQL ${pgVersion}`);
    }
    const slot = await this.ensureSlot(client);
    if (!stream) {
      const start = segmentStart(slot ?? sys.xlogpos, segmentSize);
      const tli = timelineOfLsn(history, start);
      const own = new Map([...histories].filter(([t]) => t <= tli));
      stream = await this.host.createStream(this.cfg.stream, { systemId: sys.systemId, pgVersion, segmentSize, tli, start, histories: own });
      this.log.info({ start: formatLsn(start), tli, system_id: sys.systemId.toString() }, 'new stream from the upstream');
    }
    if (sys.timeline < stream.tli) throw new IngestFatal(`the upstream is on timeline ${sys.timeline}, behind this stream's timeline ${stream.tli}`);
    // The upstream answers: take the stream from peer recovery, if it was
    // writing, and continue from what it flushed.
    const release = await this.host.acquireWriter(stream);
    try {
      return await this.follow(client, stream, sys.timeline, history, histories);
    } finally {
      release();
    }
  }

  private async follow(client: ReplicationClient, stream: Stream, upstreamTli: number, history: TimelineEntry[], histories: Map<number, string>): Promise<boolean> {
    const sys = { timeline: upstreamTli };
    // After a failed write or fsync, what was written but not fsynced is in
    // an unknown state: drop it and continue from flush_lsn.
    if (stream.storageError !== null) await stream.resetToFlushed();
    // The upstream switched timelines since our WAL: its history says where
    // our timeline ended there; WAL we hold past that point diverged.
    if (sys.timeline > stream.tli) {
      const ours = timelineEntry(history, stream.tli);
      if (!ours) throw new IngestFatal(`the upstream's timeline ${sys.timeline} does not descend from this stream's timeline ${stream.tli}`);
      if (ours.end !== null && stream.flushLsn > ours.end) {
        await stream.truncateTo(ours.end, `the upstream's timeline ${ours.tli} ended at ${formatLsn(ours.end)} (timeline switch)`);
      }
    }
    let progressed = false;
    for (;;) {
      const start = stream.flushLsn;
      const tli = timelineOfLsn(history, start);
      if (tli > stream.tli) {
        // Catch up on switches that happened at or before our end.
        for (const e of history) {
          if (e.tli > stream.tli && e.tli <= tli) {
            const text = histories.get(e.tli) ?? (await client.timelineHistory(e.tli)).content;
            await stream.switchTimeline(e.tli, text);
          }
        }
      }
      const r = await this.stream(client, stream, start, tli);
      progressed ||= r.progressed;
      if (this.stopped) return progressed;
      if (r.nextTimeline) {
        const next = nextTimeline(history, tli);
        const text = histories.get(r.nextTimeline) ?? (await client.timelineHistory(r.nextTimeline)).content;
        if (!next || next.tli !== r.nextTimeline) {
          // The upstream switched while we streamed: learn its new history.
          const h2 = parseHistory(r.nextTimeline, text);
          history.splice(0, history.length, ...h2);
          histories.set(r.nextTimeline, text);
        }
        continue;
      }
      return progressed;
    }
  }

  /** READ_REPLICATION_SLOT, creating the slot (RESERVE_WAL) when missing; returns its restart_lsn. */
  private async ensureSlot(client: ReplicationClient): Promise<Lsn | null> {
    const read = async () => (await client.query(`READ_REPLICATION_SLOT ${this.cfg.slotName}`)).rows[0] ?? [null, null, null];
    let row = await read();
    if (row[0] === null) {
      try {
        await client.query(`CREATE_REPLICATION_SLOT "${this.cfg.slotName}" PHYSICAL RESERVE_WAL`);
        this.log.info({ slot: this.cfg.slotName }, 'created the replication slot on the upstream');
      } catch (err) {
        if (!(err instanceof PgError && err.code === '42710')) throw err;
      }
      row = await read();
    }
    return row[1] ? parseLsn(row[1]) : null;
  }

  /** One START_REPLICATION; resolves when the copy ends. */
  private async stream(client: ReplicationClient, stream: Stream, start: Lsn, tli: number): Promise<{ progressed: boolean; nextTimeline: number | null }> {
    const check = new PageHeaderCheck(stream.segmentSize, stream.systemId, stream.pgVersion, tli);
    const copy: CopyBoth = client.startReplication(`START_REPLICATION SLOT "${this.cfg.slotName}" PHYSICAL ${formatLsn(start)} TIMELINE ${tli}`);
    let lent: { fd: number; pending: Buffer } | null = null;
    if (this.cfg.pump) copy.onStart = () => (lent = copy.lend());
    const ctx = new UpstreamCopy(client, copy, stream, this.position, this.log, start);
    const flushed = () => this.host.flushed(stream);
    const writer = new GroupCommitWriter(ctx, this.cfg, flushed);
    copy.onXLogData = (m) => {
      if (ctx.fatal) return;
      if (m.start !== ctx.expected) return ctx.fail(`the upstream sent WAL at ${formatLsn(m.start)}, expected ${formatLsn(ctx.expected)} (not contiguous)`);
      const bad = check.check(m.start, m.data);
      if (bad) return ctx.fail(`the upstream sent invalid WAL: ${bad}`);
      ctx.expected += BigInt(m.data.length);
      this.position.received = ctx.expected;
      this.position.sawEnd(m.end);
      writer.push(m.start, m.data);
    };
    copy.onKeepalive = (k) => {
      this.position.sawEnd(k.walEnd);
      if (k.replyRequested) ctx.sendStatus(false);
    };
    const timer = setInterval(() => {
      ctx.sendStatus(false);
      ctx.sendFeedback(true);
    }, this.cfg.statusIntervalMs);
    const onFeedback = () => ctx.sendFeedback(false);
    stream.on('feedback', onFeedback);
    let result: Awaited<typeof copy.done> | null = null;
    let failure: unknown = null;
    try {
      if (await copy.started) {
        this.setState('streaming');
        this.log.info({ start: formatLsn(start), tli, connected_to: this.connectedTo, pump: lent !== null }, 'streaming from the upstream');
      }
      if (lent && !this.stopped) {
        this.pump = new PumpSupervisor(ctx, lent, start, { tli, flushBytes: this.cfg.flushBytes, statusIntervalMs: this.cfg.statusIntervalMs }, flushed);
        await this.pump.run();
        this.pump = null;
      }
      result = await copy.done;
    } catch (err) {
      failure = err;
    } finally {
      clearInterval(timer);
      stream.off('feedback', onFeedback);
      await writer.finish();
    }
    if (ctx.fatal) throw ctx.fatal;
    if (failure) throw failure;
    ctx.sendStatus(false);
    const progressed = ctx.progressed;
    if ((result!.reason === 'serverEnd' || result!.reason === 'noCopy') && result!.nextTimeline) {
      this.log.info({ tli, next_tli: result!.nextTimeline.timeline, at: formatLsn(result!.nextTimeline.startLsn) }, 'end of the upstream timeline');
      return { progressed, nextTimeline: result!.nextTimeline.timeline };
    }
    if (result!.reason === 'error') throw new Error(result!.error?.message ?? 'the upstream ended the stream');
    if (result!.reason === 'commandComplete') throw new Error('the upstream is shutting down');
    return { progressed, nextTimeline: null };
  }
}
