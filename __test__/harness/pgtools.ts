// Locating and running the PostgreSQL command-line tools, plus tiny LSN
// helpers (the project has its own in ts/lsn.ts; these are test-local).

import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

import { serverUser, tmpRoot } from './tmp.js';

const INSTALL_HINT =
  'PostgreSQL 15 server binaries are required by the tests. On Debian/Ubuntu: ' +
  '`apt-get install postgresql-15` (Ubuntu: from the PGDG apt repository), ' +
  'or point WALKEEPER_PG_BINDIR at a directory holding initdb, postgres, pg_ctl and pg_waldump.';

let cachedBindir: string | undefined;

function hasServerBinaries(dir: string): boolean {
  return existsSync(path.join(dir, 'postgres')) && existsSync(path.join(dir, 'initdb'));
}

/**
 * Directory of the PostgreSQL binaries: $WALKEEPER_PG_BINDIR, else
 * `pg_config --bindir`, else /usr/lib/postgresql/15/bin. Throws a message
 * telling how to install PostgreSQL 15 when none has initdb and postgres.
 */
export function pgBindir(): string {
  if (cachedBindir !== undefined) return cachedBindir;
  const tried: string[] = [];
  const env = process.env.WALKEEPER_PG_BINDIR;
  if (env) {
    if (hasServerBinaries(env)) return (cachedBindir = env);
    throw new Error(`WALKEEPER_PG_BINDIR=${env} has no initdb/postgres. ${INSTALL_HINT}`);
  }
  try {
    const dir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    if (dir && hasServerBinaries(dir)) return (cachedBindir = dir);
    tried.push(`pg_config --bindir = ${dir || '(empty)'} (no initdb/postgres there)`);
  } catch (e) {
    tried.push(`pg_config --bindir failed (${(e as Error).message.split('\n')[0]})`);
  }
  const fallback = '/usr/lib/postgresql/15/bin';
  if (hasServerBinaries(fallback)) return (cachedBindir = fallback);
  tried.push(`${fallback} has no initdb/postgres`);
  throw new Error(`PostgreSQL binaries not found: ${tried.join('; ')}. ${INSTALL_HINT}`);
}

/** Full path of a PostgreSQL tool in pgBindir(). */
export function pgToolPath(name: string): string {
  return path.join(pgBindir(), name);
}

/**
 * The argv to run `cmd args` as the Postgres server user: as root,
 * `runuser -u postgres -- cmd args`; otherwise unchanged.
 */
export function asServerUser(cmd: string, args: readonly string[]): [string, string[]] {
  const u = serverUser();
  if (u === null) return [cmd, [...args]];
  return ['runuser', ['-u', u.name, '--', cmd, ...args]];
}

export interface PgToolOptions {
  /** Run as the postgres OS user (only matters when we are root). Default false. */
  asPostgres?: boolean;
  /** Working directory; default: tmpRoot() when asPostgres (the server user may not enter our cwd), else ours. */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string | undefined>;
  /** Kill the tool (SIGKILL) after this many ms. Default 120000. */
  timeoutMs?: number;
  /** Written to the tool's stdin (then closed). */
  input?: string | Buffer;
  /** Throw (with stderr) when the tool exits non-zero. Default false. */
  check?: boolean;
}

export interface PgToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool from pgBindir() to completion, collecting stdout/stderr. */
export function runPgTool(name: string, args: readonly string[], opts: PgToolOptions = {}): Promise<PgToolResult> {
  const tool = pgToolPath(name);
  const [cmd, argv] = opts.asPostgres ? asServerUser(tool, args) : [tool, [...args]];
  const cwd = opts.cwd ?? (opts.asPostgres ? tmpRoot() : undefined);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, {
      cwd,
      env: { ...process.env, ...opts.env },
      stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot run ${cmd}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const res: PgToolResult = {
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (timedOut) {
        reject(new Error(`${name} ${args.join(' ')} timed out after ${timeoutMs} ms\n${res.stderr}`));
      } else if (opts.check && code !== 0) {
        reject(new Error(`${name} ${args.join(' ')} exited with ${code ?? signal}\n${res.stderr}${res.stdout}`));
      } else {
        resolve(res);
      }
    });
  });
}

/** `pg_waldump args` (as the current user). */
export function pgWaldump(args: readonly string[], opts: PgToolOptions = {}): Promise<PgToolResult> {
  return runPgTool('pg_waldump', args, opts);
}

/** Parses an LSN 'X/X' (hex halves) to a bigint. Throws on bad input. */
export function lsnOf(s: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(s.trim());
  if (!m) throw new Error(`not an LSN: ${JSON.stringify(s)}`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

/** Formats an LSN as Postgres does: upper-case hex halves 'X/X'. */
export function fmtLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > 0xffff_ffff_ffff_ffffn) throw new RangeError(`LSN out of range: ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}
