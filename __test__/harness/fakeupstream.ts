// A fake upstream PostgreSQL primary for tests of walkeeper's ingest: it
// answers the physical walsender commands the way PostgreSQL 15 (and
// ts/sender/session.ts) does, streams a fixed WAL buffer, and can be told to
// misbehave (corrupt, shift or drop XLogData, stall, hang up). Built from the
// project's own wire code (ts/protocol, ts/client).
//
//   const up = await startFakeUpstream({ wal: await fx.bytes(), walStart: fx.firstLsn, segmentSize: FIXTURE_SEG, systemId: fx.systemId });
//   ... point a client at up.host / up.port (or up.conninfo) ...
//   t.deepEqual(up.log.commands, ['IDENTIFY_SYSTEM', ...]);
//   await up.close();

import net from 'node:net';

import { formatLsn, historyFileName, segmentFileName, segmentNumber } from '../../ts/lsn.js';
import { parseReplicationCommand, type ReplicationCommand } from '../../ts/protocol/commands.js';
import { PgError, ProtocolError, SQLSTATE } from '../../ts/protocol/errors.js';
import type { FrontendMessage } from '../../ts/protocol/messages.js';
import {
  decodeHotStandbyFeedback,
  decodeNeonFeedback,
  decodeStandbyStatus,
  keepalive,
  pgNow,
  xlogData,
  type NeonFeedback,
} from '../../ts/protocol/replication.js';
import { backend } from '../../ts/protocol/serializer.js';
import { ServerConnection, type StartupInfo } from '../../ts/server/connection.js';
import {
  createReplicationSlotResult,
  identifySystemResult,
  nextTimelineRows,
  readReplicationSlotResult,
  segmentSizeText,
  showResult,
  timelineHistoryResult,
  walsenderParameters,
} from '../../ts/server/walsender.js';

/** What `mutate` may answer for one XLogData message. */
export type FakeUpstreamMutation =
  /** Send it unchanged. */
  | null
  /** Send this instead (an XLogData with this start and data; walEnd defaults to what an unchanged message would carry). */
  | { start: bigint; data: Buffer; walEnd?: bigint }
  /** Send these bytes instead (one or more complete messages, or garbage: written as they are). */
  | Buffer
  /** Send nothing for this one (the next one still starts where this one would have ended). */
  | 'drop';

export interface FakeUpstreamOptions {
  /** WAL bytes starting at walStart (real WAL from a fixture). */
  wal: Buffer;
  /** LSN of wal[0]; a segment start. */
  walStart: bigint;
  segmentSize: number;
  /** Reported by IDENTIFY_SYSTEM. */
  systemId: bigint;
  /** The current timeline. Default 1. */
  tli?: number;
  /** ParameterStatus server_version. Default '15.4'. */
  serverVersion?: string;
  /** XLogData payload size. Default 8192. */
  chunk?: number;
  /**
   * Called for each XLogData about to be sent (`index` counts this
   * connection's XLogData messages from 0, `connection` is 1-based): return
   * null to send it unchanged, or a replacement (see FakeUpstreamMutation).
   * Lets a test corrupt, shift or drop messages.
   */
  mutate?: (m: { start: bigint; data: Buffer; index: number; connection: number }) => FakeUpstreamMutation;
  /** After this many XLogData messages on a connection (dropped ones count), send no more WAL; keepalives go on (see keepaliveMs), the connection stays. */
  stopAfter?: number;
  /** Close the connection after this many XLogData messages on it (dropped ones count; 0: right after CopyBothResponse). Simulates the primary going away. */
  closeAfter?: number;
  /** How closeAfter closes: 'end' (default: flush, then FIN, like an exiting walsender) or 'reset' (TCP RST, like a crashed host). */
  closeMode?: 'end' | 'reset';
  /** TIMELINE_HISTORY contents by timeline (the text of 0000000N.history). The current timeline's one also defines which older timelines START_REPLICATION can stream and where they end. */
  histories?: Record<number, string>;
  /** Idle keepalives (replyRequested = 1) every this many ms once everything was sent; 0 turns them off (a silent primary). Default 500. */
  keepaliveMs?: number;
  /**
   * Serve WAL only up to this LSN (as a walkeeper node serves up to its
   * commit_lsn): XLogData stops there, walEnd (XLogData, keepalives) and
   * IDENTIFY_SYSTEM's xlogpos report it; a START_REPLICATION between it and
   * the end of `wal` waits. A function is asked again all the time (also by
   * running connections, which notice a raise within ~20 ms): a moving
   * commit_lsn. Default: no limit (the end of `wal`).
   */
  limit?: bigint | (() => bigint);
  /**
   * Lie in the walEnd field of XLogData and keepalives: called with the end
   * of the WAL sent on this connection so far (including the message about
   * to go out) and the honest value (the end of the WAL, or `limit`).
   * A mutation's own walEnd wins over it.
   */
  walEnd?: (sent: bigint, honest: bigint) => bigint;
  /** Accept Neon-style feedback ('z') during COPY and log it in log.neon (as a walkeeper node does); default false: 'z' is a protocol violation, as for PostgreSQL. */
  neonFeedback?: boolean;
}

export interface FakeUpstreamLog {
  /** Every query string received, verbatim, in order (all connections). */
  commands: string[];
  /** Standby status updates ('r'), in order. */
  status: { write: bigint; flush: bigint; apply: bigint; replyRequested: boolean }[];
  /** Hot standby feedback ('h'), in order. */
  feedback: { xmin: number; xminEpoch: number }[];
  /** Neon-style feedback ('z'), in order (only with the neonFeedback option). */
  neon: NeonFeedback[];
  /** TCP connections accepted. */
  connections: number;
  /** Startup packet parameters (user, replication, application_name, ...) of each session, in order. */
  startups: Record<string, string>[];
}

export interface FakeUpstream {
  host: string;
  port: number;
  /** 'host=127.0.0.1 port=N user=postgres' */
  conninfo: string;
  /** Everything the clients did. */
  log: FakeUpstreamLog;
  /** Physical replication slots (a test may add or edit them). restartLsn 0n: no WAL reserved. */
  slots: Map<string, { restartLsn: bigint }>;
  /** Changes behaviour for connections made from now on (running ones keep what they started with). */
  setOptions(p: Partial<FakeUpstreamOptions>): void;
  /** Drops every open connection at once (FIN, or RST with 'reset'); the server keeps listening. */
  disconnectAll(mode?: 'end' | 'reset'): void;
  /** Stops listening and drops every connection. */
  close(): Promise<void>;
}

const SLOT_NAME_RE = /^[a-z0-9_]{1,63}$/;

/** '15.4' -> '150004', as PostgreSQL reports server_version_num. */
function serverVersionNum(v: string): string {
  const m = /^(\d+)(?:\.(\d+))?/.exec(v);
  return m ? String(Number(m[1]) * 10000 + Number(m[2] ?? 0)) : '0';
}


function checkSlotName(name: string): void {
  if (!SLOT_NAME_RE.test(name)) {
    throw new PgError(SQLSTATE.INVALID_NAME, `replication slot name "${name}" contains invalid character`, {
      hint: 'Replication slot names may only contain lower case letters, numbers, and the underscore character.',
    });
  }
}

/** Parses history file text: `parentTLI <tab> switchpoint <tab> reason` lines. */
function parseHistory(text: string): { tli: number; end: bigint }[] {
  const out: { tli: number; end: bigint }[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+)\s+([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})/.exec(line);
    if (m) out.push({ tli: Number(m[1]), end: (BigInt('0x' + m[2]) << 32n) | BigInt('0x' + m[3]) });
  }
  return out;
}

type OptionalOptions = 'mutate' | 'stopAfter' | 'closeAfter' | 'limit' | 'walEnd';
type Resolved = Required<Omit<FakeUpstreamOptions, OptionalOptions>> & Pick<FakeUpstreamOptions, OptionalOptions>;

/** How often a running connection held back by a `limit` function looks at it again. */
const LIMIT_POLL_MS = 20;

function resolve(o: FakeUpstreamOptions): Resolved {
  return {
    ...o,
    tli: o.tli ?? 1,
    serverVersion: o.serverVersion ?? '15.4',
    chunk: o.chunk ?? 8192,
    closeMode: o.closeMode ?? 'end',
    histories: o.histories ?? {},
    keepaliveMs: o.keepaliveMs ?? 500,
    neonFeedback: o.neonFeedback ?? false,
  };
}

export async function startFakeUpstream(initial: FakeUpstreamOptions): Promise<FakeUpstream> {
  let opts = resolve(initial);
  const log: FakeUpstreamLog = { commands: [], status: [], feedback: [], neon: [], connections: 0, startups: [] };
  const slots = new Map<string, { restartLsn: bigint }>();
  const activeSlots = new Set<string>();
  const sockets = new Set<net.Socket>();
  const sessions = new Set<Promise<void>>();

  const server = net.createServer((socket) => {
    log.connections++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const session = new Session(socket, opts, log.connections, { log, slots, activeSlots });
    // Every way out of run() has closed the connection already (gently, so that
    // what was written still reaches the client), except an unexpected throw.
    const task = session
      .run()
      .catch(() => session.abort())
      .finally(() => sessions.delete(task));
    sessions.add(task);
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', fail);
      ok();
    });
  });
  const port = (server.address() as net.AddressInfo).port;

  const drop = (mode: 'end' | 'reset'): void => {
    for (const s of sockets) {
      if (mode === 'reset') s.resetAndDestroy();
      else s.end(() => s.destroy());
    }
  };

  return {
    host: '127.0.0.1',
    port,
    conninfo: `host=127.0.0.1 port=${port} user=postgres`,
    log,
    slots,
    setOptions(p) {
      opts = resolve({ ...opts, ...p });
    },
    disconnectAll(mode = 'end') {
      drop(mode);
    },
    async close() {
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      for (const s of sockets) s.destroy();
      await Promise.all([...sessions]);
      await closed;
    },
  };
}

interface Shared {
  log: FakeUpstreamLog;
  slots: Map<string, { restartLsn: bigint }>;
  activeSlots: Set<string>;
}

/** Where a timeline's WAL ends: null for the current one, undefined when not in the history. */
interface TimelineEnd {
  end: bigint;
  next: number;
}

class Session {
  private readonly conn: ServerConnection;
  /** XLogData messages this connection produced (mutate's index; counts for stopAfter / closeAfter). */
  private xlogCount = 0;

  constructor(
    private readonly socket: net.Socket,
    private readonly o: Resolved,
    private readonly connection: number,
    private readonly shared: Shared,
  ) {
    this.conn = new ServerConnection(socket, {
      tls: null,
      auth: { method: 'trust', users: new Map() },
      accept: (startup) => this.accept(startup),
      cancel: () => undefined,
    });
  }

  abort(): void {
    this.socket.destroy();
  }

  private get walEnd(): bigint {
    return this.o.walStart + BigInt(this.o.wal.length);
  }

  /** How far WAL may be sent now: `end`, or the limit when that is lower. */
  private served(end: bigint): bigint {
    const l = this.o.limit;
    const lim = typeof l === 'function' ? l() : l;
    return lim !== undefined && lim < end ? lim : end;
  }

  private accept(startup: StartupInfo): Record<string, string> {
    this.shared.log.startups.push({ ...startup.params });
    return walsenderParameters(this.o.serverVersion, startup.user, startup.applicationName);
  }

  private send(...bufs: Buffer[]): void {
    this.conn.write(bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs));
  }

  async run(): Promise<void> {
    if (!(await this.conn.handshake())) return;
    for (;;) {
      const msg = await this.conn.nextMessage();
      if (!msg) return;
      switch (msg.type) {
        case 'query':
          if (!(await this.query(msg.sql))) return;
          break;
        case 'terminate':
          this.conn.close();
          return;
        case 'copyData':
        case 'copyDone':
        case 'copyFail':
          break;
        case 'other':
          if (msg.code === 'S') this.send(backend.readyForQuery('I'));
          else if (msg.code === 'P') this.conn.sendError(new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'extended query protocol not supported in a replication connection'));
          break;
        default:
          this.conn.fatal(new ProtocolError(`unexpected message type "${msg.type}"`));
          return;
      }
    }
  }

  /** Runs one command and sends ReadyForQuery; false when the connection is over. */
  private async query(sql: string): Promise<boolean> {
    this.shared.log.commands.push(sql);
    try {
      const cmd = parseReplicationCommand(sql);
      if (!(await this.execute(cmd))) return false;
    } catch (err) {
      if (!(err instanceof PgError)) throw err;
      this.conn.sendError(err);
      if (err.severity === 'FATAL') return false;
    }
    if (this.conn.isClosed) return false;
    this.send(backend.readyForQuery('I'));
    return true;
  }

  /** false: the connection is gone (no ReadyForQuery). */
  private async execute(cmd: ReplicationCommand): Promise<boolean> {
    const o = this.o;
    switch (cmd.kind) {
      case 'empty':
      case 'sql':
        throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'cannot execute SQL commands in WAL sender for physical replication');
      case 'base_backup':
        throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'BASE_BACKUP is not supported by the fake upstream');
      case 'identify_system':
        this.send(identifySystemResult(o.systemId, o.tli, this.served(this.walEnd)));
        return true;
      case 'show': {
        const values: Record<string, string> = {
          wal_segment_size: segmentSizeText(o.segmentSize),
          data_directory_mode: '0700',
          server_version: o.serverVersion,
          server_version_num: serverVersionNum(o.serverVersion),
          integer_datetimes: 'on',
          wal_block_size: '8192',
          server_encoding: 'SQL_ASCII',
          timezone: 'UTC',
        };
        const name = cmd.name.toLowerCase();
        const v = values[name];
        if (v === undefined) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `unrecognized configuration parameter "${cmd.name}"`);
        this.send(showResult(name, v));
        return true;
      }
      case 'timeline_history': {
        const name = historyFileName(cmd.tli);
        const content = o.histories[cmd.tli];
        if (content === undefined) throw new PgError(SQLSTATE.UNDEFINED_FILE, `could not open file "pg_wal/${name}": No such file or directory`);
        this.send(timelineHistoryResult(name, content));
        return true;
      }
      case 'read_replication_slot': {
        checkSlotName(cmd.slot);
        const slot = this.shared.slots.get(cmd.slot);
        this.send(readReplicationSlotResult(slot ? { restartLsn: slot.restartLsn, tli: o.tli } : null));
        return true;
      }
      case 'create_replication_slot':
        if (cmd.logical) throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'logical replication slots are not supported by the fake upstream');
        checkSlotName(cmd.slot);
        if (this.shared.slots.has(cmd.slot)) throw new PgError(SQLSTATE.DUPLICATE_OBJECT, `replication slot "${cmd.slot}" already exists`);
        this.shared.slots.set(cmd.slot, { restartLsn: cmd.reserveWal ? o.walStart : 0n });
        this.send(createReplicationSlotResult(cmd.slot));
        return true;
      case 'drop_replication_slot':
        checkSlotName(cmd.slot);
        if (!this.shared.slots.has(cmd.slot)) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `replication slot "${cmd.slot}" does not exist`);
        if (this.shared.activeSlots.has(cmd.slot)) throw new PgError(SQLSTATE.OBJECT_IN_USE, `replication slot "${cmd.slot}" is active`);
        this.shared.slots.delete(cmd.slot);
        this.send(backend.commandComplete('DROP_REPLICATION_SLOT'));
        return true;
      case 'start_replication':
        if (cmd.logical) throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'logical replication is not supported by the fake upstream');
        return this.startReplication(cmd.start, cmd.tli ?? o.tli, cmd.slot);
    }
  }

  private timelineEnd(tli: number): TimelineEnd | null | undefined {
    const cur = this.o.tli;
    if (tli === cur) return null;
    const text = this.o.histories[cur];
    if (text === undefined) return undefined;
    const entries = parseHistory(text);
    const i = entries.findIndex((e) => e.tli === tli);
    if (i < 0) return undefined;
    return { end: entries[i]!.end, next: entries[i + 1]?.tli ?? cur };
  }

  private nextTimelineRow(h: TimelineEnd): Buffer {
    return nextTimelineRows(h.next, h.end);
  }

  private async startReplication(start: bigint, tli: number, slotName: string | null): Promise<boolean> {
    const o = this.o;
    const { slots, activeSlots } = this.shared;
    if (slotName !== null) {
      checkSlotName(slotName);
      if (!slots.has(slotName)) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `replication slot "${slotName}" does not exist`);
      if (activeSlots.has(slotName)) throw new PgError(SQLSTATE.OBJECT_IN_USE, `replication slot "${slotName}" is active for another process`);
    }
    const hist = this.timelineEnd(tli);
    if (hist === undefined) throw new PgError(SQLSTATE.INTERNAL_ERROR, `requested timeline ${tli} is not in this server's history`);
    if (hist !== null) {
      if (start > hist.end) {
        throw new PgError(SQLSTATE.INTERNAL_ERROR, `requested starting point ${formatLsn(start)} on timeline ${tli} is not in this server's history`, {
          detail: `This server's history forked from timeline ${tli} at ${formatLsn(hist.end)}.`,
        });
      }
      if (start === hist.end) {
        // Nothing to stream on that timeline: no COPY, just where the next one starts.
        this.send(this.nextTimelineRow(hist), backend.commandComplete('START_STREAMING'), backend.commandComplete('START_REPLICATION'));
        return true;
      }
    }
    this.send(backend.copyBothResponse());
    // As PostgreSQL does, these are reported after CopyBothResponse; the ERROR ends the COPY.
    const end = hist?.end ?? this.walEnd;
    if (start > end) {
      this.send(backend.errorResponse(new PgError(SQLSTATE.INTERNAL_ERROR, `requested starting point ${formatLsn(start)} is ahead of the WAL flush position of this server ${formatLsn(end)}`)));
      return true;
    }
    if (start < o.walStart) {
      const name = segmentFileName(tli, segmentNumber(start, o.segmentSize), o.segmentSize);
      this.send(backend.errorResponse(new PgError(SQLSTATE.UNDEFINED_FILE, `requested WAL segment ${name} has already been removed`)));
      return true;
    }
    if (slotName !== null) activeSlots.add(slotName);
    try {
      return await this.copy(start, end, hist, slotName);
    } finally {
      if (slotName !== null) activeSlots.delete(slotName);
    }
  }

  /** The COPY BOTH phase. false: the connection is gone. */
  private async copy(start: bigint, end: bigint, hist: TimelineEnd | null, slotName: string | null): Promise<boolean> {
    const o = this.o;
    const conn = this.conn;
    let pos = start;
    /** walEnd to report with `sent` bytes sent: the end served (or the walEnd option's lie). */
    const reportEnd = (sent: bigint): bigint => {
      const honest = this.served(end);
      return o.walEnd ? o.walEnd(sent, honest) : honest;
    };
    let clientDone = false;
    let copyOver = false;
    let wake: (() => void) | null = null;
    const kick = (): void => {
      const w = wake;
      wake = null;
      w?.();
    };

    const onCopyData = (data: Buffer): void => {
      if (data.length === 0) throw new ProtocolError('empty CopyData message from standby');
      switch (data[0]) {
        case 0x72: {
          const r = decodeStandbyStatus(data);
          this.shared.log.status.push({ write: r.write, flush: r.flush, apply: r.apply, replyRequested: r.replyRequested });
          const slot = slotName === null ? undefined : this.shared.slots.get(slotName);
          if (slot && r.flush !== 0n) slot.restartLsn = r.flush;
          if (r.replyRequested) this.send(keepalive(reportEnd(pos), pgNow(), false));
          return;
        }
        case 0x68: {
          const h = decodeHotStandbyFeedback(data);
          this.shared.log.feedback.push({ xmin: h.xmin, xminEpoch: h.xminEpoch });
          return;
        }
        case 0x7a:
          // PostgreSQL knows no 'z'.
          if (!o.neonFeedback) throw new ProtocolError('unexpected message type "z"');
          this.shared.log.neon.push(decodeNeonFeedback(data));
          return;
        default:
          throw new ProtocolError(`unexpected message type "${String.fromCharCode(data[0]!)}"`);
      }
    };

    const receive = async (): Promise<void> => {
      while (!copyOver) {
        const msg: FrontendMessage | null | undefined = await conn.nextMessage();
        if (msg === undefined) return;
        if (msg === null) {
          kick();
          return;
        }
        try {
          switch (msg.type) {
            case 'copyData':
              onCopyData(msg.data);
              continue;
            case 'copyDone':
              clientDone = true;
              kick();
              return;
            case 'terminate':
              conn.close();
              kick();
              return;
            default:
              throw new ProtocolError(`unexpected message type "${msg.type === 'other' ? msg.code : msg.type}" during COPY`);
          }
        } catch (err) {
          conn.fatal(err instanceof PgError ? err : new ProtocolError((err as Error).message));
          kick();
          return;
        }
      }
    };

    const sleep = (ms: number): Promise<void> =>
      new Promise<void>((ok) => {
        const timer = ms > 0 ? setTimeout(() => kick(), ms) : null;
        wake = () => {
          if (timer) clearTimeout(timer);
          ok();
        };
      });

    const hangUp = (): false => {
      if (o.closeMode === 'reset') this.socket.resetAndDestroy();
      else conn.close();
      return false;
    };

    const receiving = receive();
    // However the connection ends (a FATAL after a bad message, close()), wake
    // the loop: with keepaliveMs 0 nothing else would.
    void conn.closed.then(kick);
    let lastSent = Date.now();
    try {
      if (o.closeAfter === 0) return hangUp();
      for (;;) {
        if (conn.isClosed) return false;
        if (clientDone) {
          this.send(backend.copyDone(), ...(hist ? [this.nextTimelineRow(hist)] : []), backend.commandComplete('START_STREAMING'), backend.commandComplete('START_REPLICATION'));
          return true;
        }
        const stopped = o.stopAfter !== undefined && this.xlogCount >= o.stopAfter;
        const upTo = this.served(end);
        if (pos < upTo && !stopped) {
          const len = Number(upTo - pos < BigInt(o.chunk) ? upTo - pos : BigInt(o.chunk));
          const off = Number(pos - o.walStart);
          const data = o.wal.subarray(off, off + len);
          const index = this.xlogCount++;
          const m = o.mutate ? o.mutate({ start: pos, data: Buffer.from(data), index, connection: this.connection }) : null;
          let out: Buffer | null;
          const sentEnd = pos + BigInt(len);
          if (m === null) out = xlogData(pos, reportEnd(sentEnd), pgNow(), data);
          else if (m === 'drop') out = null;
          else if (Buffer.isBuffer(m)) out = m;
          else out = xlogData(m.start, m.walEnd ?? reportEnd(sentEnd), pgNow(), m.data);
          pos = sentEnd;
          lastSent = Date.now();
          if (out && !conn.write(out)) await this.drained();
          if (o.closeAfter !== undefined && this.xlogCount >= o.closeAfter) return hangUp();
          continue;
        }
        if (hist && pos >= hist.end) {
          // End of a historic timeline: CopyDone, wait for the client's, then the next timeline.
          this.send(backend.copyDone());
          while (!clientDone && !conn.isClosed) await sleep(0);
          if (conn.isClosed) return false;
          this.send(this.nextTimelineRow(hist), backend.commandComplete('START_STREAMING'), backend.commandComplete('START_REPLICATION'));
          return true;
        }
        if (typeof o.limit === 'function' && pos < end && !stopped) {
          // Held back by a limit that may move at any moment: look again soon, keepalives at their own pace.
          await sleep(o.keepaliveMs > 0 ? Math.min(LIMIT_POLL_MS, o.keepaliveMs) : LIMIT_POLL_MS);
          if (!clientDone && !conn.isClosed && o.keepaliveMs > 0 && Date.now() - lastSent >= o.keepaliveMs) {
            this.send(keepalive(reportEnd(pos), pgNow(), true));
            lastSent = Date.now();
          }
          continue;
        }
        await sleep(o.keepaliveMs);
        if (!clientDone && !conn.isClosed && o.keepaliveMs > 0) {
          this.send(keepalive(reportEnd(pos), pgNow(), true));
          lastSent = Date.now();
        }
      }
    } finally {
      copyOver = true;
      kick();
      conn.interruptRead();
      await receiving;
    }
  }

  private drained(): Promise<void> {
    if (this.conn.isClosed) return Promise.resolve();
    return new Promise<void>((ok) => {
      const done = (): void => {
        this.conn.socket.off('drain', done);
        ok();
      };
      this.conn.socket.once('drain', done);
      void this.conn.closed.then(done);
    });
  }
}
