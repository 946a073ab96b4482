/**
 * bench/cluster: what the quorum costs, and what one etcd carries.
 *
 *   commit latency: one session commits small transactions one after
 *   another; two replication consumers run side by side — one on the
 *   primary itself, one on walkeeper node 1 of three (--peers), which is
 *   served only up to commit_lsn, i.e. once two of the three nodes have
 *   fsynced. For each commit: the time from sending it to each consumer
 *   having received its commit record. Median and p99 of both, same run.
 *
 *   broker load: 100 simulated streams × 3 nodes publish their status to
 *   one etcd through walkeeper's etcd broker (each node a client, one put in
 *   flight per stream and node, as fast as etcd answers) while each node
 *   watches its streams' prefixes: status puts per second etcd sustains.
 *
 *   --node-dir DIR puts the nodes' data there (e.g. /dev/shm: no disk, so
 *   the difference left is the software's own); --nodes N (default 3).
 *   BENCH_NODE1_ARGS="--cpu-prof --cpu-prof-dir=DIR" profiles node 1.
 *
 *   npm run bench:cluster [-- --commits 5000 --seconds 10]
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { EtcdBroker } from '../ts/cluster/broker/etcd.js';
import { formatLsn, type Lsn } from '../ts/lsn.js';
import { createLogger } from '../ts/log.js';
import { ReplicationClient } from '../ts/client/client.js';
import { createTempDir, freePort, lsnOf, NodeProcess, startPostgres } from '../__test__/harness/index.js';
import { startEtcd } from '../__test__/harness/etcd.js';
import { cpuSecondsOf } from './proc.js';
import { record } from './results.js';

const { values } = parseArgs({ options: { commits: { type: 'string', default: '5000' }, seconds: { type: 'string', default: '10' }, only: { type: 'string' }, nodes: { type: 'string', default: '3' }, 'node-dir': { type: 'string' } } });
const log = (s: string) => process.stderr.write(`[cluster] ${s}\n`);

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** A consumer that records when each received end position arrived. */
async function consumer(host: string, port: number, name: string): Promise<{ reachedAt: (lsn: Lsn) => Promise<bigint>; close: () => Promise<void> }> {
  const c = await ReplicationClient.connect({ host, port, applicationName: name });
  const sys = await c.identifySystem();
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(sys.xlogpos)} TIMELINE ${sys.timeline}`);
  let pos = sys.xlogpos;
  // (end position, arrival time) of every message, so that a position
  // reached before anyone asked is timed when it arrived, not when asked.
  let arrivals: { pos: Lsn; at: bigint }[] = [];
  const waiters: { lsn: Lsn; resolve: (t: bigint) => void }[] = [];
  copy.onXLogData = (m) => {
    const t = process.hrtime.bigint();
    pos = m.start + BigInt(m.data.length);
    arrivals.push({ pos, at: t });
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (pos >= waiters[i]!.lsn) {
        waiters[i]!.resolve(t);
        waiters.splice(i, 1);
      }
    }
  };
  copy.onKeepalive = (k) => {
    if (k.replyRequested) copy.sendStatus({ write: pos, flush: pos, apply: 0n });
  };
  await copy.started;
  return {
    reachedAt: (lsn) => {
      const hit = arrivals.find((a) => a.pos >= lsn);
      if (hit) {
        arrivals = arrivals.filter((a) => a.pos >= lsn);
        return Promise.resolve(hit.at);
      }
      arrivals = [];
      return new Promise((resolve) => waiters.push({ lsn, resolve }));
    },
    close: async () => {
      await copy.end().catch(() => undefined);
      await c.close();
    },
  };
}

async function commitLatency(tmpDir: string, commits: number): Promise<string[]> {
  const pg = await startPostgres({ walSegSizeMB: 16, conf: { wal_keep_size: '1GB', max_wal_senders: 20, synchronous_commit: 'on' } });
  const nodes: NodeProcess[] = [];
  try {
    const conninfo = `host=127.0.0.1 port=${pg.port} user=postgres`;
    for (let i = 1; i <= Number(values.nodes); i++) {
      const n = new NodeProcess({ dataDir: path.join(tmpDir, `n${i}`), nodeId: i, upstream: conninfo, env: { WALKEEPER_LOG_LEVEL: 'warn' }, nodeArgs: i === 1 && process.env.BENCH_NODE1_ARGS ? process.env.BENCH_NODE1_ARGS.split(' ') : [] });
      n.pgPort = await freePort();
      n.httpPort = await freePort();
      nodes.push(n);
    }
    if (nodes.length > 1) for (const n of nodes) n.opts.extraArgs = ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(',')];
    await Promise.all(nodes.map((n) => n.start()));
    await pg.query('CREATE TABLE t (id serial primary key, v int)');
    const flush = async () => lsnOf((await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l'))[0]!.l);
    const target = await flush();
    for (;;) {
      const st = await Promise.all(nodes.map((n) => n.status()));
      if (st.every((s) => s && lsnOf(s.commit_lsn) >= target)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    log(`three nodes follow the primary; ${commits} commits`);
    const direct = await consumer(pg.host, pg.port, 'bench_direct');
    const viaNode = await consumer('127.0.0.1', nodes[0]!.pgPort, 'bench_via_walkeeper');
    const client = await pg.connect();
    const cpu = () => nodes.map((n) => cpuSecondsOf(n.pid!));
    const cpu0 = process.platform === 'linux' ? cpu() : [];
    // (node 1's histograms as they stand now: the steps below count only this run's commits, not the start-up)
    const metricsBefore = await (await fetch(`${nodes[0]!.httpUrl}/metrics`)).text();
    const d: number[] = [];
    const w: number[] = [];
    try {
      for (let i = 0; i < commits + 50; i++) {
        const t0 = process.hrtime.bigint();
        await client.query('INSERT INTO t (v) VALUES ($1)', [i]);
        const end = await flush();
        const [td, tw] = await Promise.all([direct.reachedAt(end), viaNode.reachedAt(end)]);
        if (i >= 50) {
          // (the first 50 warm up connections and JIT)
          d.push(Number(td - t0) / 1e6);
          w.push(Number(tw - t0) / 1e6);
        }
      }
    } finally {
      await client.end();
      await direct.close();
      await viaNode.close();
    }
    const cpuMs = process.platform === "linux" ? cpu().map((c, i) => ((c - cpu0[i]!) * 1000) / (commits + 50)) : [];
    if (process.env.BENCH_CPU_SPLIT) for (const n of nodes) log(`pid ${n.pid} utime/stime ticks: ${readFileSync(`/proc/${n.pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13).join(" ")} threads: ${readFileSync(`/proc/${n.pid}/status`, "utf8").match(/Threads:\s+(\d+)/)![1]}`);
    record({ bench: 'cluster', what: `commit → commit record at a consumer, median: through ${nodes.length} node(s) (vs a consumer of the primary)`, unit: 'ms', walkeeper: pct(w, 50), postgres: pct(d, 50), target: '≤ PostgreSQL + 0.5 ms', better: 'lower', chart: 'latency' });
    record({ bench: 'cluster', what: `commit → commit record at a consumer, p99: through ${nodes.length} node(s) (vs a consumer of the primary)`, unit: 'ms', walkeeper: pct(w, 99), postgres: pct(d, 99), target: '≤ PostgreSQL + 1.5 ms', better: 'lower', chart: 'latency' });
    const line = (name: string, xs: number[]) => `${name}: median ${pct(xs, 50).toFixed(3)} ms, p99 ${pct(xs, 99).toFixed(3)} ms`;
    // Where the node's share went, from node 1's own histograms (the bucket holding each quantile).
    const metrics = await (await fetch(`${nodes[0]!.httpUrl}/metrics`)).text();
    const steps = [
      ["primary's send → node's 'r' (receive and fsync)", 'walkeeper_ack_delay_seconds'],
      ['fsync (ingest, before the flush is acknowledged)', 'walkeeper_fsync_seconds'],
      ['own flush → commit_lsn (the quorum)', 'walkeeper_commit_wait_seconds'],
      ['commit_lsn → message written to the client', 'walkeeper_send_delay_seconds'],
    ].map(([what, name]) => `  node 1, ${what!.padEnd(48)} ${histogramQuantiles(metricsBefore, metrics, name!)}`);
    return [
      `commit latency, ${commits} commits, commit sent → commit record received (same run; node data in ${path.dirname(tmpDir)}):`,
      `  ${line('consumer of the primary          ', d)}`,
      `  ${line(`consumer of a walkeeper node (${nodes.length} node${nodes.length > 1 ? `s, Q=${Math.floor(nodes.length / 2) + 1}` : ''})`.padEnd(34), w)}`,
      `  difference: median +${(pct(w, 50) - pct(d, 50)).toFixed(3)} ms, p99 +${(pct(w, 99) - pct(d, 99)).toFixed(3)} ms (targets: median within 0.5 ms, p99 within 1.5 ms)`,
      ...(cpuMs.length ? [`  node CPU per commit: ${cpuMs.map((c) => `${c.toFixed(3)} ms`).join(', ')} (2 cores shared with PostgreSQL and this benchmark)`] : []),
      ...steps,
    ];
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await pg.destroy();
  }
}

/** Median and p99 of what a Prometheus histogram observed between two scrapes, as "≤ bucket" bounds, with the count. */
function histogramQuantiles(before: string, after: string, name: string): string {
  const buckets = (m: string) => [...m.matchAll(new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"[^}]*\\} (\\d+)$`, 'gm'))].map((x) => ({ le: x[1]!, n: Number(x[2]) }));
  const was = new Map(buckets(before).map((b) => [b.le, b.n]));
  const now = buckets(after).map((b) => ({ le: b.le, n: b.n - (was.get(b.le) ?? 0) }));
  const total = now.at(-1)?.n ?? 0;
  if (total === 0) return 'no observations';
  const at = (q: number) => {
    const b = now.find((x) => x.n >= q * total)!;
    return b.le === '+Inf' ? '> 1 s' : `≤ ${(Number(b.le) * 1000).toFixed(2)} ms`;
  };
  return `median ${at(0.5)}, p90 ${at(0.9)}, p99 ${at(0.99)} (${total} observations)`;
}

async function brokerLoad(tmpDir: string, seconds: number): Promise<string[]> {
  const etcd = await startEtcd(tmpDir);
  const logger = createLogger({ level: 'error' });
  const brokers: EtcdBroker[] = [];
  const detach: (() => void)[] = [];
  try {
    let flush = 0x1000000n;
    for (let node = 1; node <= 3; node++) {
      const b = new EtcdBroker([etcd.endpoint], node, logger);
      brokers.push(b);
      for (let st = 0; st < 100; st++) {
        const name = `bench${st}`;
        detach.push(
          b.attach(
            {
              name,
              get flushLsn() {
                return flush;
              },
              follow: 'flush',
              status: () => ({ name, node_id: node, system_id: '1', pg_version: 15, tli: 1, segment_size: 16777216, flush_lsn: formatLsn(flush), commit_lsn: formatLsn(flush), pg_address: '127.0.0.1:1', http_address: `127.0.0.1:${node}`, updated_at: new Date().toISOString() }),
            },
            { members: () => undefined, status: () => undefined },
          ),
        );
      }
    }
    log(`300 publishers on etcd at ${etcd.endpoint} for ${seconds} s`);
    // Warm up (leases, membership), then every stream is always dirty: one put in flight each.
    await new Promise((r) => setTimeout(r, 2000));
    const before = brokers.reduce((a, b) => a + b.puts, 0);
    const t0 = Date.now();
    const kick = setInterval(() => {
      flush += 8192n;
      for (const b of brokers) for (let st = 0; st < 100; st++) b.changed(`bench${st}`);
    }, 1);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    clearInterval(kick);
    const puts = brokers.reduce((a, b) => a + b.puts, 0) - before;
    const rate = puts / ((Date.now() - t0) / 1000);
    record({ bench: 'cluster', what: 'etcd broker: status puts/s sustained, 100 streams × 3 nodes on one etcd', unit: 'puts/s', walkeeper: rate, better: 'higher' });
    return [`broker load: 100 streams × 3 nodes on one etcd (${seconds} s): ${rate.toFixed(0)} status puts/s sustained (${(rate / 300).toFixed(1)} per stream and node)`];
  } finally {
    for (const d of detach) d();
    await Promise.all(brokers.map((b) => b.close()));
    await etcd.stop();
  }
}

async function main() {
  const tmp = await createTempDir('walkeeper-bench-cluster-');
  try {
    const lines: string[] = [];
    const nodeDir = values['node-dir'] ? await mkdtemp(path.join(values['node-dir'], 'walkeeper-bench-')) : path.join(tmp.path, 'latency');
    try {
      if (values.only !== 'broker') lines.push(...(await commitLatency(nodeDir, Number(values.commits))));
    } finally {
      if (values['node-dir']) await rm(nodeDir, { recursive: true, force: true });
    }
    if (values.only !== 'latency') lines.push(...(await brokerLoad(path.join(tmp.path, 'broker'), Number(values.seconds))));
    lines.push(`machine: ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await tmp.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
