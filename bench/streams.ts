/**
 * bench/streams: many PostgreSQL clusters on one walkeeper cluster (issue 20).
 *
 *   1. One node, N streams (default 1,000), each following its own upstream
 *      (fakes that speak the replication protocol, one database system
 *      each, idle after a little WAL): the node's RSS and CPU per idle
 *      stream, its start-up time with N streams on disk, and the latency of
 *      GET /v1/streams.
 *   2. Three nodes × N streams, on --peers and on one etcd: peer status
 *      lines/s and etcd puts/s per idle stream and node, and whether every
 *      stream's commit_lsn caught up with its flush_lsn on every node.
 *   3. P real PostgreSQL 15 primaries (default 20, small shared_buffers),
 *      each with ANY 2 of the three nodes as synchronous standbys, under
 *      pgbench at once: TPS per primary, against the same primaries each
 *      with one PostgreSQL standby as its synchronous standby.
 *
 *   npm run bench:streams [-- --streams 1000 --idle 60 --primaries 20 --pgbench-seconds 20 --only idle|cluster|peers|etcd|primaries]
 * The nodes run as their own processes (dist/: `npm run build` first).
 * BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR" profiles the one node.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { Etcd3 } from 'etcd3';

import {
  basebackup,
  createTempDir,
  FIXTURE_SEG,
  freePort,
  makeWalFixture,
  NodeProcess,
  pgToolPath,
  startFakeUpstream,
  startPostgres,
  startStandby,
  until,
  type FakeUpstream,
  type PgCluster,
  type StandbyCluster,
  type TempDir,
} from '../__test__/harness/index.js';
import { startEtcd } from '../__test__/harness/etcd.js';
import { cpuSecondsOf, memoryKiB } from './proc.js';
import { record } from './results.js';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '1000' },
    idle: { type: 'string', default: '60' },
    primaries: { type: 'string', default: '20' },
    'pgbench-seconds': { type: 'string', default: '20' },
    only: { type: 'string' },
  },
});
const N = Number(values.streams);
const IDLE_S = Number(values.idle);
const PRIMARIES = Number(values.primaries);
const PGBENCH_S = Number(values['pgbench-seconds']);
const log = (s: string) => process.stderr.write(`[streams] ${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The fixture's first KiBs, relabelled for `systemId`: the long page header of a segment's first page carries it. */
function walOf(base: Buffer, systemId: bigint): Buffer {
  const w = Buffer.from(base);
  // XLogLongPageHeaderData: the 24-byte short header, then xlp_sysid.
  w.writeBigUInt64LE(systemId, 24);
  return w;
}

async function statusList(n: NodeProcess): Promise<{ name: string; state: string; flush_lsn: string | null; commit_lsn: string | null; upstream: { state: string } | null }[]> {
  return (await (await fetch(`${n.httpUrl}/v1/streams`)).json()) as never;
}


/** N fake upstreams, one database system each, serving `wal` and then idle (a keepalive every 10 s, as an idle primary's walsender is quiet). */
async function fakeUpstreams(n: number, wal: Buffer, walStart: bigint, systemId: bigint): Promise<FakeUpstream[]> {
  const ups: FakeUpstream[] = [];
  for (let i = 0; i < n; i++) {
    const id = systemId + BigInt(i);
    ups.push(await startFakeUpstream({ wal: walOf(wal, id), walStart, segmentSize: FIXTURE_SEG, systemId: id, keepaliveMs: 10_000 }));
  }
  return ups;
}

function streamsConfig(ups: FakeUpstream[]): Record<string, { upstream: string }> {
  return Object.fromEntries(ups.map((u, i) => [`db${String(i).padStart(4, '0')}`, { upstream: u.conninfo }]));
}

async function allStreaming(nodes: NodeProcess[], n: number, what: string): Promise<void> {
  await until(
    async () => {
      for (const node of nodes) {
        if (!node.running) throw new Error(`node ${node.opts.nodeId ?? 1} exited while waiting for ${what}:\n${node.output.slice(-3000)}`);
        const l = await statusList(node);
        if (l.length !== n || l.some((s) => s.upstream?.state !== 'streaming')) return false;
      }
      return true;
    },
    what,
    600_000,
  );
}

async function idleOneNode(tmp: TempDir, ups: FakeUpstream[]): Promise<string[]> {
  const out: string[] = [];
  // The node's own footprint first: no stream at all.
  const empty = new NodeProcess({ dataDir: path.join(tmp.path, 'empty'), extraArgs: ['--log-level', 'warn'] });
  await empty.start();
  await sleep(5000);
  const rss0 = await memoryKiB(empty.pid!, 'VmRSS');
  await empty.stop();

  const cfg = path.join(tmp.path, 'one.json');
  await writeFile(cfg, JSON.stringify({ streams: streamsConfig(ups) }));
  const node = new NodeProcess({ dataDir: path.join(tmp.path, 'one'), extraArgs: ['--config', cfg, '--log-level', 'warn'], nodeArgs: process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) });
  let t0 = Date.now();
  await node.start();
  await allStreaming([node], ups.length, `${ups.length} streams to follow their upstreams`);
  const followS = (Date.now() - t0) / 1000;
  log(`one node: ${ups.length} streams created and streaming in ${followS.toFixed(1)} s`);
  await sleep(5000);
  const cpu0 = cpuSecondsOf(node.pid!);
  const w0 = Date.now();
  await sleep(IDLE_S * 1000);
  const cpu = cpuSecondsOf(node.pid!) - cpu0;
  const wall = (Date.now() - w0) / 1000;
  const rss = await memoryKiB(node.pid!, 'VmRSS');
  const perStreamKiB = (rss - rss0) / ups.length;
  const corePct = (cpu / wall / ups.length) * 100;
  // GET /v1/streams with N streams.
  const lat: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    await (await fetch(`${node.httpUrl}/v1/streams`)).arrayBuffer();
    lat.push(performance.now() - t);
  }
  // Start-up with N streams on disk.
  await node.stop();
  t0 = Date.now();
  await node.start();
  const startS = (Date.now() - t0) / 1000;
  await allStreaming([node], ups.length, 'the restarted node to follow every upstream again');
  const againS = (Date.now() - t0) / 1000;
  await node.stop();

  out.push(`one node, ${ups.length} idle streams (each following its own upstream), idle for ${wall.toFixed(0)} s:`);
  out.push(`  RSS ${(rss / 1024).toFixed(0)} MiB (no streams: ${(rss0 / 1024).toFixed(0)} MiB) → ${perStreamKiB.toFixed(0)} KiB per stream (target ≤ 1024)`);
  out.push(`  CPU ${cpu.toFixed(2)} s in ${wall.toFixed(0)} s → ${corePct.toFixed(4)}% of a core per stream (target ≤ 0.02%)`);
  out.push(`  start-up with ${ups.length} streams on disk: ${startS.toFixed(2)} s until it serves (target ≤ 5 s); every upstream followed again after ${againS.toFixed(1)} s (first time: ${followS.toFixed(1)} s)`);
  out.push(`  GET /v1/streams (${ups.length} streams): median ${median(lat).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms`);
  record({ bench: 'streams', what: `RSS per idle stream, ${ups.length} streams on one node`, unit: 'KiB', walkeeper: perStreamKiB, target: '≤ 1024 KiB', better: 'lower' });
  record({ bench: 'streams', what: `CPU per idle stream, ${ups.length} streams on one node`, unit: '% of a core', walkeeper: corePct, target: '≤ 0.02%', better: 'lower' });
  record({ bench: 'streams', what: `node start-up with ${ups.length} streams`, unit: 's', walkeeper: startS, target: '≤ 5 s', better: 'lower' });
  record({ bench: 'streams', what: `GET /v1/streams with ${ups.length} streams, median`, unit: 'ms', walkeeper: median(lat), better: 'lower' });
  return out;
}

/** Three nodes on the same N upstreams, with --peers or an etcd: what an idle stream costs the cluster. */
async function idleCluster(tmp: TempDir, ups: FakeUpstream[], mode: 'peers' | 'etcd'): Promise<string[]> {
  const etcd = mode === 'etcd' ? await startEtcd(path.join(tmp.path, 'etcd')) : null;
  const nodes = [1, 2, 3].map((id) => new NodeProcess({ dataDir: path.join(tmp.path, `${mode}${id}`), nodeId: id }));
  try {
    for (const n of nodes) {
      n.pgPort = await freePort();
      n.httpPort = await freePort();
    }
    for (const n of nodes) {
      const cfg = path.join(tmp.path, `${mode}${n.opts.nodeId}.json`);
      const members = mode === 'peers' ? { peers: nodes.filter((m) => m !== n).map((m) => m.httpUrl) } : { broker: etcd!.endpoint };
      await writeFile(cfg, JSON.stringify({ streams: streamsConfig(ups), ...members }));
      n.opts.extraArgs = ['--config', cfg, '--log-level', process.env.BENCH_NODE_LOG_LEVEL ?? 'warn'];
    }
    await Promise.all(nodes.map((n) => n.start()));
    await allStreaming(nodes, ups.length, `${mode}: three nodes to follow ${ups.length} upstreams`);
    await sleep(5000);
    const window = Math.min(IDLE_S, 30);
    let count = 0;
    let what: string;
    if (mode === 'peers') {
      // What one peer receives from node 1 for every stream: the same watch the nodes hold on each other.
      const ctl = new AbortController();
      const r = await fetch(`${nodes[0]!.httpUrl}/v1/streams?watch=peers`, { signal: ctl.signal });
      const reader = r.body!.getReader();
      let first = true;
      const t = setTimeout(() => ctl.abort(), window * 1000 + 2000);
      const start = Date.now() + 2000; // the opening burst (every stream once) is not the idle rate
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const lines = Buffer.from(value).toString('utf8').split('\n').filter((l) => l.startsWith('{"name"')).length;
          if (!first && Date.now() >= start) count += lines;
          first = false;
        }
      } catch {
        // aborted: the window is over
      }
      clearTimeout(t);
      what = 'peer status lines/s';
    } else {
      const client = new Etcd3({ hosts: [etcd!.endpoint] });
      const w = await client.watch().prefix('walkeeper/').create();
      w.on('put', () => count++);
      await sleep(window * 1000);
      await w.cancel();
      client.close();
      what = 'etcd puts/s';
    }
    const perStream = mode === 'peers' ? count / window / ups.length : count / window / ups.length / nodes.length;
    // commit_lsn within a heartbeat of flush_lsn: idle, every stream should show them equal.
    let behind = 0;
    for (const n of nodes) for (const s of await statusList(n)) if (s.commit_lsn !== s.flush_lsn) behind++;
    const cpus = nodes.map((n) => cpuSecondsOf(n.pid!));
    await sleep(10_000);
    const cpuPct = nodes.map((n, i) => ((cpuSecondsOf(n.pid!) - cpus[i]!) / 10 / ups.length) * 100);
    record({ bench: 'streams', what: `${what} per idle stream and node, 3 nodes × ${ups.length} streams (${mode})`, unit: '/s', walkeeper: perStream, ...(mode === 'etcd' ? { target: '≤ 0.1' } : {}), better: 'lower' });
    return [
      `three nodes × ${ups.length} idle streams on ${mode === 'peers' ? '--peers' : 'one etcd'} (${window} s): ${(count / window).toFixed(1)} ${what} in all → ${perStream.toFixed(4)} per stream${mode === 'peers' ? ' (from node 1 to one peer)' : ' and node (target ≤ 0.1)'}; streams with commit_lsn ≠ flush_lsn: ${behind} of ${ups.length * 3}; node CPU per stream ${cpuPct.map((c) => `${c.toFixed(4)}%`).join(', ')} of a core`,
    ];
  } finally {
    await Promise.all(nodes.map((n) => stopOrReport(n)));
    await etcd?.stop();
  }
}

/** SIGTERM; a node that has not stopped after 60 s is a bug: its log tail is printed, and it is killed. */
async function stopOrReport(n: NodeProcess): Promise<void> {
  const stopped = await Promise.race([n.stop().then(() => true), sleep(60_000).then(() => false)]);
  if (stopped) return;
  log(`node ${n.opts.nodeId ?? 1} did not stop within 60 s; its log ends:\n${n.output.slice(-4000)}`);
  await n.kill();
  throw new Error(`node ${n.opts.nodeId ?? 1} did not stop within 60 s`);
}

/** pgbench on every primary at once; TPS of each (excluding connection time). */
async function pgbenchAll(pgs: PgCluster[], seconds: number): Promise<number[]> {
  return Promise.all(
    pgs.map(
      (pg) =>
        new Promise<number>((resolve, reject) => {
          const p = spawn(pgToolPath('pgbench'), ['-c', '1', '-T', String(seconds), '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: ['ignore', 'pipe', 'pipe'] });
          let out = '';
          p.stdout.on('data', (b: Buffer) => (out += b));
          p.stderr.on('data', (b: Buffer) => (out += b));
          // ('close', not 'exit': the output may still be in the pipe when the process exits)
          p.on('close', (code, signal) => {
            const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(out);
            if (code === 0 && m) resolve(Number(m[1]));
            else reject(new Error(`pgbench on port ${pg.port} exited with ${signal ?? code}: ${out.slice(-1500)}`));
          });
        }),
    ),
  );
}

async function primaries(tmp: TempDir): Promise<string[]> {
  const conf = { shared_buffers: '16MB', max_wal_senders: '10', wal_keep_size: '256MB', autovacuum: 'off', synchronous_commit: 'on' };
  const pgs: PgCluster[] = [];
  const standbys: StandbyCluster[] = [];
  const nodes = [1, 2, 3].map((id) => new NodeProcess({ dataDir: path.join(tmp.path, `p${id}`), nodeId: id }));
  try {
    for (let i = 0; i < PRIMARIES; i++) pgs.push(await startPostgres({ conf }));
    log(`${PRIMARIES} primaries up; pgbench -i on each`);
    for (const pg of pgs) {
      await new Promise<void>((resolve, reject) => {
        const p = spawn(pgToolPath('pgbench'), ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
        p.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`pgbench -i: ${c}`))));
      });
    }
    // Baseline: one PostgreSQL standby each, as the synchronous standby.
    for (const [i, pg] of pgs.entries()) {
      const dir = await basebackup(pg);
      standbys.push(await startStandby(dir, { primaryConninfo: `host=${pg.host} port=${pg.port} user=postgres application_name=standby${i}`, conf: { shared_buffers: '16MB' } }));
      await pg.query(`ALTER SYSTEM SET synchronous_standby_names = 'standby${i}'`);
      await pg.query('SELECT pg_reload_conf()');
    }
    for (const [i, pg] of pgs.entries()) {
      await until(async () => (await pg.query(`SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby${i}' AND sync_state = 'sync'`)).length === 1, `standby${i} to be the synchronous standby of the primary on port ${pg.port}`, 120_000);
    }
    log(`pgbench -c 1 -T ${PGBENCH_S} on ${PRIMARIES} primaries, each with a PostgreSQL standby`);
    const base = await pgbenchAll(pgs, PGBENCH_S);
    for (const s of standbys) await s.destroy();
    standbys.length = 0;

    // The same primaries, ANY 2 of three nodes each, one stream per primary on every node.
    for (const n of nodes) {
      n.pgPort = await freePort();
      n.httpPort = await freePort();
    }
    const streams = Object.fromEntries(pgs.map((pg, i) => [`pg${i}`, { upstream: `host=${pg.host} port=${pg.port} user=postgres` }]));
    for (const n of nodes) {
      const cfg = path.join(tmp.path, `p${n.opts.nodeId}.json`);
      await writeFile(cfg, JSON.stringify({ streams, peers: nodes.filter((m) => m !== n).map((m) => m.httpUrl) }));
      n.opts.extraArgs = ['--config', cfg, '--log-level', 'warn'];
    }
    await Promise.all(nodes.map((n) => n.start()));
    for (const pg of pgs) {
      await pg.query("ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)'");
      await pg.query('SELECT pg_reload_conf()');
    }
    for (const pg of pgs) {
      await until(async () => (await pg.query("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'quorum'")).length === 3, `three nodes in the quorum of the primary on port ${pg.port}`, 120_000);
    }
    log(`pgbench -c 1 -T ${PGBENCH_S} on ${PRIMARIES} primaries, each with ANY 2 of three walkeeper nodes`);
    const wk = await pgbenchAll(pgs, PGBENCH_S);
    const [mb, mw] = [median(base), median(wk)];
    record({ bench: 'streams', what: `TPS per primary, ${PRIMARIES} primaries under pgbench at once: ANY 2 of 3 nodes (vs one PostgreSQL standby each)`, unit: 'TPS', walkeeper: mw, postgres: mb, better: 'higher' });
    return [
      `${PRIMARIES} primaries under pgbench -c 1 at once (${PGBENCH_S} s), TPS per primary, median (min–max):`,
      `  one PostgreSQL standby each (synchronous)  ${mb.toFixed(0)} (${Math.min(...base).toFixed(0)}–${Math.max(...base).toFixed(0)}), total ${base.reduce((a, b) => a + b, 0).toFixed(0)}`,
      `  ANY 2 of three walkeeper nodes             ${mw.toFixed(0)} (${Math.min(...wk).toFixed(0)}–${Math.max(...wk).toFixed(0)}), total ${wk.reduce((a, b) => a + b, 0).toFixed(0)}  → ${(mw / mb).toFixed(2)}×`,
    ];
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    for (const s of standbys) await s.destroy().catch(() => undefined);
    for (const pg of pgs) await pg.destroy().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const tmp = await createTempDir('walkeeper-bench-streams-');
  // Each part's lines go out as soon as it is done (a long run shows its figures as it goes).
  const lines = { push: (...l: string[]) => process.stdout.write(`${l.join('\n')}\n`) };
  try {
    if (values.only === undefined || ['idle', 'cluster', 'peers', 'etcd'].includes(values.only)) {
      const fx = await makeWalFixture({ minBytes: FIXTURE_SEG });
      // A little WAL each (the first 64 KiB of the fixture), then idle.
      const wal = (await fx.bytes()).subarray(0, 64 * 1024);
      const ups = await fakeUpstreams(N, wal, fx.firstLsn, fx.systemId);
      log(`${N} fake upstreams listening`);
      try {
        const part = (p: string) => values.only === undefined || values.only === p || (values.only === 'cluster' && (p === 'peers' || p === 'etcd'));
        if (part('idle')) lines.push(...(await idleOneNode(tmp, ups)));
        if (part('peers')) lines.push(...(await idleCluster(tmp, ups, 'peers')));
        if (part('etcd')) lines.push(...(await idleCluster(tmp, ups, 'etcd')));
      } finally {
        await Promise.all(ups.map((u) => u.close()));
        await fx.destroy();
      }
    }
    if (values.only === undefined || values.only === 'primaries') lines.push(...(await primaries(tmp)));
    lines.push(`machine: ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);
  } finally {
    await tmp.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`streams: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
