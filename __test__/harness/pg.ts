// Real PostgreSQL clusters for tests: initdb into a temp dir, start the
// server on 127.0.0.1 and a free port, hand back a handle to query, stop,
// crash (SIGKILL) and restart it. Every cluster is registered so leftovers
// are killed when the process exits (and by stopAllClusters()).

import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { appendFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { TestFn } from 'ava';
import pg from 'pg';
import type { Client as PgClient, QueryResultRow } from 'pg';

import { asServerUser, pgBindir, runPgTool } from './pgtools.js';
import { freePort } from './ports.js';
import { createTempDir, makeServerDir, onProcessExit, serverUser, type TempDir } from './tmp.js';

export type StopMode = 'smart' | 'fast' | 'immediate';

export interface StartPostgresOptions {
  /** initdb --wal-segsize (MiB, a power of two 1..1024). Default: Postgres' 16. */
  walSegSizeMB?: number;
  /** Extra postgresql.conf settings (appended after the harness defaults, so they win). */
  conf?: Record<string, string | number | boolean>;
  /** How long to wait for the server to accept connections. Default 60000 ms. */
  startTimeoutMs?: number;
  /**
   * pg_hba.conf lines put before the ones initdb wrote (which trust every
   * local and 127.0.0.1 connection), e.g.
   * `host replication alice 127.0.0.1/32 scram-sha-256`. First match wins.
   */
  hba?: string[];
}

const HOST = '127.0.0.1';

const clusters = new Set<PgCluster>();

function confValue(v: string | number | boolean): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

function isAlive(pid: number, zombieIsAlive = false): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  if (zombieIsAlive) return true;
  // A zombie (exited, not yet reaped by its new parent) counts as dead.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
  } catch {
    // no /proc (or it just went away)
  }
  return true;
}

/** Pids whose parent is `ppid` (Linux /proc; empty elsewhere). */
function childPids(ppid: number): number[] {
  return scanProc((pid) => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[1]) === ppid;
  });
}

/** Live (non-zombie) pids whose working directory is `dir`: every Postgres process chdirs to its data dir. */
function pidsWithCwd(dir: string): number[] {
  return scanProc((pid) => readlinkSync(`/proc/${pid}/cwd`) === dir);
}

function scanProc(pred: (pid: number) => boolean): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (pred(Number(e))) out.push(Number(e));
    } catch {
      // raced with exit, or not ours to inspect
    }
  }
  return out;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/**
 * SIGKILLs a postmaster and every process of its cluster (like a host
 * crash): its children, and anything whose cwd is the data dir (children
 * forked in between are orphaned, not lost). Returns every pid signalled.
 */
function killPostmasterTree(pid: number | null, dataDir: string): number[] {
  const killed = new Set<number>();
  const kill = (p: number): void => {
    signal(p, 'SIGKILL');
    killed.add(p);
  };
  if (pid !== null && isAlive(pid)) {
    const kids = childPids(pid);
    kill(pid);
    kids.forEach(kill);
  }
  let real = dataDir;
  try {
    real = realpathSync(dataDir);
  } catch {
    // gone already
  }
  for (let i = 0; i < 3; i++) {
    const more = pidsWithCwd(real).filter((p) => p !== process.pid);
    if (more.length === 0) break;
    more.forEach(kill);
  }
  return [...killed];
}

async function waitGone(pids: number[], timeoutMs: number, reaped = false): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pids.every((p) => !isAlive(p, reaped))) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** Resolves true when `p` settles within `ms`, false otherwise (no timer is left behind). */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true as const, () => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function tailText(text: string, lines: number): string {
  const all = text.split('\n');
  if (all.length > 0 && all[all.length - 1] === '') all.pop();
  return all.slice(-lines).join('\n');
}

export class PgCluster {
  readonly host = HOST;
  readonly dataDir: string;
  readonly walDir: string;
  readonly socketDir: string;
  readonly logFile: string;
  readonly bindir: string;
  /** Temp directory holding data/, sock/ and postgres.log. */
  readonly dir: string;
  /** WAL segment size in bytes. */
  readonly walSegSize: number;

  private _port: number;
  private child: ChildProcess | null = null;
  private childExit: Promise<void> = Promise.resolve();
  private _pid: number | null = null;
  private stopping: Promise<void> | null = null;
  private destroyed: Promise<void> | null = null;

  /** @internal use startPostgres() */
  constructor(
    private readonly tmp: TempDir,
    port: number,
    walSegSizeMB: number,
    private readonly startTimeoutMs: number,
  ) {
    this.dir = tmp.path;
    this.dataDir = path.join(tmp.path, 'data');
    this.walDir = path.join(this.dataDir, 'pg_wal');
    this.socketDir = path.join(tmp.path, 'sock');
    this.logFile = path.join(tmp.path, 'postgres.log');
    this.bindir = pgBindir();
    this.walSegSize = walSegSizeMB * 1024 * 1024;
    this._port = port;
  }

  get port(): number {
    return this._port;
  }

  /** Postmaster pid while running, else null. */
  get pid(): number | null {
    return this._pid;
  }

  /** True while the server process is up (as far as we know). */
  get running(): boolean {
    return this.child !== null;
  }

  /** libpq URL for user postgres on 127.0.0.1:port. */
  connectionString(db = 'postgres'): string {
    return `postgres://postgres@${HOST}:${this._port}/${encodeURIComponent(db)}`;
  }

  /** A connected node-postgres Client (the caller must end() it). */
  async connect(db = 'postgres'): Promise<PgClient> {
    const c = new pg.Client({ host: HOST, port: this._port, user: 'postgres', database: db, connectionTimeoutMillis: 10_000 });
    try {
      await c.connect();
    } catch (e) {
      await c.end().catch(() => undefined);
      throw e;
    }
    return c;
  }

  /** Runs one statement on a fresh connection; returns its rows. */
  async query<R extends QueryResultRow = any>(sql: string, params?: unknown[]): Promise<R[]> {
    const c = await this.connect();
    try {
      const res = await c.query<R>(sql, params);
      return res.rows;
    } finally {
      await c.end().catch(() => undefined);
    }
  }

  /** Waits until backend `pid` waits for its synchronous standbys (wait_event SyncRep): a commit that is not acknowledged yet. */
  async waitSyncRep(pid: number): Promise<void> {
    for (;;) {
      const [w] = await this.query<{ wait_event: string | null }>('SELECT wait_event FROM pg_stat_activity WHERE pid = $1', [pid]);
      if (w?.wait_event === 'SyncRep') return;
      await sleep(50);
    }
  }

  /** The cluster's system identifier (pg_control_system()). */
  async systemId(): Promise<bigint> {
    const rows = await this.query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()');
    return BigInt(rows[0]!.id);
  }

  /** The last `lines` lines of the server log. */
  logTail(lines = 40): string {
    try {
      return tailText(readFileSync(this.logFile, 'utf8'), lines);
    } catch (e) {
      return `(no server log: ${(e as Error).message})`;
    }
  }

  /** Starts the server (again) on the same data dir and port; resolves once it accepts connections. */
  async start(): Promise<void> {
    if (this.destroyed) throw new Error('PgCluster.start: cluster was destroyed');
    if (this.child) throw new Error('PgCluster.start: already running');
    this.stopping = null;
    const logFd = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      const [cmd, args] = asServerUser(path.join(this.bindir, 'postgres'), [
        '-D', this.dataDir,
        '-p', String(this._port),
        '-k', this.socketDir,
        '-c', `listen_addresses=${HOST}`,
      ]);
      child = spawn(cmd, args, { cwd: this.dir, stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    this.child = child;
    let exited = false as boolean;
    let spawnError = null as Error | null;
    this.childExit = new Promise<void>((resolve) => {
      child.once('error', (e) => {
        spawnError = e;
        exited = true;
        if (this.child === child) this.child = null;
        resolve();
      });
      child.once('exit', () => {
        exited = true;
        if (this.child === child) {
          this.child = null;
          this._pid = null;
        }
        resolve();
      });
    });
    child.unref();

    const deadline = Date.now() + this.startTimeoutMs;
    let lastErr = '';
    for (;;) {
      if (exited) {
        const why = spawnError ? `cannot spawn: ${spawnError.message}` : `server exited (code ${child.exitCode}, signal ${child.signalCode})`;
        throw new Error(`PostgreSQL failed to start on port ${this._port}: ${why}\n--- ${this.logFile} (tail; WALKEEPER_KEEP_TMP=1 keeps it) ---\n${this.logTail()}`);
      }
      if (Date.now() > deadline) {
        await this.killServer();
        throw new Error(
          `PostgreSQL did not accept connections on ${HOST}:${this._port} within ${this.startTimeoutMs} ms ` +
            `(last error: ${lastErr})\n--- ${this.logFile} (tail) ---\n${this.logTail()}`,
        );
      }
      const c = new pg.Client({ host: HOST, port: this._port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000 });
      try {
        await c.connect();
        await c.query('SELECT 1');
        await c.end();
        break;
      } catch (e) {
        lastErr = (e as Error).message;
        await c.end().catch(() => undefined);
        if (this.upDespite(e as Error)) break;
        await sleep(100);
      }
    }
    this._pid = this.postmasterPid();
  }

  /**
   * @internal for subclasses (standby.ts): start() also counts the server as
   * up when a connection attempt fails with an error for which this returns
   * true (e.g. 57P03 from a standby that is not consistent yet).
   */
  protected upDespite(_err: Error): boolean {
    return false;
  }

  /** @internal after a failed start (port taken), choose another port. */
  reassignPort(port: number): void {
    if (this.child) throw new Error('PgCluster.reassignPort: running');
    this._port = port;
  }

  /** The postmaster's pid: known, from postmaster.pid, or the (only) child of our runuser. */
  private postmasterPid(): number | null {
    if (this._pid !== null) return this._pid;
    const fromFile = this.child ? this.readPidFile() : null;
    if (fromFile !== null) return fromFile;
    const cpid = this.child?.pid;
    if (cpid === undefined) return null;
    if (serverUser() === null) return cpid; // spawned postgres directly
    const kids = childPids(cpid); // runuser forks the server
    return kids.length > 0 ? kids[0]! : null;
  }

  private readPidFile(): number | null {
    try {
      const first = readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]!;
      const pid = Number(first.trim());
      return Number.isInteger(pid) && pid > 0 ? pid : null;
    } catch {
      return null;
    }
  }

  /**
   * Stops the server with `pg_ctl stop -m mode` (as the server user). Falls
   * back to SIGKILL when that fails or takes longer than timeoutMs.
   * Idempotent: resolves at once when the server is not running.
   */
  stop(mode: StopMode = 'fast', timeoutMs = 30_000): Promise<void> {
    if (!this.child) return this.stopping ?? Promise.resolve();
    this.stopping ??= (async () => {
      const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
      let ok = false;
      try {
        const r = await runPgTool('pg_ctl', ['stop', '-D', this.dataDir, '-m', mode, '-w', '-t', String(secs)], {
          asPostgres: true,
          cwd: this.dir,
          timeoutMs: timeoutMs + 5000,
        });
        ok = r.code === 0;
      } catch {
        ok = false;
      }
      if (ok) {
        if (await settlesWithin(this.childExit, 5000)) return;
      }
      await this.killServer();
    })();
    return this.stopping;
  }

  /** SIGKILLs the postmaster and its children (a crash); resolves when they are gone. */
  async kill(): Promise<void> {
    await this.killServer();
  }

  private async killServer(): Promise<void> {
    const pid = this.postmasterPid();
    const pids = killPostmasterTree(pid, this.dataDir);
    // As root our child is runuser, which reaps the postmaster and then exits;
    // killing it too could leave the postmaster a zombie that a later start
    // mistakes for a live server (postmaster.pid). Only force it as a last resort.
    const child = this.child;
    if (child) {
      if (!(await settlesWithin(this.childExit, 10_000)) && child.pid !== undefined) {
        signal(child.pid, 'SIGKILL');
        await settlesWithin(this.childExit, 2_000);
      }
    }
    await waitGone(pids, 10_000);
    if (pid !== null) await waitGone([pid], 10_000, true);
    this.child = null;
    this._pid = null;
  }

  /** Synchronous SIGKILL of everything, for process-exit hooks. */
  killSync(): void {
    const pid = this.postmasterPid();
    killPostmasterTree(pid, this.dataDir);
    if (pid === null && this.child?.pid !== undefined) signal(this.child.pid, 'SIGKILL');
    this.child = null;
    this._pid = null;
  }

  /** Stops the server (fast) and removes its temp dir (unless WALKEEPER_KEEP_TMP=1). Idempotent. */
  destroy(): Promise<void> {
    this.destroyed ??= (async () => {
      try {
        await this.stop('fast');
      } finally {
        clusters.delete(this);
        await this.tmp.cleanup();
      }
    })();
    return this.destroyed;
  }

  /** @internal */
  async init(walSegSizeMB: number | undefined, conf: Record<string, string | number | boolean>, hba: string[] = []): Promise<void> {
    await makeServerDir(this.dataDir, 0o700);
    await makeServerDir(this.socketDir, 0o755);
    const args = ['-D', this.dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C'];
    if (walSegSizeMB !== undefined) args.push(`--wal-segsize=${walSegSizeMB}`);
    const r = await runPgTool('initdb', args, { asPostgres: true, cwd: this.dir, timeoutMs: 120_000 });
    await appendFile(path.join(this.dir, 'initdb.log'), r.stdout + r.stderr);
    if (r.code !== 0) {
      throw new Error(`initdb ${args.join(' ')} failed (exit ${r.code ?? r.signal}):\n${tailText(r.stderr + r.stdout, 40)}`);
    }
    const settings: Record<string, string | number | boolean> = {
      wal_level: 'replica',
      max_wal_senders: 10,
      max_replication_slots: 10,
      ...conf,
    };
    const lines = ['', '# --- walkeeper test harness ---'];
    for (const [k, v] of Object.entries(settings)) lines.push(`${k} = ${confValue(v)}`);
    // Appending keeps the file's owner (the server user).
    await appendFile(path.join(this.dataDir, 'postgresql.conf'), lines.join('\n') + '\n');
    if (hba.length > 0) {
      // Rewriting in place keeps the file's owner (the server user).
      const hbaFile = path.join(this.dataDir, 'pg_hba.conf');
      const rest = await readFile(hbaFile, 'utf8');
      await writeFile(hbaFile, ['# --- walkeeper test harness ---', ...hba, '', rest].join('\n'));
    }
  }
}

function isBindFailure(msg: string): boolean {
  return /could not bind|Address already in use|could not create any TCP\/IP sockets|could not create listen socket/i.test(msg);
}

onProcessExit(() => {
  for (const c of clusters) c.killSync();
});

/**
 * initdb + start a PostgreSQL cluster on 127.0.0.1 and a free port, as the
 * `postgres` OS user when we are root. wal_level=replica,
 * max_wal_senders=10, max_replication_slots=10; fsync and
 * synchronous_commit stay at their defaults. On failure the error includes
 * the tail of the server log.
 */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PgCluster> {
  const tmp = await createTempDir('walkeeper-pg-');
  const segMB = opts.walSegSizeMB ?? 16;
  let cluster: PgCluster | null = null;
  try {
    cluster = new PgCluster(tmp, await freePort(HOST), segMB, opts.startTimeoutMs ?? 60_000);
    clusters.add(cluster);
    await cluster.init(opts.walSegSizeMB, opts.conf ?? {}, opts.hba ?? []);
    await startWithPortRetry(cluster);
    return cluster;
  } catch (e) {
    if (cluster) await cluster.destroy().catch(() => undefined);
    else await tmp.cleanup().catch(() => undefined);
    throw e;
  }
}

/**
 * Starts `cluster`, moving it to another free port when someone took its
 * port between freePort() and bind().
 */
export async function startWithPortRetry(cluster: PgCluster): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await cluster.start();
      return;
    } catch (e) {
      const msg = (e as Error).message;
      if (attempt >= 5 || !isBindFailure(msg) || cluster.running) throw e;
      cluster.reassignPort(await freePort(HOST));
      appendFileSync(cluster.logFile, `--- harness: port in use, retrying on ${cluster.port} ---\n`);
    }
  }
}

/** The structural part of ava's ExecutionContext that withPostgres() uses. */
export interface TeardownContext {
  teardown(fn: () => unknown): void;
}

/** startPostgres() for an ava test: the cluster is stopped and removed when the test ends. */
export async function withPostgres(t: TeardownContext, opts: StartPostgresOptions = {}): Promise<PgCluster> {
  const cluster = await startPostgres(opts);
  t.teardown(() => cluster.destroy());
  return cluster;
}

/**
 * @internal Registers a cluster built outside startPostgres() (standby.ts) so
 * that stopAllClusters() and the exit hook cover it; destroy() unregisters it.
 */
export function trackCluster(cluster: PgCluster): void {
  clusters.add(cluster);
}

/** Stops and removes every cluster this process started and has not destroyed yet. */
export async function stopAllClusters(): Promise<void> {
  await Promise.all([...clusters].map((c) => c.destroy().catch(() => undefined)));
}

/**
 * Call at the top level of a spec file to stop leftover clusters after its
 * tests: `registerCleanupHooks(test)` adds `test.after.always(stopAllClusters)`.
 * (Leftovers are also SIGKILLed when the process exits.)
 */
export function registerCleanupHooks(test: TestFn<any>): void {
  test.after.always('stop leftover PostgreSQL clusters', async () => {
    await stopAllClusters();
  });
}

/** Whether a data dir still has a live postmaster.pid (for assertions). */
export async function postmasterPidOf(dataDir: string): Promise<number | null> {
  const f = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(f)) return null;
  const pid = Number((await readFile(f, 'utf8')).split('\n')[0]!.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/** Is a process with this pid alive (zombies count as dead)? */
export function processAlive(pid: number): boolean {
  return isAlive(pid);
}
