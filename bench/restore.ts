/**
 * bench/restore: archive recovery of a base backup through a
 * restore_command, three ways in one run, each replaying the same WAL
 * (`pgbench -i -s N`, 1 GiB at the default scale) to its end:
 *
 *   walkeeper   `walkeeper-fetch --prefetch 8` from object storage (Ceph RGW,
 *               the objects a node offloaded; the node is stopped first, so
 *               every segment comes from the store); also `walkeeper fetch`
 *               itself, which starts Node.js for every segment
 *   pgBackRest  `archive-get`, asynchronous (archive-get-queue-max default),
 *               from the same RGW (https: pgBackRest speaks nothing else)
 *   cp          `cp` from a local directory: replay alone, the limit
 *
 * and the read-through rate: pg_receivewal starting below the offloading
 * node's oldest segment (served from object storage) against the same
 * range from a node that kept every segment locally.
 *
 * The figure is PostgreSQL's own: the elapsed time of redo from its "redo
 * done" log line, and the WAL replayed in that time.
 *
 * Each way runs `--rounds` times, interleaved (the machine's state shifts
 * under a run); the median counts.
 *
 *   npm run bench:restore [-- --scale 85 --rounds 3 --only walkeeper,cp]
 */
import { existsSync } from 'node:fs';
import { cp as copyDir, mkdir, mkdtemp, readdir, readFile, copyFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { execFile } from 'node:child_process';

import { basebackup, createTempDir, fmtLsn, freePort, lsnOf, NodeProcess, runPgTool, startPostgres, startRecovery, type PgCluster } from '../__test__/harness/index.js';
import { startRgw } from '../__test__/harness/ceph.js';
import { setupPgBackRest } from './pgbackrest.js';
import { record } from './results.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FETCH = path.join(root, 'bin', 'walkeeper-fetch');
const CLI = path.join(root, 'dist', 'cli', 'main.js');
const { values } = parseArgs({ options: { scale: { type: 'string', default: '85' }, rounds: { type: 'string', default: '3' }, only: { type: 'string' } } });
const rounds = Number(values.rounds);
const scale = values.scale!;
const log = (s: string) => process.stderr.write(`[restore] ${s}\n`);
const SEG = 16 * 1024 * 1024;
const run = promisify(execFile);

/** When running as root, hands `dir` and everything in it to the server user (as PostgreSQL runs restore commands). */
async function serverOwns(dir: string): Promise<void> {
  if (process.getuid?.() === 0) await run('chown', ['-R', 'postgres:postgres', dir]);
}

async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

/**
 * Where the recovering servers live: tmpfs when the machine has one, so
 * that the disk's writeback of the previous run's data pages (which made
 * the same run take 4 s or 10 s here) does not decide the figure; every
 * way pays the same replay, and the restore commands' own files (the spools)
 * live there too.
 */
const RUN_ROOT = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

/** Recovers a copy of `backup` with `restoreCommand` to the end; PostgreSQL's redo time and where redo ended. */
async function recover(backup: string, restoreCommand: (data: string) => string): Promise<{ secs: number; end: bigint }> {
  const base = await mkdtemp(path.join(RUN_ROOT, 'walkeeper-bench-recovery-'));
  const data = path.join(base, 'data');
  try {
    await copyDir(backup, data, { recursive: true, preserveTimestamps: true });
    await serverOwns(base);
    // The previous run's dirty pages, written back during this one, would cost it time it did not cause.
    await run('sync', []);
    const c = await startRecovery(data, { restoreCommand: restoreCommand(data), readyTimeoutMs: 1_800_000 });
    try {
      for (;;) {
        const text = await readFile(c.logFile, 'utf8');
        const m = /redo done at ([0-9A-F]+\/[0-9A-F]+) .*elapsed: ([\d.]+) s/.exec(text);
        if (m) return { secs: Number(m[2]), end: lsnOf(m[1]!) };
        if (/FATAL: {2}(?!the database system is (starting up|not yet accepting))/.test(text)) throw new Error(`recovery failed:\n${text.split('\n').slice(-20).join('\n')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      await c.destroy();
    }
  } finally {
    // The prefetch worker outlives the recovery by a second: stop it before its spool goes.
    const pid = Number.parseInt(await readFile(path.join(data, 'pg_wal', 'walkeeper-prefetch', 'worker.pid'), 'utf8').catch(() => ''), 10);
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // (gone already)
      }
    }
    await rm(base, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 });
  }
}

/**
 * pg_receivewal from just after the first segment of the load to the last
 * one the offloading node no longer holds: from that node (read-through
 * from object storage) and from `keeper` (every segment local). A segment
 * in the directory makes pg_receivewal resume after it.
 */
async function receiveRates(base: string, node: NodeProcess, keeper: NodeProcess, start: bigint, end: bigint): Promise<{ archive: number; local: number }> {
  const seg = BigInt(SEG);
  let oldest = 0n;
  for (;;) {
    const st = (await node.status()) as { oldest_lsn: string | null } | null;
    oldest = st?.oldest_lsn ? lsnOf(st.oldest_lsn) : 0n;
    if (oldest > start + 16n * seg) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  const first = start / seg + 1n;
  const until = oldest - (oldest % seg);
  const seedName = (segno: bigint) => `00000001${(segno / 256n).toString(16).toUpperCase().padStart(8, '0')}${(segno % 256n).toString(16).toUpperCase().padStart(8, '0')}`;
  const rate = async (n: NodeProcess, label: string): Promise<number> => {
    const dir = path.join(base, `receive-${label}`);
    await mkdir(dir);
    // (the seed: any bytes under the name; pg_receivewal only reads the name)
    await writeFile(path.join(dir, seedName(first)), Buffer.alloc(SEG));
    await serverOwns(dir);
    await run('sync', []);
    const t0 = process.hrtime.bigint();
    await runPgTool('pg_receivewal', ['-D', dir, '-h', '127.0.0.1', '-p', String(n.pgPort), '-U', 'postgres', '--endpos', fmtLsn(until), '--no-loop', '-w'], { check: true, timeoutMs: 1_800_000, asPostgres: true });
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const mib = Number(until - (first + 1n) * seg) / 2 ** 20;
    log(`    pg_receivewal from ${label}: ${mib.toFixed(0)} MiB in ${secs.toFixed(2)} s = ${(mib / secs).toFixed(0)} MiB/s`);
    return mib / secs;
  };
  log(`read-through: pg_receivewal from ${fmtLsn((first + 1n) * seg)} to ${fmtLsn(until)} (the offloading node's oldest segment is at ${fmtLsn(oldest)}; end ${fmtLsn(end)})`);
  return { archive: await rate(node, 'read-through'), local: await rate(keeper, 'local') };
}

async function main(): Promise<void> {
  const tmp = await createTempDir('walkeeper-bench-restore-');
  const rgw = await startRgw({ tls: true, memstoreBytes: 12 * 1024 ** 3 });
  const cleanups: (() => Promise<void>)[] = [];
  let node: NodeProcess | null = null;
  let keeper: NodeProcess | null = null;
  let pg: PgCluster | null = null;
  try {
    await rgw.createBucket('walkeeper');
    await rgw.createBucket('pgbr');
    pg = await startPostgres({ conf: { wal_keep_size: '16GB', max_wal_size: '8GB', max_wal_senders: 10, archive_mode: 'on', archive_command: '' } });
    const brDir = await mkdtemp(path.join(RUN_ROOT, 'walkeeper-bench-pgbackrest-'));
    cleanups.push(() => rm(brDir, { recursive: true, force: true }));
    const pgbr = await setupPgBackRest(path.join(brDir, 'pgbackrest'), rgw, 'pgbr', pg);
    await pg.query(`ALTER SYSTEM SET archive_command = '${pgbr.command('archive-push %p')}'`);
    await pg.query('SELECT pg_reload_conf()');
    node = new NodeProcess({ dataDir: path.join(tmp.path, 'node'), nodeId: 1, upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, env: { ...rgw.env, WALKEEPER_LOG_LEVEL: 'warn' } });
    node.pgPort = await freePort();
    node.httpPort = await freePort();
    node.opts.extraArgs = ['--remote-storage', 's3://walkeeper/bench', '--remote-endpoint', rgw.endpoint, '--offload-partial-after', '0', '--wal-keep-size', '64MB'];
    // A node that keeps every segment locally, for the read-through comparison.
    keeper = new NodeProcess({ dataDir: path.join(tmp.path, 'keeper'), nodeId: 2, upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, env: { WALKEEPER_LOG_LEVEL: 'warn' } });
    keeper.pgPort = await freePort();
    keeper.httpPort = await freePort();
    keeper.opts.extraArgs = ['--wal-keep-size', '16GB', '--application-name', 'keeper'];
    await Promise.all([node.start(), keeper.start()]);
    const backup = await basebackup(pg);
    const start = await flushLsn(pg);
    log(`pgbench -i -s ${scale}`);
    await runPgTool('pgbench', ['-i', '-q', '-s', scale, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 3_600_000 });
    await pg.query('CHECKPOINT');
    await pg.query('SELECT pg_switch_wal()');
    const end = await flushLsn(pg);
    const last = (end - 1n) / BigInt(SEG);
    const lastName = `00000001${(last / 256n).toString(16).toUpperCase().padStart(8, '0')}${(last % 256n).toString(16).toUpperCase().padStart(8, '0')}`;
    log(`${(Number(end - start) / 2 ** 20).toFixed(0)} MiB of WAL; waiting for both archives to hold ${lastName}`);
    for (;;) {
      const st = (await node.status()) as { backup_lsn: string | null } | null;
      const [a] = await pg.query<{ w: string | null }>('SELECT last_archived_wal AS w FROM pg_stat_archiver');
      if (st?.backup_lsn && lsnOf(st.backup_lsn) >= end - (end % BigInt(SEG)) && a?.w !== null && a!.w! >= lastName) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const readThrough = await receiveRates(tmp.path, node, keeper, start, end);
    await Promise.all([node.stop(), keeper.stop()]);
    // The local archive for cp: the primary's segments, as archive_command would have copied them.
    const local = path.join(tmp.path, 'archive');
    await mkdir(local);
    for (const n of await readdir(pg.walDir)) if (/^[0-9A-F]{24}$/.test(n) && n <= lastName) await copyFile(path.join(pg.walDir, n), path.join(local, n));
    await serverOwns(local);
    await pg.destroy();
    pg = null;

    const env = Object.entries(rgw.env)
      .map(([k, v]) => `${k}='${v}'`)
      .join(' ');
    // (pgBackRest checks the recovering server's pg_control: its pg1-path is that server's data directory)
    const all: [string, (data: string) => string][] = [
      ['cp', () => `cp ${local}/%f %p`],
      ['walkeeper', () => `PATH='${path.dirname(process.execPath)}':$PATH ${env} '${FETCH}' --remote-storage s3://walkeeper/bench --remote-endpoint ${rgw.endpoint} --prefetch 8 %f %p`],
      // The same without the shell's fast path: Node.js starts for every segment.
      ['walkeeper (node)', () => `${env} '${process.execPath}' '${CLI}' fetch --remote-storage s3://walkeeper/bench --remote-endpoint ${rgw.endpoint} --prefetch 8 %f %p`],
      ['pgBackRest', (data) => pgbr.command(`--pg1-path=${data} archive-get %f "%p"`)],
    ];
    const runs = all.filter(([n]) => values.only === undefined || values.only.split(',').includes(n));
    const samples = new Map<string, { secs: number; mib: number }[]>();
    for (let round = 1; round <= rounds; round++) {
      for (const [name, cmd] of runs) {
        const r = await recover(backup, cmd);
        const mib = Number(r.end - start) / 2 ** 20;
        samples.set(name, [...(samples.get(name) ?? []), { secs: r.secs, mib }]);
        log(`    round ${round}, ${name}: redo of ${mib.toFixed(0)} MiB in ${r.secs.toFixed(2)} s = ${(mib / r.secs).toFixed(0)} MiB/s`);
      }
    }
    const result = new Map<string, { rate: number; secs: number; mib: number }>();
    for (const [name, xs] of samples) {
      const m = [...xs].sort((a, b) => a.secs - b.secs)[Math.floor(xs.length / 2)]!;
      result.set(name, { rate: m.mib / m.secs, secs: m.secs, mib: m.mib });
    }
    if (!['cp', 'walkeeper', 'pgBackRest'].every((n) => result.has(n))) return; // (--only: the figures were logged)
    const w = result.get('walkeeper')!;
    const p = result.get('pgBackRest')!;
    const c = result.get('cp')!;
    const lines = [
      `restore: archive recovery of pgbench -i -s ${scale} (${c.mib.toFixed(0)} MiB of WAL), 16 MiB segments, Ceph RGW (memstore) on loopback, median of ${rounds}`,
      `machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
      `walkeeper-fetch --prefetch 8: ${w.rate.toFixed(0).padStart(5)} MiB/s (${w.secs.toFixed(2)} s)`,
      `pgBackRest archive-get async: ${p.rate.toFixed(0).padStart(5)} MiB/s (${p.secs.toFixed(2)} s)`,
      `cp from a local directory:    ${c.rate.toFixed(0).padStart(5)} MiB/s (${c.secs.toFixed(2)} s)`,
      ...(result.has('walkeeper (node)') ? [`walkeeper fetch, Node.js per call: ${result.get('walkeeper (node)')!.rate.toFixed(0)} MiB/s (${result.get('walkeeper (node)')!.secs.toFixed(2)} s): what the shell's fast path saves`] : []),
      `walkeeper ${(w.rate / p.rate).toFixed(2)}× pgBackRest (target ≥ 1.5×), ${(w.rate / c.rate).toFixed(2)}× local cp (target ≥ 0.9×)`,
    ];
    lines.push(
      `pg_receivewal below the node's horizon (read-through from RGW): ${readThrough.archive.toFixed(0)} MiB/s; the same range from local segments: ${readThrough.local.toFixed(0)} MiB/s (${(readThrough.archive / readThrough.local).toFixed(2)}×)`,
    );
    console.log(lines.join('\n'));
    record({ bench: 'restore', what: 'pg_receivewal starting below the local horizon: read-through from object storage (vs local segments)', unit: 'MiB/s', walkeeper: readThrough.archive, postgres: readThrough.local, better: 'higher' });
    record({ bench: 'restore', what: 'archive recovery rate, walkeeper-fetch --prefetch 8 (vs pgBackRest archive-get async)', unit: 'MiB/s', walkeeper: w.rate, postgres: p.rate, target: '≥ 1.5×', better: 'higher' });
    record({ bench: 'restore', what: 'archive recovery rate, walkeeper-fetch --prefetch 8 (vs cp from a local directory)', unit: 'MiB/s', walkeeper: w.rate, postgres: c.rate, target: '≥ 0.9×', better: 'higher' });
  } finally {
    await node?.kill();
    await keeper?.kill();
    await pg?.destroy();
    await rgw.stop();
    await tmp.cleanup();
    for (const c of cleanups) await c();
  }
}

main().catch((e) => {
  console.error(`restore: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
