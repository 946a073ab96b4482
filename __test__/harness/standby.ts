// Real PostgreSQL standbys for tests: pg_basebackup of a harness cluster into
// a new temp data dir, a standby started on it (streaming from a real primary
// or from any server that speaks the replication protocol, e.g. walkeeper),
// promotion, replay waits, and a ready-made timeline switch (TLI 1 -> 2).
//
// A standby is a PgCluster subclass (StandbyCluster), so everything that
// takes a PgCluster (generateWal, basebackup, ...) takes a standby too, and
// stopAllClusters()/registerCleanupHooks() and the exit hook cover it.

import { existsSync } from 'node:fs';
import { appendFile, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { conninfoFor } from './conninfo.js';
import { PgCluster, startPostgres, startWithPortRetry, trackCluster, type TeardownContext } from './pg.js';
import { fmtLsn, lsnOf, runPgTool, type PgToolResult } from './pgtools.js';
import { freePort } from './ports.js';
import { chownToServerUser, createTempDir, makeServerDir, type TempDir } from './tmp.js';

const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------
// small helpers

function confValue(v: string | number | boolean): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

async function pollUntil<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined>,
  describe: () => Promise<string> | string,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      if ((e as { fatal?: boolean }).fatal) throw e;
      lastErr = (e as Error).message;
    }
    if (Date.now() > deadline) {
      let extra = '';
      try {
        extra = await describe();
      } catch (e) {
        extra = `(state unavailable: ${(e as Error).message})`;
      }
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ''}\n${extra}`);
    }
    await sleep(intervalMs);
  }
}

function fatal(msg: string): Error {
  return Object.assign(new Error(msg), { fatal: true });
}

/** `pg_controldata -D dataDir` as a name → value map (run as the server user). */
export async function controlData(dataDir: string): Promise<Record<string, string>> {
  const r = await runPgTool('pg_controldata', ['-D', dataDir], { asPostgres: true, check: true, timeoutMs: 30_000 });
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

export interface TimelineHistoryEntry {
  /** The parent timeline. */
  tli: number;
  /** Where the child timeline forked off `tli`. */
  switchLsn: bigint;
  reason: string;
}

/** Parses a timeline history file's text (`parentTLI\tX/X\treason` lines). */
export function parseTimelineHistory(text: string): TimelineHistoryEntry[] {
  const out: TimelineHistoryEntry[] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (l === '' || l.startsWith('#')) continue;
    const [tli, lsn, ...reason] = l.split('\t');
    out.push({ tli: Number(tli), switchLsn: lsnOf(lsn!), reason: reason.join('\t') });
  }
  return out;
}

/** Reads and parses `<walDir>/%08X.history` for timeline `tli`. */
export async function readTimelineHistory(walDir: string, tli: number): Promise<TimelineHistoryEntry[]> {
  const name = `${tli.toString(16).toUpperCase().padStart(8, '0')}.history`;
  return parseTimelineHistory(await readFile(path.join(walDir, name), 'utf8'));
}

// ---------------------------------------------------------------------------
// pg_basebackup

export interface BasebackupOptions {
  /** pg_basebackup -X. Default 'stream'. */
  walMethod?: 'none' | 'fetch' | 'stream';
  /** Extra pg_basebackup arguments. */
  extraArgs?: string[];
  /** Default 120000 ms. */
  timeoutMs?: number;
}

/** Temp dirs of data dirs made by basebackup(), so startStandby()/removeBasebackup() can own them. */
const backups = new Map<string, TempDir>();

/**
 * pg_basebackup of `primary` (as the postgres OS user when root) into a new
 * temp dir `<tmp>/data` (owned by postgres, mode 0700), with `-X walMethod`
 * (default stream), `-c fast`, `--no-sync`, no `-R`. Returns the data dir.
 * It is removed by the standby's destroy() once started with startStandby(),
 * else by removeBasebackup() or at process exit.
 */
export async function basebackup(primary: PgCluster, opts: BasebackupOptions = {}): Promise<string> {
  const tmp = await createTempDir('walkeeper-standby-');
  const dataDir = path.join(tmp.path, 'data');
  try {
    await makeServerDir(dataDir, 0o700);
    const args = [
      '-D', dataDir,
      '-d', conninfoFor(primary, { application_name: 'walkeeper_basebackup' }),
      '-X', opts.walMethod ?? 'stream',
      '-c', 'fast',
      '--no-sync',
      '-w',
      ...(opts.extraArgs ?? []),
    ];
    const r = await runPgTool('pg_basebackup', args, { asPostgres: true, timeoutMs: opts.timeoutMs ?? 120_000 });
    await appendFile(path.join(tmp.path, 'basebackup.log'), r.stdout + r.stderr);
    if (r.code !== 0) {
      throw new Error(`pg_basebackup ${args.join(' ')} failed (exit ${r.code ?? r.signal}):\n${r.stderr}${r.stdout}`);
    }
    backups.set(dataDir, tmp);
    return dataDir;
  } catch (e) {
    await tmp.cleanup().catch(() => undefined);
    throw e;
  }
}

/** Removes a data dir made by basebackup() that was never started (no-op for others / when already gone). */
export async function removeBasebackup(dataDir: string): Promise<void> {
  const tmp = backups.get(dataDir);
  if (tmp === undefined) return;
  backups.delete(dataDir);
  await tmp.cleanup();
}

// ---------------------------------------------------------------------------
// standbys

export interface StartStandbyOptions {
  /** primary_conninfo, e.g. conninfoFor(primary) or conninfoFor({host, port: walkeeperPort}). */
  primaryConninfo: string;
  /** Extra postgresql.conf settings (appended last, so they win over the harness defaults below). */
  conf?: Record<string, string | number | boolean>;
  /** restore_command (default: none). */
  restoreCommand?: string;
  /** hot_standby. Default true. Without it the server never accepts connections until promoted. */
  hotStandby?: boolean;
  /**
   * What startStandby() waits for. true (the default with hot standby):
   * until the standby accepts queries, i.e. has reached a consistent state.
   * false (forced without hot standby): only until the postmaster answers on
   * its port at all — a 57P03 "the database system is starting up" / "not
   * yet accepting connections" counts as up; call waitReady() later.
   */
  waitReady?: boolean;
  /** How long startStandby() waits (for either kind of readiness). Default 60000 ms. */
  readyTimeoutMs?: number;
}

/** One row of pg_stat_wal_receiver (LSNs as bigint), or null when no walreceiver runs. */
export interface WalReceiverStatus {
  pid: number;
  status: string;
  receiveStartLsn: bigint | null;
  receiveStartTli: number;
  writtenLsn: bigint | null;
  flushedLsn: bigint | null;
  receivedTli: number;
  latestEndLsn: bigint | null;
  slotName: string | null;
  senderHost: string | null;
  senderPort: number | null;
  conninfo: string | null;
}

function lsnOrNull(s: string | null | undefined): bigint | null {
  return s === null || s === undefined ? null : lsnOf(s);
}

/**
 * A standby started by startStandby(): a PgCluster (query/stop/kill/start/
 * destroy/...) plus promotion and replay helpers. Queries need hot standby
 * (the default) and a consistent state, or a promoted server.
 */
export class StandbyCluster extends PgCluster {
  readonly primaryConninfo: string;
  readonly hotStandby: boolean;
  private readonly acceptStartingUp: boolean;

  /** @internal use startStandby() */
  constructor(
    tmp: TempDir,
    port: number,
    walSegSizeMB: number,
    readyTimeoutMs: number,
    opts: { primaryConninfo: string; hotStandby: boolean; waitReady: boolean },
  ) {
    super(tmp, port, walSegSizeMB, readyTimeoutMs);
    this.primaryConninfo = opts.primaryConninfo;
    this.hotStandby = opts.hotStandby;
    this.acceptStartingUp = !opts.waitReady;
  }

  protected override upDespite(err: Error): boolean {
    // 57P03 cannot_connect_now: the postmaster is up but not (yet) letting us in:
    // "the database system is starting up", "... is not yet accepting connections"
    // (Consistent recovery state has not been yet reached), "... is not accepting
    // connections" (Hot standby mode is disabled).
    return this.acceptStartingUp && (err as { code?: string }).code === '57P03';
  }

  /**
   * Waits until the server accepts queries (a hot standby: once consistent).
   * Tolerates connection refusals and 57P03 ("starting up", "not yet
   * accepting connections") until timeoutMs; fails at once if the server
   * process is gone.
   */
  async waitReady(timeoutMs = 60_000): Promise<void> {
    await pollUntil(
      `standby on port ${this.port} to accept connections`,
      timeoutMs,
      async () => {
        if (!this.running) throw fatal(`standby on port ${this.port} is not running\n--- ${this.logFile} (tail) ---\n${this.logTail()}`);
        await this.query('SELECT 1');
        return true;
      },
      () => `--- ${this.logFile} (tail) ---\n${this.logTail()}`,
      100,
    );
  }

  /** pg_is_in_recovery(). */
  async inRecovery(): Promise<boolean> {
    const [r] = await this.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
    return r!.r;
  }

  /** pg_last_wal_replay_lsn(): end of the last record replayed (null if recovery never replayed any). */
  async replayLsn(): Promise<bigint | null> {
    const [r] = await this.query<{ l: string | null }>('SELECT pg_last_wal_replay_lsn()::text AS l');
    return lsnOrNull(r!.l);
  }

  /** pg_last_wal_receive_lsn(): flushed by the walreceiver (null if streaming never started). */
  async receiveLsn(): Promise<bigint | null> {
    const [r] = await this.query<{ l: string | null }>('SELECT pg_last_wal_receive_lsn()::text AS l');
    return lsnOrNull(r!.l);
  }

  /** pg_stat_wal_receiver, or null when no walreceiver is running. */
  async walReceiver(): Promise<WalReceiverStatus | null> {
    const rows = await this.query<Record<string, string | number | null>>(
      `SELECT pid, status, receive_start_lsn::text AS rsl, receive_start_tli AS rst, written_lsn::text AS wl,
              flushed_lsn::text AS fl, received_tli AS rt, latest_end_lsn::text AS lel, slot_name,
              sender_host, sender_port, conninfo
         FROM pg_stat_wal_receiver`,
    );
    const r = rows[0];
    if (r === undefined || r.pid === null) return null;
    return {
      pid: Number(r.pid),
      status: String(r.status),
      receiveStartLsn: lsnOrNull(r.rsl as string | null),
      receiveStartTli: Number(r.rst),
      writtenLsn: lsnOrNull(r.wl as string | null),
      flushedLsn: lsnOrNull(r.fl as string | null),
      receivedTli: Number(r.rt),
      latestEndLsn: lsnOrNull(r.lel as string | null),
      slotName: (r.slot_name as string | null) ?? null,
      senderHost: (r.sender_host as string | null) ?? null,
      senderPort: r.sender_port === null ? null : Number(r.sender_port),
      conninfo: (r.conninfo as string | null) ?? null,
    };
  }

  /** Waits until pg_last_wal_replay_lsn() >= lsn. The error names replay/receive LSNs, the walreceiver state and the log tail. */
  async waitReplayed(lsn: bigint, timeoutMs = 30_000): Promise<void> {
    await pollUntil(
      `standby on port ${this.port} to replay up to ${fmtLsn(lsn)}`,
      timeoutMs,
      async () => {
        if (!this.running) throw fatal(`standby on port ${this.port} is not running\n--- ${this.logFile} (tail) ---\n${this.logTail()}`);
        const r = await this.replayLsn();
        return r !== null && r >= lsn ? true : undefined;
      },
      async () => this.describe(),
    );
  }

  /**
   * Promotes the standby (`pg_ctl promote -w`) and waits until
   * pg_is_in_recovery() is false (also without hot standby: a promoted
   * server accepts connections).
   */
  async promote(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
    let r: PgToolResult;
    for (;;) {
      r = await runPgTool('pg_ctl', ['promote', '-D', this.dataDir, '-w', '-t', String(secs)], {
        asPostgres: true,
        cwd: this.dir,
        timeoutMs: timeoutMs + 5000,
      });
      // Right after start, pg_control still says "shut down" / "starting up" until the
      // startup process enters archive recovery: pg_ctl refuses ("not in standby mode").
      if (r.code === 0 || !/not in standby mode/.test(r.stderr) || Date.now() > deadline || !this.running) break;
      await sleep(100);
    }
    if (r.code !== 0) {
      throw new Error(`pg_ctl promote failed (exit ${r.code ?? r.signal}): ${r.stderr}${r.stdout}\n--- ${this.logFile} (tail) ---\n${this.logTail()}`);
    }
    await pollUntil(
      `promoted server on port ${this.port} to leave recovery`,
      timeoutMs,
      async () => ((await this.inRecovery()) ? undefined : true),
      () => `--- ${this.logFile} (tail) ---\n${this.logTail()}`,
    );
  }

  /** A multi-line summary (LSNs, walreceiver, log tail) for failure messages. */
  async describe(): Promise<string> {
    const parts: string[] = [];
    try {
      const [r] = await this.query<{ rec: boolean; replay: string | null; recv: string | null }>(
        'SELECT pg_is_in_recovery() AS rec, pg_last_wal_replay_lsn()::text AS replay, pg_last_wal_receive_lsn()::text AS recv',
      );
      parts.push(`in recovery: ${r!.rec}, replay: ${r!.replay}, receive: ${r!.recv}`);
      const w = await this.walReceiver();
      parts.push(
        w === null
          ? 'walreceiver: none'
          : `walreceiver: ${w.status}, tli ${w.receivedTli}, flushed ${w.flushedLsn === null ? 'null' : fmtLsn(w.flushedLsn)}`,
      );
    } catch (e) {
      parts.push(`(cannot query: ${(e as Error).message})`);
    }
    parts.push(`--- ${this.logFile} (tail) ---\n${this.logTail(30)}`);
    return parts.join('\n');
  }
}

/**
 * Makes `dataDir` a standby and starts it: standby.signal, and appended to
 * postgresql.conf: primary_conninfo, hot_standby, wal_retrieve_retry_interval
 * = 1s (PostgreSQL's default is 5s; this is how often it retries an upstream
 * that is not up yet), restore_command if given, then `conf`. Port (free),
 * listen_addresses=127.0.0.1 and the unix socket dir (<tmp>/sock) are given
 * on the command line; the server logs to <tmp>/postgres.log.
 *
 * `dataDir` must come from basebackup() (the standby then owns its temp dir
 * and destroy() removes it) or be named `.../data` (its parent then holds
 * sock/ and postgres.log and is not removed).
 *
 * Waits only for the server, never for streaming: with waitReady (default)
 * until it accepts queries (hot standby: once consistent, which a backup with
 * -X stream/fetch reaches from its own WAL; a -X none backup needs WAL from
 * upstream first — use waitReady: false and call waitReady() later).
 */
export async function startStandby(dataDir: string, opts: StartStandbyOptions): Promise<StandbyCluster> {
  const hotStandby = opts.hotStandby ?? true;
  const waitReady = hotStandby && (opts.waitReady ?? true);
  const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;

  let tmp = backups.get(dataDir);
  if (tmp !== undefined) {
    backups.delete(dataDir);
  } else {
    if (path.basename(dataDir) !== 'data') {
      throw new Error(`startStandby: ${dataDir} is neither from basebackup() nor named .../data`);
    }
    const parent = path.dirname(dataDir);
    tmp = { path: parent, cleanup: async () => undefined };
  }
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) throw new Error(`startStandby: ${dataDir} is not a data directory`);

  return startFromBackup(dataDir, tmp, {
    signal: 'standby.signal',
    heading: 'standby',
    settings: {
      primary_conninfo: opts.primaryConninfo,
      hot_standby: hotStandby,
      wal_retrieve_retry_interval: '1s',
      ...(opts.restoreCommand !== undefined ? { restore_command: opts.restoreCommand } : {}),
      ...opts.conf,
    },
    readyTimeoutMs,
    cluster: { primaryConninfo: opts.primaryConninfo, hotStandby, waitReady },
  });
}

/**
 * Starts a server on a base backup's data directory: `signal` (standby or
 * recovery), `settings` appended to postgresql.conf under `heading`. The
 * temp dir is removed again when it does not start.
 */
async function startFromBackup(
  dataDir: string,
  tmp: TempDir,
  o: {
    signal: 'standby.signal' | 'recovery.signal';
    heading: string;
    settings: Record<string, string | number | boolean>;
    readyTimeoutMs: number;
    cluster: { primaryConninfo: string; hotStandby: boolean; waitReady: boolean };
  },
): Promise<StandbyCluster> {
  let cluster: StandbyCluster | null = null;
  try {
    const cd = await controlData(dataDir);
    const segBytes = Number(cd['Bytes per WAL segment']);
    if (!Number.isInteger(segBytes) || segBytes <= 0) throw new Error(`cannot read the WAL segment size of ${dataDir}`);

    await makeServerDir(path.join(tmp.path, 'sock'), 0o755);
    const signalFile = path.join(dataDir, o.signal);
    await writeFile(signalFile, '');
    await chownToServerUser(signalFile);

    const lines = ['', `# --- walkeeper test harness: ${o.heading} ---`];
    for (const [k, v] of Object.entries(o.settings)) lines.push(`${k} = ${confValue(v)}`);
    await appendFile(path.join(dataDir, 'postgresql.conf'), lines.join('\n') + '\n');

    cluster = new StandbyCluster(tmp, await freePort(HOST), segBytes / (1024 * 1024), o.readyTimeoutMs, o.cluster);
    trackCluster(cluster);
    await startWithPortRetry(cluster);
    return cluster;
  } catch (e) {
    if (cluster) await cluster.destroy().catch(() => undefined);
    else await tmp.cleanup().catch(() => undefined);
    throw e;
  }
}

/** startStandby() for an ava test: destroyed when the test ends. */
export async function withStandby(t: TeardownContext, dataDir: string, opts: StartStandbyOptions): Promise<StandbyCluster> {
  const s = await startStandby(dataDir, opts).catch(async (e) => {
    await removeBasebackup(dataDir);
    throw e;
  });
  t.teardown(() => s.destroy());
  return s;
}

// ---------------------------------------------------------------------------
// a timeline switch

export interface TimelineSwitchOptions {
  /** Segment size of the primary (and so of everything). Default 1 (MiB). */
  walSegSizeMB?: number;
  /**
   * archive_mode=on (archive_command '/bin/true') on the promoted server.
   * Default true: only then does PostgreSQL rename the old timeline's last
   * (switch) segment to `.partial` at promotion; without it that file keeps
   * its plain name.
   */
  archiveMode?: boolean;
  /** Segments' worth of rows to write on the promoted server (besides a pg_switch_wal()). Default 3. */
  segmentsAfter?: number;
}

export interface PromotedWalFiles {
  /** Every entry of the promoted server's pg_wal, sorted (incl. archive_status). */
  all: string[];
  /** Complete TLI 1 segments (plain names), not the switch segment. */
  tli1: string[];
  /** The TLI 1 segment holding the switch point: `<name>.partial` with archive mode, else its plain name ('' if the switch is at a segment boundary). */
  tli1Switch: string;
  /** TLI 2 segments, from the switch segment on (may include a preallocated, not yet used one). */
  tli2: string[];
  /** `*.history` files (`00000002.history`). */
  history: string[];
}

export interface TimelineSwitch {
  /** The old primary (TLI 1), stopped; start() it again only if you want a split brain. */
  primary: PgCluster;
  /** The promoted standby (TLI 2), running. */
  promoted: StandbyCluster;
  /** A second basebackup (-X stream) of the primary, taken before the promotion and before the rows of phase 2; not started. */
  spare: string;
  /** The fork point from 00000002.history (= the end of the old primary's WAL). */
  switchLsn: bigint;
  /** The primary's flush LSN before it was stopped (its shutdown checkpoint follows). */
  primaryFlushLsn: bigint;
  /** The promoted server's flush LSN after the last CHECKPOINT. */
  endLsn: bigint;
  /** Rows in t when the spare backup was taken. */
  rowsAtSpare: number;
  /** Rows in t at the switch (all of them written on TLI 1). */
  rowsBefore: number;
  /** Rows in t at the end (on TLI 2). */
  rowsAfter: number;
  /** WAL segment size in bytes. */
  walSegSize: number;
  /** What is in promoted.walDir at the end. */
  files: PromotedWalFiles;
  /** files.tli1 plus files.tli1Switch: every TLI 1 segment file in the promoted pg_wal. */
  tli1Segments: string[];
  /** Destroys primary, promoted and (if never started) spare. Idempotent. */
  destroy(): Promise<void>;
}

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{16})(\.partial)?$/;

async function listPromotedWal(walDir: string, switchLsn: bigint, segSize: number): Promise<PromotedWalFiles> {
  const all = (await readdir(walDir)).sort();
  const switchSeg = switchLsn % BigInt(segSize) === 0n ? null : segmentFileName(1, switchLsn, segSize);
  const files: PromotedWalFiles = { all, tli1: [], tli1Switch: '', tli2: [], history: [] };
  for (const f of all) {
    if (f.endsWith('.history')) files.history.push(f);
    const m = SEGMENT.exec(f);
    if (!m) continue;
    const tli = parseInt(m[1]!, 16);
    const base = m[1]! + m[2]!;
    if (tli === 1 && base === switchSeg) files.tli1Switch = f;
    else if (tli === 1 && m[3] === undefined) files.tli1.push(f);
    else if (tli === 2) files.tli2.push(f);
  }
  return files;
}

/** Name of the segment file holding `lsn` on `tli`. */
export function segmentFileName(tli: number, lsn: bigint, segSize: number): string {
  const segno = lsn / BigInt(segSize);
  const perId = 0x1_0000_0000n / BigInt(segSize);
  const hex = (n: bigint | number): string => n.toString(16).toUpperCase().padStart(8, '0');
  return hex(tli) + hex(segno / perId) + hex(segno % perId);
}

const FILL_ROWS = `INSERT INTO t(id, v)
  SELECT i, (SELECT string_agg(md5(random()::text || g::text || i::text), '') FROM generate_series(1, 30) g)
    FROM generate_series($1::int, $2::int) i`;

/**
 * Builds a timeline switch with real PostgreSQL (see TimelineSwitch):
 * 1. primary P (1 MiB segments, wal_keep_size 1GB), table t(id int, v text), 100 rows;
 * 2. basebackup -> standby S1 streaming from P; a second basebackup `spare` (not started);
 * 3. ~2 segments of rows on P with a pg_switch_wal() in between; wait until S1
 *    replayed P's flush LSN; stop P (fast: its shutdown checkpoint reaches S1
 *    too, and the test waits for S1 to replay it);
 * 4. promote S1 (TLI 2); `segmentsAfter` segments' worth of rows on it with a
 *    pg_switch_wal() in between, then CHECKPOINT.
 * The switch point is parsed from S1's pg_wal/00000002.history.
 *
 * Observed with PG 15.18 and the defaults (1 MiB segments; LSNs are the same
 * on every run): switchLsn 0/C1F240 (= the old primary's shutdown checkpoint
 * at 0/C1F1C8 + its 120 bytes), endLsn 0/F66E88, rows 100 / 2390 / 5252.
 * promoted.walDir:
 *   000000010000000000000007 … 00000001000000000000000B   TLI 1, streamed from P
 *                                                          (from the basebackup's start segment on)
 *   00000001000000000000000C.partial                     TLI 1 switch segment, renamed at promotion
 *                                                          (only with archive_mode; else plain name);
 *                                                          P's WAL up to the switch, zeros after
 *   00000002.history                                     "1\t0/C1F240\tno recovery target specified\n"
 *   00000002000000000000000C                             TLI 2: bytes before the switch identical to
 *                                                          the TLI 1 file, then TLI 2 records
 *   00000002000000000000000D … 00000002000000000000000F   TLI 2 (F is current, full size, valid up to endLsn)
 *   archive_status/                                      *.done for every file above but the current one
 * primary.walDir: 000000010000000000000006 … 00000001000000000000000C (C plain-named, ends at the switch).
 * spare (pg_wal): 000000010000000000000008 (its backup's WAL), archive_status/.
 */
export async function makeTimelineSwitch(opts: TimelineSwitchOptions = {}): Promise<TimelineSwitch> {
  const segMB = opts.walSegSizeMB ?? 1;
  const segSize = segMB * 1024 * 1024;
  const archiveMode = opts.archiveMode ?? true;
  const segmentsAfter = opts.segmentsAfter ?? 3;
  const rowsPerSeg = Math.ceil(segSize / 1100); // ~1 KB rows, ~1.1 KB of WAL each

  let primary: PgCluster | null = null;
  let promoted: StandbyCluster | null = null;
  let spare: string | null = null;
  let s1Dir: string | null = null;
  const destroy = async (): Promise<void> => {
    await Promise.all([promoted?.destroy(), primary?.destroy()].map((p) => p?.catch(() => undefined)));
    if (s1Dir !== null) await removeBasebackup(s1Dir);
    if (spare !== null) await removeBasebackup(spare);
  };
  try {
    primary = await startPostgres({ walSegSizeMB: segMB, conf: { wal_keep_size: '1GB' } });
    await primary.query('CREATE TABLE t (id int, v text)');
    await primary.query(FILL_ROWS, [1, 100]);
    const rowsAtSpare = 100;

    s1Dir = await basebackup(primary);
    const s1Conf: Record<string, string | number | boolean> = archiveMode ? { archive_mode: 'on', archive_command: '/bin/true' } : {};
    promoted = await startStandby(s1Dir, {
      primaryConninfo: conninfoFor(primary, { application_name: 's1' }),
      conf: s1Conf,
    });
    s1Dir = null; // owned by the standby now
    spare = await basebackup(primary);

    const half = Math.ceil(rowsPerSeg * 1.2);
    await primary.query(FILL_ROWS, [rowsAtSpare + 1, rowsAtSpare + half]);
    await primary.query('SELECT pg_switch_wal()');
    await primary.query(FILL_ROWS, [rowsAtSpare + half + 1, rowsAtSpare + 2 * half]);
    const rowsBefore = rowsAtSpare + 2 * half;
    const [{ l }] = (await primary.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l')) as [{ l: string }];
    const primaryFlushLsn = lsnOf(l);
    await promoted.waitReplayed(primaryFlushLsn, 30_000);

    await primary.stop('fast');
    // The shutdown checkpoint is the primary's last record; the walsender
    // sends it before exiting. Replay past it so that the fork point is the
    // very end of the primary's WAL.
    const pcd = await controlData(primary.dataDir);
    const shutdownCkpt = lsnOf(pcd['Latest checkpoint location']!);
    await promoted.waitReplayed(shutdownCkpt + 1n, 30_000);

    await promoted.promote();
    const history = await readTimelineHistory(promoted.walDir, 2);
    if (history.length !== 1 || history[0]!.tli !== 1) throw new Error(`unexpected 00000002.history: ${JSON.stringify(history, (_k, v) => (typeof v === 'bigint' ? fmtLsn(v) : v))}`);
    const switchLsn = history[0]!.switchLsn;

    let next = rowsBefore + 1;
    const perStep = Math.ceil(rowsPerSeg * segmentsAfter / 2);
    await promoted.query(FILL_ROWS, [next, next + perStep - 1]);
    next += perStep;
    await promoted.query('SELECT pg_switch_wal()');
    await promoted.query(FILL_ROWS, [next, next + perStep - 1]);
    next += perStep;
    await promoted.query('CHECKPOINT');
    const rowsAfter = next - 1;
    const [{ n }] = (await promoted.query<{ n: string }>('SELECT count(*)::text AS n FROM t')) as [{ n: string }];
    if (Number(n) !== rowsAfter) throw new Error(`makeTimelineSwitch: ${n} rows on the promoted server, expected ${rowsAfter}`);
    const [{ e }] = (await promoted.query<{ e: string }>('SELECT pg_current_wal_flush_lsn()::text AS e')) as [{ e: string }];

    const files = await listPromotedWal(promoted.walDir, switchLsn, segSize);
    return {
      primary,
      promoted,
      spare,
      switchLsn,
      primaryFlushLsn,
      endLsn: lsnOf(e),
      rowsAtSpare,
      rowsBefore,
      rowsAfter,
      walSegSize: segSize,
      files,
      tli1Segments: [...files.tli1, ...(files.tli1Switch ? [files.tli1Switch] : [])],
      destroy,
    };
  } catch (e) {
    await destroy();
    throw e;
  }
}

/** makeTimelineSwitch() for an ava test: everything is destroyed when the test ends. */
export async function withTimelineSwitch(t: TeardownContext, opts: TimelineSwitchOptions = {}): Promise<TimelineSwitch> {
  const ts = await makeTimelineSwitch(opts);
  t.teardown(() => ts.destroy());
  return ts;
}

export interface StartRecoveryOptions {
  /** restore_command (run by the server user, in the data directory). */
  restoreCommand: string;
  /** recovery_target_* and other settings (appended last). */
  conf?: Record<string, string | number | boolean>;
  /** How long to wait until it accepts connections. Default 120000 ms. */
  readyTimeoutMs?: number;
}

/**
 * Archive recovery (point-in-time recovery) of a base backup: a
 * `recovery.signal` and a restore_command, no primary_conninfo. The server
 * replays what the restore_command gives it up to the target (or to the
 * end) and, with the default recovery_target_action here, promotes; this
 * waits until it accepts queries (hot standby once consistent).
 */
export async function startRecovery(dataDir: string, opts: StartRecoveryOptions): Promise<PgCluster> {
  let tmp = backups.get(dataDir);
  if (tmp !== undefined) backups.delete(dataDir);
  else tmp = { path: path.dirname(dataDir), cleanup: async () => undefined };
  return startFromBackup(dataDir, tmp, {
    signal: 'recovery.signal',
    heading: 'archive recovery',
    settings: { restore_command: opts.restoreCommand, recovery_target_action: 'promote', ...opts.conf },
    readyTimeoutMs: opts.readyTimeoutMs ?? 120_000,
    cluster: { primaryConninfo: '', hotStandby: true, waitReady: true },
  });
}
