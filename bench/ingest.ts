/**
 * bench/ingest: what a walkeeper node costs a primary as a synchronous
 * standby, against a native PostgreSQL standby, in one run:
 *
 *   pgbench (scale 10, 4 clients, --time per setting, settings alternated
 *   over --rounds) with synchronous_standby_names set to (1) nothing,
 *   (2) one native PostgreSQL standby, (3) one walkeeper node, (4) ANY 2 of
 *   three walkeeper nodes. Every standby and node is connected throughout;
 *   only the setting changes. Prints TPS, latency (the median over the
 *   rounds, so that one round hit by a checkpoint does not decide it) and
 *   the ratios (3)/(2), (4)/(2).
 *
 *   And a bulk insert at full speed: WAL generated vs the node's flush rate,
 *   and the largest lag seen.
 *
 *   npm run bench:ingest [-- --time 20 --rounds 3]
 */
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { basebackup, createTempDir, lsnOf, runPgTool, startNodeProcess, startPostgres, startStandby, type NodeProcess } from '../__test__/harness/index.js';
import { record } from './results.js';

const { values } = parseArgs({ options: { time: { type: 'string', default: '20' }, rounds: { type: 'string', default: '3' }, scale: { type: 'string', default: '10' }, clients: { type: 'string', default: '4' } } });
const seconds = Number(values.time);
const rounds = Number(values.rounds);
const log = (s: string) => process.stderr.write(`[ingest] ${s}\n`);

async function main() {
  const tmp = await createTempDir('walkeeper-bench-ingest-');
  const pg = await startPostgres({ conf: { wal_keep_size: '4GB', max_wal_size: '4GB', synchronous_commit: 'on', max_wal_senders: 20 } });
  const nodes: NodeProcess[] = [];
  let standby: Awaited<ReturnType<typeof startStandby>> | null = null;
  try {
    const conninfo = `host=127.0.0.1 port=${pg.port} user=postgres`;
    await runPgTool('pgbench', ['-i', '-q', '-s', values.scale!, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 600_000 });
    const bb = await basebackup(pg);
    standby = await startStandby(bb, { primaryConninfo: `${conninfo} application_name=pgstandby` });
    for (const id of [1, 2, 3]) nodes.push(await startNodeProcess({ dataDir: path.join(tmp.path, `node${id}`), nodeId: id, upstream: conninfo, env: { WALKEEPER_LOG_LEVEL: 'warn' } }));
    for (;;) {
      const rows = await pg.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_replication WHERE state = 'streaming'");
      if (Number(rows[0]!.n) === 4) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const settings: [string, string][] = [
      ['(1) no synchronous standby', ''],
      ['(2) one PostgreSQL standby', 'pgstandby'],
      ['(3) one walkeeper node', 'walkeeper_1'],
      ['(4) ANY 2 of three walkeeper nodes', 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)'],
    ];
    const res = new Map<string, { tps: number[]; lat: number[] }>();
    for (let r = 0; r < rounds; r++) {
      for (const [name, ssn] of settings) {
        await pg.query(`ALTER SYSTEM SET synchronous_standby_names = '${ssn}'`);
        await pg.query('SELECT pg_reload_conf()');
        await new Promise((res2) => setTimeout(res2, 500));
        const out = await runPgTool('pgbench', ['-c', values.clients!, '-j', '2', '-T', String(seconds), '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: (seconds + 120) * 1000 });
        const tps = Number(/tps = ([\d.]+)/.exec(out.stdout)?.[1]);
        const lat = Number(/latency average = ([\d.]+) ms/.exec(out.stdout)?.[1]);
        const e = res.get(name) ?? { tps: [], lat: [] };
        e.tps.push(tps);
        e.lat.push(lat);
        res.set(name, e);
        log(`round ${r + 1} ${name}: ${tps.toFixed(0)} tps, ${lat} ms`);
      }
    }
    await pg.query("ALTER SYSTEM SET synchronous_standby_names = ''");
    await pg.query('SELECT pg_reload_conf()');

    // Bulk insert at full speed; the node and the native standby follow
    // asynchronously. Lag = what the primary has sent minus what the
    // receiver has acknowledged as flushed (pg_stat_replication).
    await pg.query('CREATE TABLE bulk (id bigint, v text)');
    const [s0] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
    const start = lsnOf(s0!.l);
    const lags: Record<string, number[]> = { walkeeper_1: [], pgstandby: [] };
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const rows = await pg.query<{ a: string; s: string; f: string | null }>('SELECT application_name AS a, sent_lsn::text AS s, flush_lsn::text AS f FROM pg_stat_replication');
        for (const r of rows) if (r.f && lags[r.a]) lags[r.a]!.push(Number(lsnOf(r.s) - lsnOf(r.f)) / 1048576);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const t0 = process.hrtime.bigint();
    await pg.query('INSERT INTO bulk SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 3000000) g');
    const genSecs = Number(process.hrtime.bigint() - t0) / 1e9;
    const [e1] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
    const end = lsnOf(e1!.l);
    for (;;) {
      const st = await nodes[0]!.status();
      if (st && lsnOf(st.flush_lsn) >= end) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const followSecs = Number(process.hrtime.bigint() - t0) / 1e9;
    sampling = false;
    await sampler;
    const mib = Number(end - start) / 1048576;
    const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? NaN;
    const lagLine = (k: string) => `p50 ${pct(lags[k]!, 0.5).toFixed(1)}  p90 ${pct(lags[k]!, 0.9).toFixed(1)}  p99 ${pct(lags[k]!, 0.99).toFixed(1)}  max ${Math.max(...lags[k]!).toFixed(1)} MiB`;
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const lines = [`ingest: pgbench -s ${values.scale} -c ${values.clients}, ${seconds} s per setting, ${rounds} rounds alternated (median)`];
    lines.push(`machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; fsync on; every standby and node connected in every setting`);
    for (const [name] of settings) {
      const e = res.get(name)!;
      lines.push(`${name.padEnd(38)} ${median(e.tps).toFixed(0).padStart(7)} tps  ${median(e.lat).toFixed(2).padStart(6)} ms`);
    }
    const tps = (i: number) => median(res.get(settings[i]![0])!.tps);
    lines.push(`(3)/(2) = ${(tps(2) / tps(1)).toFixed(2)}   (4)/(2) = ${(tps(3) / tps(1)).toFixed(2)}   (target ≥ 0.95, aim ≥ 1.0)`);
    record({ bench: 'ingest', what: 'pgbench TPS with one node as synchronous standby (vs one PostgreSQL standby)', unit: 'tps', walkeeper: tps(2), postgres: tps(1), target: '≥ 0.95×', better: 'higher' });
    record({ bench: 'ingest', what: 'pgbench TPS with ANY 2 of three nodes (vs one PostgreSQL standby)', unit: 'tps', walkeeper: tps(3), postgres: tps(1), target: '≥ 0.95×', better: 'higher' });
    lines.push(`bulk insert: ${mib.toFixed(0)} MiB of WAL generated at ${(mib / genSecs).toFixed(0)} MiB/s; the node had flushed all of it ${(followSecs - genSecs).toFixed(2)} s after the insert ended (${(mib / followSecs).toFixed(0)} MiB/s)`);
    lines.push(`  flush lag (sent − flushed), one segment = 16 MiB:  walkeeper node ${lagLine('walkeeper_1')}`);
    lines.push(`                                                    PostgreSQL standby ${lagLine('pgstandby')}`);
    console.log(lines.join('\n'));
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await standby?.destroy();
    await pg.destroy();
    await tmp.cleanup();
  }
}

main().catch((e) => {
  console.error(`ingest: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
