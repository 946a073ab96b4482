/**
 * bench/receiver: how fast the receiver fails over, and how fast
 * `walkeeper receive` writes WAL compared with pg_receivewal.
 *
 *   Failover: three nodes follow a primary under pgbench; a WalReceiver
 *   follows them; the node it streams from is SIGKILLed (and restarted),
 *   --kills times. Time from the kill to the first byte from another node:
 *   median and max. (PostgreSQL's walreceiver waits wal_retrieve_retry_interval,
 *   5 s, before it retries.)
 *
 *   Throughput: a node serving ≥ --mib of real WAL (imported from a pgbench
 *   -i pg_wal); `walkeeper receive --endpos` vs `pg_receivewal --endpos` from
 *   that node into tmpfs, alternated over --rounds.
 *
 *   npm run bench:receiver [-- --kills 10 --mib 1024 --rounds 3 --fixture DIR]
 *
 *   --fixture DIR keeps the node's data (the imported WAL) in DIR and reuses
 *   it on the next run, which then skips pgbench -i.
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { formatLsn, importWal, WalReceiver } from '../ts/index.js';
import { createTempDir, lsnOf, pgToolPath, runPgTool, startNodeProcess, startPostgres, startReceivewal, type NodeProcess } from '../__test__/harness/index.js';
import { record } from './results.js';

const { values } = parseArgs({ options: { kills: { type: 'string', default: '10' }, mib: { type: 'string', default: '1024' }, rounds: { type: 'string', default: '3' }, only: { type: 'string' }, fixture: { type: 'string' } } });
const kills = Number(values.kills);
const wantMiB = Number(values.mib);
const rounds = Number(values.rounds);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const log = (s: string) => process.stderr.write(`[receiver] ${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function failover(tmpDir: string): Promise<number[]> {
  const pg = await startPostgres({ walSegSizeMB: 16, conf: { wal_keep_size: '2GB' } });
  const nodes: NodeProcess[] = [];
  try {
    const conninfo = `host=127.0.0.1 port=${pg.port} user=postgres`;
    for (const id of [1, 2, 3]) nodes.push(await startNodeProcess({ dataDir: path.join(tmpDir, `f${id}`), nodeId: id, upstream: conninfo, env: { WALKEEPER_LOG_LEVEL: 'warn' } }));
    await runPgTool('pgbench', ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
    const bench = spawn(pgToolPath('pgbench'), ['-c', '2', '-R', '500', '-T', '3600', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
    const rx = new WalReceiver({ nodes: nodes.map((n) => n.httpUrl) });
    let current: string | null = null;
    let lastChunkFrom: string | null = null;
    let firstByteAt = new Map<string, number>();
    rx.on('connect', (e) => (current = e.nodeId));
    const consuming = (async () => {
      for await (const c of rx) {
        rx.ack(c.endLsn);
        if (current && lastChunkFrom !== current) {
          lastChunkFrom = current;
          firstByteAt.set(current, Date.now());
        }
      }
    })();
    const times: number[] = [];
    for (let i = 0; i < kills; i++) {
      while (!current || lastChunkFrom !== current) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 500 + Math.random() * 500));
      const victim = nodes.find((n) => n.httpUrl === current)!;
      firstByteAt = new Map();
      const t0 = Date.now();
      await victim.kill();
      while (!([...firstByteAt.keys()].some((k) => k !== victim.httpUrl))) await new Promise((r) => setTimeout(r, 2));
      const t1 = [...firstByteAt.entries()].find(([k]) => k !== victim.httpUrl)![1];
      times.push(t1 - t0);
      log(`kill ${i + 1}: first byte from another node after ${t1 - t0} ms`);
      await victim.start();
    }
    await rx.stop();
    await consuming;
    bench.kill('SIGKILL');
    return times;
  } finally {
    await Promise.all(nodes.map((n) => n.kill()));
    await pg.destroy();
  }
}

const SEG = 16 * 1024 * 1024;
const segName = (segno: number) => `00000001${Math.floor(segno / 256).toString(16).toUpperCase().padStart(8, '0')}${(segno % 256).toString(16).toUpperCase().padStart(8, '0')}`;

/** A node data dir holding ≥ --mib of real WAL (pgbench -i), made once per --fixture dir. */
async function fixture(dataDir: string, tmpDir: string): Promise<{ firstLsn: bigint; endLsn: bigint }> {
  const meta = path.join(dataDir, 'bench-fixture.json');
  const known = await readFile(meta, 'utf8').then((t) => JSON.parse(t) as { firstLsn: string; endLsn: string; mib: number }, () => null);
  if (known && known.mib >= wantMiB) {
    log(`reusing the WAL in ${dataDir}`);
    return { firstLsn: BigInt(known.firstLsn), endLsn: BigInt(known.endLsn) };
  }
  await rm(dataDir, { recursive: true, force: true });
  const pg = await startPostgres({ conf: { wal_keep_size: `${wantMiB * 4}MB`, max_wal_size: `${wantMiB * 4}MB`, autovacuum: 'off' } });
  try {
    const [s0] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
    const start0 = lsnOf(s0!.l) - (lsnOf(s0!.l) % BigInt(SEG));
    let scale = Math.max(1, Math.ceil(wantMiB / 12));
    for (;;) {
      log(`pgbench -i -s ${scale}`);
      await runPgTool('pgbench', ['-i', '-q', '-s', String(scale), '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 1_800_000 });
      const [e] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
      if (lsnOf(e!.l) - start0 >= BigInt(wantMiB) * 1048576n) break;
      scale = Math.ceil(scale * 1.5);
    }
    await pg.query('CHECKPOINT');
    await pg.stop();
    const archive = path.join(tmpDir, 'archive');
    await mkdir(archive);
    const names = new Set(await readdir(pg.walDir));
    for (let s = Number(start0 / BigInt(SEG)); names.has(segName(s)); s++) await copyFile(path.join(pg.walDir, segName(s)), path.join(archive, segName(s)));
    const imp = await importWal({ dataDir, stream: 'main', walDir: archive });
    await rm(archive, { recursive: true });
    await writeFile(meta, JSON.stringify({ firstLsn: String(imp.firstLsn), endLsn: String(imp.endLsn), mib: wantMiB }));
    return imp;
  } finally {
    await pg.destroy();
  }
}

async function throughput(tmpDir: string): Promise<{ ours: number[]; theirs: number[]; mib: number }> {
  let node: NodeProcess | null = null;
  try {
    const dataDir = values.fixture ? path.resolve(values.fixture) : path.join(tmpDir, 'tnode');
    const imp = await fixture(dataDir, tmpDir);
    // (a keep size above the fixture's: retention, every 10 s, must not take segments a later round starts from)
    node = await startNodeProcess({ dataDir, nodeId: 1, env: { WALKEEPER_LOG_LEVEL: 'warn' }, extraArgs: ['--wal-keep-size', '64GB'] });
    const firstSeg = Number(imp.firstLsn / BigInt(SEG));
    const start = imp.firstLsn + BigInt(SEG);
    const end = imp.endLsn;
    const mib = Number(end - start) / 1048576;
    const shm = (await readdir('/dev/shm').then(() => true, () => false)) ? '/dev/shm' : tmpDir;
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const who of ['pg_receivewal', 'walkeeper receive'] as const) {
        const dir = path.join(shm, `walkeeper-bench-rx-${process.pid}`);
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir);
        // Both start with the first segment in place, so both stream from the second one.
        await copyFile(path.join(dataDir, 'streams', 'main', segName(firstSeg)), path.join(dir, segName(firstSeg)));
        const t0 = process.hrtime.bigint();
        if (who === 'pg_receivewal') {
          const rw = startReceivewal({ host: '127.0.0.1', port: node.pgPort, dir, endpos: end - 1n, noLoop: true });
          const out = await rw.wait(600_000);
          if (out.code !== 0) throw new Error(out.stderr);
        } else {
          const p = spawn(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'receive', '--nodes', node.httpUrl, '-D', dir, '--endpos', formatLsn(end - 1n)], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          p.stderr.on('data', (b: Buffer) => (err += b));
          const code = await new Promise<number | null>((res) => p.on('exit', res));
          if (code !== 0) throw new Error(err);
        }
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        (who === 'pg_receivewal' ? theirs : ours).push(mib / secs);
        log(`round ${r + 1} ${who}: ${(mib / secs).toFixed(0)} MiB/s`);
        await rm(dir, { recursive: true, force: true });
      }
    }
    return { ours, theirs, mib };
  } finally {
    await node?.stop();
  }
}

async function main() {
  const tmp = await createTempDir('walkeeper-bench-receiver-');
  try {
    const lines: string[] = [];
    if (values.only !== 'throughput') {
      const times = await failover(tmp.path);
      record({ bench: 'receiver', what: `failover: SIGKILL of the connected node → first byte from another (median of ${kills}; PostgreSQL's walreceiver waits 5000 ms)`, unit: 'ms', walkeeper: median(times), postgres: 5000, target: '≤ 1000 ms', better: 'lower' });
      lines.push(`receiver: failover over ${kills} SIGKILLs of the connected node (3 nodes, pgbench -R 500 on the primary): first byte from another node after median ${median(times)} ms, max ${Math.max(...times)} ms (target ≤ 1000 ms median; PostgreSQL's walreceiver waits 5000 ms before retrying)`);
    }
    if (values.only !== 'failover') {
      const tp = await throughput(tmp.path);
      record({ bench: 'receiver', what: 'receive WAL into a directory: walkeeper receive (vs pg_receivewal)', unit: 'MiB/s', walkeeper: median(tp.ours), postgres: median(tp.theirs), target: '≥ 1.0×', better: 'higher', chart: 'throughput' });
      lines.push(`receive throughput, ${tp.mib.toFixed(0)} MiB from one node into tmpfs, median of ${rounds}: pg_receivewal ${median(tp.theirs).toFixed(0)} MiB/s, walkeeper receive ${median(tp.ours).toFixed(0)} MiB/s = ${(median(tp.ours) / median(tp.theirs)).toFixed(2)}× (target ≥ 1.0×)`);
    }
    lines.push(
      `machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
    );
    console.log(lines.join('\n'));
  } finally {
    await tmp.cleanup();
  }
}

main().catch((e) => {
  console.error(`receiver: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
