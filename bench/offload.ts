/**
 * bench/offload: WAL offload to object storage, walkeeper against
 * pgBackRest's archive-push (async, zstd level 3 like ours, to the same Ceph
 * RGW, both over https), in one run:
 *
 *   (1) live: three nodes follow a primary under `pgbench -i -s N` and
 *       offload as it runs; the offload lag (commit_lsn − backup_lsn) when
 *       the load ends, in segments (target ≤ 2);
 *   (2) capacity, walkeeper: the gateway is stopped, the same load runs
 *       (WAL waits on the nodes), the gateway returns and the nodes restart
 *       (nothing compressed in advance); the drain rate from the first
 *       upload to the last, and the offloading node's CPU per GiB of WAL
 *       (its process CPU minus an idle peer's over the same window);
 *   (3) capacity, pgBackRest: archive_command was empty during both loads
 *       (PostgreSQL kept the WAL as .ready); it is set to `pgbackrest
 *       archive-push` and reloaded; the drain rate from the first archived
 *       segment to the last, and the CPU of every pgbackrest process
 *       (sampled from /proc every 50 ms) per GiB archived.
 *
 *   npm run bench:offload [-- --scale 100] [--walkeeper http]
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { chownToServerUser, createTempDir, lsnOf, NodeProcess, freePort, runPgTool, startPostgres, type PgCluster } from '../__test__/harness/index.js';
import { startRgw } from '../__test__/harness/ceph.js';
import { setupPgBackRest } from './pgbackrest.js';
import { cpuSecondsOf } from './proc.js';
import { record } from './results.js';

const { values } = parseArgs({ options: { scale: { type: 'string', default: '100' }, walkeeper: { type: 'string', default: 'https' } } });
// pgBackRest speaks only https; walkeeper goes the same way unless asked for http (`--walkeeper http`).
const tls = values.walkeeper !== 'http';
const scale = values.scale!;
const log = (s: string) => process.stderr.write(`[offload] ${s}\n`);
const SEG = 16 * 1024 * 1024;
/** CPU seconds of every process whose command line mentions `needle`, sampled until stopped (each pid's last value counts). */
function cpuSampler(needle: string): { stop(): number } {
  const seen = new Map<number, number>();
  const sample = () => {
    for (const d of readdirSyncSafe('/proc')) {
      const pid = Number(d);
      if (!Number.isInteger(pid)) continue;
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      if (cmd.includes(needle)) seen.set(pid, Math.max(seen.get(pid) ?? 0, cpuSecondsOf(pid)));
    }
  };
  const timer = setInterval(sample, 50);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return [...seen.values()].reduce((a, b) => a + b, 0);
    },
  };
}

function readdirSyncSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

/** The load; `atEnd` runs the moment pgbench returns, before the segment switch that completes the last segment for the backlog phases. */
async function pgbenchInit(pg: PgCluster, atEnd: () => Promise<void> = async () => undefined): Promise<{ start: bigint; end: bigint; secs: number }> {
  const start = await flushLsn(pg);
  const t0 = Date.now();
  await runPgTool('pgbench', ['-i', '-q', '-s', scale, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 1_800_000 });
  await atEnd();
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CREATE TABLE IF NOT EXISTS bench_tick (t timestamptz); INSERT INTO bench_tick VALUES (now())');
  return { start, end: await flushLsn(pg), secs: (Date.now() - t0) / 1000 };
}

interface NodeView {
  backup_lsn: string | null;
  commit_lsn: string;
  offload: { active: boolean; lag_bytes: number } | null;
}

async function view(n: NodeProcess): Promise<NodeView | null> {
  return (await n.status().catch(() => null)) as unknown as NodeView | null;
}

async function metric(n: NodeProcess, name: string): Promise<number> {
  const m = await (await fetch(`${n.httpUrl}/metrics`)).text();
  return [...m.matchAll(new RegExp(`^${name}\\{[^}]*\\} ([\\d.e+]+)$`, 'gm'))].reduce((a, x) => a + Number(x[1]), 0);
}

async function main(): Promise<void> {
  const tmp = await createTempDir('walkeeper-bench-offload-');
  const rgw = await startRgw({ tls: true, memstoreBytes: 12 * 1024 ** 3 });
  const nodes: NodeProcess[] = [];
  let pg: PgCluster | null = null;
  try {
    await rgw.createBucket('walkeeper');
    await rgw.createBucket('pgbr');
    pg = await startPostgres({ conf: { wal_keep_size: '8GB', max_wal_size: '8GB', max_wal_senders: 10, archive_mode: 'on', archive_command: '' } });
    const conninfo = `host=127.0.0.1 port=${pg.port} user=postgres`;
    for (let i = 1; i <= 3; i++) {
      const n = new NodeProcess({ dataDir: path.join(tmp.path, `n${i}`), nodeId: i, upstream: conninfo, env: { ...rgw.env, ...(tls ? { NODE_EXTRA_CA_CERTS: rgw.caFile! } : {}), WALKEEPER_LOG_LEVEL: 'warn' } });
      n.pgPort = await freePort();
      n.httpPort = await freePort();
      nodes.push(n);
    }
    for (const n of nodes) {
      n.opts.extraArgs = ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(','), '--remote-storage', 's3://walkeeper/bench', '--remote-endpoint', tls ? rgw.tlsEndpoint! : rgw.endpoint, '--offload-partial-after', '0', '--wal-keep-size', '64MB'];
    }
    await Promise.all(nodes.map((n) => n.start()));
    const offloader = async (): Promise<NodeProcess> => {
      for (;;) {
        for (const n of nodes) if ((await view(n))?.offload?.active) return n;
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const backupAt = async (lsn: bigint) => {
      for (;;) {
        const vs = await Promise.all(nodes.map(view));
        if (vs.some((v) => v?.backup_lsn && lsnOf(v.backup_lsn) >= lsn)) return;
        await new Promise((r) => setTimeout(r, 100));
      }
    };

    // (1) live
    log(`(1) live: pgbench -i -s ${scale} with three nodes offloading`);
    // The lag when the load ends: commit_lsn − backup_lsn on the offloader, the unfinished segment included.
    let lagSegs = 0;
    // And every 100 ms during the load, to show the lag's course rather than one sample.
    const series: { t: number; lag: number; commit: bigint }[] = [];
    let sampling = true;
    const t0 = Date.now();
    const sampler = (async () => {
      while (sampling) {
        const v = await view(await offloader());
        if (v?.offload) series.push({ t: Date.now() - t0, lag: v.offload.lag_bytes / SEG, commit: lsnOf(v.commit_lsn) });
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const live = await pgbenchInit(pg, async () => {
      const v1 = await view(await offloader());
      lagSegs = (v1?.offload?.lag_bytes ?? 0) / SEG;
      sampling = false;
    });
    await sampler;
    if (process.env.BENCH_OFFLOAD_SERIES) await writeFile(process.env.BENCH_OFFLOAD_SERIES, series.map((x) => `${x.t} ${x.lag.toFixed(2)} ${Number(x.commit) / SEG}`).join('\n') + '\n');
    const lags = series.map((x) => x.lag).sort((a, b) => a - b);
    const pct = (q: number) => lags[Math.min(lags.length - 1, Math.floor(q * lags.length))] ?? 0;
    const liveMiB = Number(live.end - live.start) / 2 ** 20;
    const tLive = Date.now();
    await backupAt(live.end - (live.end % BigInt(SEG)));
    log(`    ${liveMiB.toFixed(0)} MiB of WAL in ${live.secs.toFixed(1)} s; lag at the end of the load ${lagSegs.toFixed(1)} segments (during it: median ${pct(0.5).toFixed(1)}, p95 ${pct(0.95).toFixed(1)}, max ${pct(1).toFixed(1)}); caught up ${((Date.now() - tLive) / 1000).toFixed(1)} s later`);

    // (2) capacity, walkeeper
    log('(2) walkeeper: the same load with the gateway down, then the backlog');
    await rgw.stopGateway();
    const w = await pgbenchInit(pg);
    for (;;) {
      const vs = await Promise.all(nodes.map(view));
      if (vs.every((v) => v && lsnOf(v.commit_lsn) >= w.end)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    // The nodes restart with the gateway back, so that the drain starts with nothing done: while the
    // gateway was down, the offloader held a window of segments compressed and waiting to go up.
    const b0 = (await Promise.all(nodes.map(view))).reduce((a, v) => (v?.backup_lsn && lsnOf(v.backup_lsn) > a ? lsnOf(v.backup_lsn) : a), 0n);
    await Promise.all(nodes.map((n) => n.stop()));
    await rgw.startGateway();
    await Promise.all(nodes.map((n) => n.start()));
    const off2 = await offloader();
    const idle = nodes.find((n) => n !== off2)!;
    let first: { t: number; lsn: bigint; cpu: number; idleCpu: number } | null = null;
    const target = w.end - (w.end % BigInt(SEG));
    for (;;) {
      // Both nodes are asked alike, so that answering costs the same CPU on each and cancels out.
      const [v] = await Promise.all([view(off2), view(idle)]);
      const b = v?.backup_lsn ? lsnOf(v.backup_lsn) : 0n;
      if (!first && b > b0) first = { t: Date.now(), lsn: b, cpu: cpuSecondsOf(off2.pid!), idleCpu: cpuSecondsOf(idle.pid!) };
      if (b >= target) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const wSecs = (Date.now() - first!.t) / 1000;
    const wBytes = Number(target - first!.lsn);
    const wCpu = cpuSecondsOf(off2.pid!) - first!.cpu - (cpuSecondsOf(idle.pid!) - first!.idleCpu);
    const wRate = wBytes / 2 ** 20 / wSecs;
    const wCpuGiB = wCpu / (wBytes / 2 ** 30);
    const ratio = Number(target - b0) / (await metric(off2, 'walkeeper_offload_compressed_bytes_total')) || 0;
    const raw = await metric(off2, 'walkeeper_offload_bytes_total');
    log(`    drained ${(wBytes / 2 ** 20).toFixed(0)} MiB in ${wSecs.toFixed(2)} s = ${wRate.toFixed(0)} MiB/s; ${wCpuGiB.toFixed(2)} CPU s/GiB; compression ${ratio.toFixed(2)}× (${(raw / 2 ** 20).toFixed(0)} MiB in)`);
    await Promise.all(nodes.map((n) => n.stop()));

    // (3) capacity, pgBackRest
    log('(3) pgBackRest archive-push (async, zst level 3, process-max 2): the backlog PostgreSQL kept');
    const br = path.join(tmp.path, 'pgbackrest');
    const pgbr = await setupPgBackRest(br, rgw, 'pgbr', pg);
    // The backlog: every segment PostgreSQL kept as .ready during phases 1 and 2 (archive_command was empty).
    const readyCount = async () => Number((await pg!.query<{ n: string }>("SELECT count(*) AS n FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"))[0]!.n);
    const stat = async () => (await pg!.query<{ c: string }>('SELECT archived_count::text AS c FROM pg_stat_archiver'))[0]!;
    const c0 = Number((await stat()).c);
    const want = await readyCount();
    log(`    ${want} segments waiting`);
    // CPU: the async and local workers are sampled from /proc; the short foreground archive-push that
    // PostgreSQL runs per segment is timed by /usr/bin/time (its rusage), when the machine has it.
    const cpu = cpuSampler('archive-push:');
    const timeLog = path.join(br, 'time.log');
    await writeFile(timeLog, '');
    await chownToServerUser(timeLog);
    const timed = existsSync('/usr/bin/time') ? `/usr/bin/time -a -o ${timeLog} -f "%U %S" ` : '';
    await pg.query(`ALTER SYSTEM SET archive_command = '${timed}${pgbr.command('archive-push %p')}'`);
    await pg.query('SELECT pg_reload_conf()');
    let pFirst: { t: number; c: number } | null = null;
    for (;;) {
      const c = Number((await stat()).c) - c0;
      if (!pFirst && c > 0) pFirst = { t: Date.now(), c };
      if (c >= want && (await readyCount()) === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const pSecs = (Date.now() - pFirst!.t) / 1000;
    const pCount = Number((await stat()).c) - c0 - pFirst!.c;
    const pBytes = pCount * SEG;
    const foreground = readFileSync(timeLog, 'utf8').split('\n').filter(Boolean).reduce((a, l) => a + l.split(' ').reduce((x, y) => x + Number(y), 0), 0);
    const pCpu = cpu.stop() + foreground;
    log(`    pgBackRest CPU: ${(pCpu - foreground).toFixed(2)} s in its workers, ${foreground.toFixed(2)} s in ${want} foreground archive-push runs`);
    const pRate = pBytes / 2 ** 20 / pSecs;
    const pCpuGiB = pCpu / (((Number((await stat()).c) - c0) * SEG) / 2 ** 30);
    log(`    archived ${(pBytes / 2 ** 20).toFixed(0)} MiB in ${pSecs.toFixed(2)} s = ${pRate.toFixed(0)} MiB/s; ${pCpuGiB.toFixed(2)} CPU s/GiB`);

    const lines = [
      `offload: pgbench -i -s ${scale} (${liveMiB.toFixed(0)} MiB of WAL per load), 16 MiB segments, Ceph RGW (memstore) on loopback, walkeeper over ${tls ? "https" : "http"}, pgBackRest over https`,
      `machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
      `(1) live, three nodes: offload lag when the load ended ${lagSegs.toFixed(1)} segments (target ≤ 2)`,
      `(2) walkeeper backlog:  ${wRate.toFixed(0).padStart(5)} MiB/s  ${wCpuGiB.toFixed(2)} CPU s/GiB  zstd ${ratio.toFixed(2)}×`,
      `(3) pgBackRest backlog: ${pRate.toFixed(0).padStart(5)} MiB/s  ${pCpuGiB.toFixed(2)} CPU s/GiB  (async, process-max 2, zst 3)`,
      `rate ${(wRate / pRate).toFixed(2)}× pgBackRest (target ≥ 2×), CPU per GiB ${(wCpuGiB / pCpuGiB).toFixed(2)}× (target ≤ 1×)`,
    ];
    console.log(lines.join('\n'));
    record({ bench: 'offload', what: 'WAL offload to S3 (RGW), backlog drain (vs pgBackRest archive-push async)', unit: 'MiB/s', walkeeper: wRate, postgres: pRate, target: '≥ 2×', better: 'higher' });
    record({ bench: 'offload', what: 'CPU per GiB offloaded (vs pgBackRest)', unit: 'CPU s/GiB', walkeeper: wCpuGiB, postgres: pCpuGiB, target: '≤ pgBackRest', better: 'lower' });
    record({ bench: 'offload', what: 'offload lag when pgbench -i ends, three nodes', unit: 'segments', walkeeper: lagSegs, target: '≤ 2', better: 'lower' });
  } finally {
    await Promise.all(nodes.map((n) => n.kill()));
    await pg?.destroy();
    await rgw.stop();
    await tmp.cleanup();
  }
}

main().catch((e) => {
  console.error(`offload: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
