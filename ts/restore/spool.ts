/**
 * The prefetch spool.
 *
 * With `--prefetch N`, one background worker per recovery (pgBackRest's
 * asynchronous archive-get, Barman's `-p`) keeps the N segments after the
 * last one asked for in a spool directory beside `%p`, each verified and
 * fsynced before it appears there under its own name. The next call finds
 * its segment there and only renames it; a segment the worker is still
 * fetching (its `.inflight` marker names a live process) is waited for
 * rather than fetched twice. The worker learns what PostgreSQL asked for
 * last from the `want` file each call writes, and ends after a quiet spell.
 */
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { parseWalFileName, segmentAfter } from '../lsn.js';
import type { WalArchive } from './archive.js';
import { syncDir } from '../durable_file.js';

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const readPid = async (file: string): Promise<number | null> => {
  const t = await readFile(file, 'utf8').catch(() => null);
  return t === null ? null : Number.parseInt(t, 10);
};

/** Quiet time after which the worker ends (PostgreSQL asked for nothing new). */
export const WORKER_IDLE_MS = 10_000;
/** The same, once the archive's end was reached. */
export const WORKER_IDLE_AT_END_MS = 1000;
/** A segment the archive did not have is asked for again after this long (it may be archived meanwhile). */
const MISSING_RETRY_MS = 1000;
const POLL_MS = 5;

export class Spool {
  constructor(readonly dir: string) {}

  /** The spool of a recovery whose restore_command writes `dest`. */
  static beside(dest: string): Spool {
    return new Spool(path.join(path.dirname(dest), 'walkeeper-prefetch'));
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Moves a prefetched segment to `dest`; false when it is not in the spool. */
  async take(name: string, dest: string): Promise<boolean> {
    try {
      await rename(this.file(name), dest);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    await syncDir(path.dirname(dest));
    return true;
  }

  /** Waits while a live worker is fetching `name` (at most `maxMs`). */
  async waitFor(name: string, maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    const marker = this.file(`${name}.inflight`);
    while (Date.now() < until) {
      const pid = await readPid(marker);
      if (pid === null || !alive(pid)) return;
      if (await exists(this.file(name))) return;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /** Records what PostgreSQL asked for last: the worker fetches the segments after it. */
  async setWant(name: string, segmentSize: number): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = this.file(`want.${process.pid}.tmp`);
    await writeFile(tmp, `${name} ${segmentSize}\n`);
    await rename(tmp, this.file('want'));
  }

  async want(): Promise<{ name: string; segmentSize: number } | null> {
    const t = await readFile(this.file('want'), 'utf8').catch(() => null);
    const m = t === null ? null : /^([0-9A-F]{24}) (\d+)\n$/.exec(t);
    return m ? { name: m[1]!, segmentSize: Number(m[2]) } : null;
  }

  /** True when a worker is running for this spool. */
  async workerRunning(): Promise<boolean> {
    const pid = await readPid(this.file('worker.pid'));
    return pid !== null && alive(pid);
  }

  /** Becomes the spool's worker; false when another live one is. */
  async lockWorker(): Promise<boolean> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (let i = 0; i < 2; i++) {
      try {
        await writeFile(this.file('worker.pid'), `${process.pid}\n`, { flag: 'wx' });
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = await readPid(this.file('worker.pid'));
        if (pid !== null && alive(pid)) return false;
        await rm(this.file('worker.pid'), { force: true });
      }
    }
    return false;
  }

  async unlockWorker(): Promise<void> {
    if ((await readPid(this.file('worker.pid'))) === process.pid) await rm(this.file('worker.pid'), { force: true });
  }

  /** Claims `name` for fetching; false when a live process already is. */
  async claim(name: string): Promise<boolean> {
    const marker = this.file(`${name}.inflight`);
    for (let i = 0; i < 2; i++) {
      try {
        await writeFile(marker, `${process.pid}\n`, { flag: 'wx' });
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = await readPid(marker);
        if (pid !== null && alive(pid)) return false;
        await rm(marker, { force: true });
      }
    }
    return false;
  }

  async release(name: string): Promise<void> {
    await rm(this.file(`${name}.inflight`), { force: true });
  }

  /** The worker found `name` in no source moments ago (it keeps the marker only while that holds). */
  async missing(name: string): Promise<boolean> {
    return exists(this.file(`${name}.missing`));
  }

  async setMissing(name: string, missing: boolean): Promise<void> {
    if (missing) await writeFile(this.file(`${name}.missing`), '');
    else await rm(this.file(`${name}.missing`), { force: true });
  }

  async has(name: string): Promise<boolean> {
    return exists(this.file(name));
  }

  /** Where a prefetched segment goes (written there whole or not at all). */
  path(name: string): string {
    return this.file(name);
  }

  /** Removes spooled segments PostgreSQL has gone past (on `want`'s timeline and before it), and any other timeline's. */
  async prune(want: string): Promise<void> {
    for (const entry of await readdir(this.dir).catch(() => [] as string[])) {
      const n = entry.replace(/\.missing$/, '');
      if (parseWalFileName(n)?.kind !== 'segment') continue;
      if (n.slice(0, 8) !== want.slice(0, 8) || n.slice(8) <= want.slice(8)) await rm(this.file(entry), { force: true });
    }
  }

  /** Removes every spooled file (the worker's last act). */
  async clear(): Promise<void> {
    for (const n of await readdir(this.dir).catch(() => [] as string[])) {
      if (n !== 'worker.pid') await rm(this.file(n), { force: true });
    }
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Fetches segment `name` into the spool, if no live process is already
 * fetching it: "found" once it is there, "missing" when no source has it
 * (recorded for the shell's fast answer), "failed" on errors (left to
 * fetch itself, which reports them), "busy" when another process has it.
 */
export async function prefetchOne(spool: Spool, archive: WalArchive, name: string, log: (line: string) => void = () => undefined): Promise<'found' | 'missing' | 'failed' | 'busy'> {
  if (!(await spool.claim(name))) return 'busy';
  try {
    const r = await archive.get(parseWalFileName(name)!, { partial: false }, spool.path(name));
    if (r.found) {
      await spool.setMissing(name, false);
      return 'found';
    }
    // Only a clean "no source has it" answers PostgreSQL from the spool.
    const clean = !r.found && r.errors.length === 0;
    await spool.setMissing(name, clean);
    if (!r.found && r.errors.length) log(`prefetch ${name}: ${r.errors.join('; ')}`);
    return clean ? 'missing' : 'failed';
  } catch (e) {
    await spool.setMissing(name, false);
    log(`prefetch ${name}: ${(e as Error).message}`);
    return 'failed';
  } finally {
    await spool.release(name);
  }
}

/**
 * The prefetch worker: keeps the `n` segments after the last one asked
 * for in the spool, fetching up to `n` at once, until nothing new has been
 * asked for in WORKER_IDLE_MS. Returns when it ends (or at once when
 * another worker holds the spool).
 */
export async function runPrefetchWorker(spool: Spool, archive: WalArchive, n: number, log: (line: string) => void = () => undefined): Promise<void> {
  if (!(await spool.lockWorker())) return;
  const inflight = new Map<string, Promise<void>>();
  /** When each segment was last found missing or failed (asked again after MISSING_RETRY_MS). */
  const missing = new Map<string, number>();
  /**
   * Segments this worker put in the spool. PostgreSQL takes them before it
   * says so (the `want` file follows the rename), so "not in the spool" does
   * not mean "fetch it": only a want that moved back (a new recovery
   * attempt) makes them wanted again.
   */
  const delivered = new Set<string>();
  let last: string | null = null;
  let quietSince = Date.now();
  try {
    for (;;) {
      const want = await spool.want();
      if (want && want.name !== last) {
        if (last !== null && want.name < last) delivered.clear();
        for (const d of delivered) if (d <= want.name) delivered.delete(d);
        last = want.name;
        quietSince = Date.now();
        await spool.prune(want.name);
      }
      const f = want ? parseWalFileName(want.name) : null;
      if (want && f?.kind === 'segment') {
        for (let i = 1; i <= n && inflight.size < n; i++) {
          const name = segmentAfter(f, i, want.segmentSize);
          if (inflight.has(name) || delivered.has(name)) continue;
          const miss = missing.get(name);
          // Past the end of the archive: nothing further can be there either.
          if (miss !== undefined && Date.now() - miss < MISSING_RETRY_MS) break;
          if (await spool.has(name)) continue;
          const job = prefetchOne(spool, archive, name, log).then((r) => {
            inflight.delete(name);
            // (busy: fetch is getting it into the spool itself)
            if (r === 'found' || r === 'busy') {
              delivered.add(name);
              missing.delete(name);
            } else {
              missing.set(name, Date.now());
            }
          });
          inflight.set(name, job);
        }
      }
      // Quiet: PostgreSQL asked for nothing new. At the archive's end (the segment after the
      // last one asked for is missing) that means recovery ended or moved to streaming: leave soon.
      const atEnd = want !== null && f?.kind === 'segment' && missing.has(segmentAfter(f, 1, want.segmentSize));
      if (inflight.size === 0 && Date.now() - quietSince > (atEnd ? WORKER_IDLE_AT_END_MS : WORKER_IDLE_MS)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await Promise.allSettled(inflight.values());
    await spool.clear();
    await spool.unlockWorker();
  }
}
