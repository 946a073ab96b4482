// Temporary directories for tests, and the bits of OS-user juggling that
// running Postgres as root requires (the server refuses to run as root, so
// as root it runs as the `postgres` OS user, which must be able to enter our
// directories and own its data directory).

import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

export interface TempDir {
  /** Absolute path of the directory. */
  readonly path: string;
  /** Removes the directory and everything under it. Idempotent. Honors WALKEEPER_KEEP_TMP=1. */
  cleanup(): Promise<void>;
}

/** True when this process runs as root (uid 0). */
export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Root of all test temp dirs: $WALKEEPER_TEST_TMP, else os.tmpdir(). */
export function tmpRoot(): string {
  const fromEnv = process.env.WALKEEPER_TEST_TMP;
  return path.resolve(fromEnv && fromEnv.length > 0 ? fromEnv : os.tmpdir());
}

/** When set (WALKEEPER_KEEP_TMP=1), temp dirs are left behind for inspection. */
export function keepTmp(): boolean {
  const v = process.env.WALKEEPER_KEEP_TMP;
  return v !== undefined && v !== '' && v !== '0' && v !== 'false';
}

let cachedPostgresUser: OsUser | null | undefined;

/**
 * The `postgres` OS user, from /etc/passwd or `id`. Null when there is none
 * (fine when not running as root).
 */
export function postgresUser(): OsUser | null {
  if (cachedPostgresUser !== undefined) return cachedPostgresUser;
  let found: OsUser | null = null;
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === 'postgres' && f.length >= 4) {
        found = { name: 'postgres', uid: Number(f[2]), gid: Number(f[3]) };
        break;
      }
    }
  } catch {
    // no /etc/passwd: try id(1) below
  }
  if (found === null) {
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      if (Number.isInteger(uid) && Number.isInteger(gid)) found = { name: 'postgres', uid, gid };
    } catch {
      // no such user
    }
  }
  cachedPostgresUser = found;
  return found;
}

/**
 * The OS user that Postgres (and tools that must act like it) run as:
 * `postgres` when we are root, otherwise null meaning "the current user".
 */
export function serverUser(): OsUser | null {
  if (!isRoot()) return null;
  const u = postgresUser();
  if (u === null) {
    throw new Error(
      'running as root, but there is no "postgres" OS user to run PostgreSQL as; ' +
        'install postgresql-15 (apt-get install postgresql-15), which creates it',
    );
  }
  return u;
}

// ---------------------------------------------------------------------------
// registry for exit-time cleanup

const liveDirs = new Set<string>();
const exitHooks: Array<() => void> = [];
let exitHookInstalled = false;

/**
 * Registers a synchronous function to run when the process exits (before temp
 * dirs are removed). Used by pg.ts to kill leftover servers.
 */
export function onProcessExit(fn: () => void): void {
  exitHooks.push(fn);
  installExitHook();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const fn of exitHooks) {
      try {
        fn();
      } catch {
        // best effort
      }
    }
    if (keepTmp()) return;
    for (const dir of liveDirs) {
      try {
        rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
      } catch {
        // best effort
      }
    }
    liveDirs.clear();
  });
}

function makeTempDir(dir: string): TempDir {
  liveDirs.add(dir);
  installExitHook();
  let done: Promise<void> | undefined;
  return {
    path: dir,
    cleanup(): Promise<void> {
      done ??= (async () => {
        if (!keepTmp()) await rm(dir, { recursive: true, force: true, maxRetries: 3 });
        liveDirs.delete(dir);
      })();
      return done;
    },
  };
}

/**
 * Creates a fresh temp directory under tmpRoot(), named `<prefix>XXXXXX`.
 * As root it gets mode 0755 so that the postgres OS user can enter it.
 * It is removed by cleanup() or, at the latest, when the process exits.
 */
export async function createTempDir(prefix = 'walkeeper-test-'): Promise<TempDir> {
  const root = tmpRoot();
  await mkdir(root, { recursive: true });
  const dir = await mkdtemp(path.join(root, prefix));
  if (isRoot()) await chmod(dir, 0o755);
  return makeTempDir(dir);
}

/** Synchronous createTempDir(), for use at module load time. */
export function createTempDirSync(prefix = 'walkeeper-test-'): TempDir {
  const root = tmpRoot();
  mkdirSync(root, { recursive: true });
  const dir = mkdtempSync(path.join(root, prefix));
  if (isRoot()) chmodSync(dir, 0o755);
  return makeTempDir(dir);
}

/**
 * Creates `dir` (and missing parents) for use by the Postgres server user:
 * as root it is chowned to postgres; mode defaults to 0700 (what Postgres
 * requires of a data directory). Returns the path.
 */
export async function makeServerDir(dir: string, mode = 0o700): Promise<string> {
  await mkdir(dir, { recursive: true });
  await chmod(dir, mode);
  await chownToServerUser(dir);
  return dir;
}

/** Creates `dir` that the postgres OS user may enter and read (mode 0755). */
export async function makeSharedDir(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  return dir;
}

/** As root: chown `p` to the postgres OS user. Otherwise: no-op. */
export async function chownToServerUser(p: string): Promise<void> {
  const u = serverUser();
  if (u !== null) await chown(p, u.uid, u.gid);
}

/** Synchronous chownToServerUser(). */
export function chownToServerUserSync(p: string): void {
  const u = serverUser();
  if (u !== null) chownSync(p, u.uid, u.gid);
}
