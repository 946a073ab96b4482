/**
 * bench/sender: serving WAL, PostgreSQL's walsender vs a walkeeper node, in
 * one run, on the same ≥ 1 GiB of real WAL from the page cache:
 *
 *   X = pg_receivewal (writing to tmpfs), X = a discarding consumer
 *   (bench/consumer.ts, the same code for both servers), and 8 discarding
 *   consumers at once; plus the node's peak RSS and its memory per
 *   connection with 8 consumers.
 *
 *   npm run bench:sender [-- --mib 1024 --rounds 3]
 * The node runs as its own process (dist/: run `npm run build` first).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { formatLsn, importWal } from '../ts/index.js';
import { createTempDir, freePort, lsnOf, runPgTool, startPostgres, startReceivewal } from '../__test__/harness/index.js';
import type { ConsumeResult } from './consumer.js';
import { cpuSecondsOf, machineCpuSeconds, memoryKiB, Placement, walsenderPids } from './proc.js';
import { record } from './results.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '1024' }, rounds: { type: 'string', default: '5' }, consumers: { type: 'string', default: '8' } } });
const wantMiB = Number(values.mib);
const rounds = Number(values.rounds);
const fanout = Number(values.consumers);
const SEG = 16 * 1024 * 1024;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const log = (s: string) => process.stderr.write(`[sender] ${s}\n`);
const segName = (segno: number) => `00000001${Math.floor(segno / 256).toString(16).toUpperCase().padStart(8, '0')}${(segno % 256).toString(16).toUpperCase().padStart(8, '0')}`;

interface ConsumerRun {
  /** Resolves once the consumer is connected and waits for go() (gated runs only). */
  ready: Promise<void>;
  go(): void;
  done: Promise<ConsumeResult>;
}

/** bench/consumer.ts in its own process; `gated`: it streams only after go(). */
function startConsumer(port: number, start: bigint, end: bigint, app: string, gated = false): ConsumerRun {
  const p = spawn(process.execPath, ['--import=tsx', path.join(root, 'bench', 'consumer.ts'), '127.0.0.1', String(port), formatLsn(start), formatLsn(end), app], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, BENCH_CONSUMER_GATE: gated ? '1' : '0' },
  });
  let out = '';
  let err = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (onReady = r));
  p.stdout.on('data', (b: Buffer) => {
    out += b;
    if (out.startsWith('ready\n')) onReady();
  });
  p.stderr.on('data', (b: Buffer) => (err += b));
  const done = new Promise<ConsumeResult>((resolve, reject) =>
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1)!)) : reject(new Error(err || `consumer exited ${code}`)))),
  );
  done.catch(() => onReady());
  return { ready, go: () => p.stdin.end('go\n'), done };
}

function runConsumer(port: number, start: bigint, end: bigint, app: string): Promise<ConsumeResult> {
  return startConsumer(port, start, end, app).done;
}


const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Two modes when the rounds split at a gap of more than 25% between
 * neighbouring values (on 2 cores a round is sometimes twice as slow,
 * whichever server): each side's median and count, else null.
 */
function modes(xs: number[]): string | null {
  const v = [...xs].sort((a, b) => a - b);
  let at = -1;
  let widest = 1.25;
  for (let i = 1; i < v.length; i++) {
    if (v[i]! / v[i - 1]! > widest) {
      widest = v[i]! / v[i - 1]!;
      at = i;
    }
  }
  if (at < 0) return null;
  return `${median(v.slice(0, at)).toFixed(0)} (${at}) | ${median(v.slice(at)).toFixed(0)} (${v.length - at})`;
}

async function main() {
  const tmp = await createTempDir('walkeeper-bench-sender-');
  const shm = (await readdir('/dev/shm').then(() => true, () => false)) ? '/dev/shm' : tmp.path;
  const pg = await startPostgres({ conf: { wal_keep_size: `${wantMiB * 4}MB`, max_wal_size: `${wantMiB * 4}MB`, autovacuum: 'off', max_wal_senders: 20 } });
  let nodeProc: ReturnType<typeof spawn> | null = null;
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
    const [f] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
    const end = lsnOf(f!.l);
    // The consumers start at the second segment: pg_receivewal is given the first one, so that it starts there too.
    const firstSeg = Number(start0 / BigInt(SEG));
    const start = start0 + BigInt(SEG);
    const total = Number(end - start);
    log(`${(total / 1048576).toFixed(0)} MiB of WAL from ${formatLsn(start)} to ${formatLsn(end)}`);

    // A node serving the same WAL, imported from a copy of pg_wal (all of it
    // kept: retention, every 10 s, must not take segments a later round starts from).
    const archive = path.join(tmp.path, 'archive');
    await mkdir(archive);
    for (let s = firstSeg; s <= Number((end - 1n) / BigInt(SEG)); s++) await copyFile(path.join(pg.walDir, segName(s)), path.join(archive, segName(s)));
    const dataDir = path.join(tmp.path, 'node');
    await importWal({ dataDir, stream: 'main', walDir: archive });
    await rm(archive, { recursive: true });
    const [nodePort, httpPort] = [await freePort(), await freePort()];
    nodeProc = spawn(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'node', '--data-dir', dataDir, '--listen-pg', `127.0.0.1:${nodePort}`, '--listen-http', `127.0.0.1:${httpPort}`, '--wal-keep-size', '64GB'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, WALKEEPER_LOG_LEVEL: 'warn' },
    });
    for (let i = 0; ; i++) {
      if (await fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.ok, () => false)) break;
      if (i > 200) throw new Error('node did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    const nodePid = nodeProc.pid!;
    const servers = [
      { name: 'PostgreSQL walsender', port: pg.port },
      { name: 'walkeeper node', port: nodePort },
    ];
    // Warm the page cache for both, with one discarded pass each.
    for (const s of servers) await runConsumer(s.port, start, end, 'warmup');

    // pg_receivewal runs on the last CPU, for both servers alike. Left to the
    // scheduler it sometimes shares a core with the server it reads from
    // (loopback wakes the receiver where the sender runs), and a round then
    // takes twice as long whichever server it is: unpinned rounds ranged
    // 338–838 MiB/s against one PostgreSQL, pinned ones 814–1001 but one.
    const receivewalCpus = os.cpus().length >= 2 && existsSync('/usr/bin/taskset') ? String(os.cpus().length - 1) : undefined;
    if (receivewalCpus) log(`pg_receivewal runs on CPU ${receivewalCpus} (taskset)`);
    const res: Record<string, Record<string, number[]>> = {};
    const add = (server: string, what: string, mibs: number) => ((res[what] ??= {})[server] ??= []).push(mibs);
    // The consumers' own CPU per GiB (the same program for both servers): what a client pays to read from each.
    const cpu: Record<string, Record<string, number[]>> = {};
    const addCpu = (server: string, what: string, perGiB: number) => ((cpu[what] ??= {})[server] ??= []).push(perGiB);
    // The server's CPU per GiB, as the machine's busy time less the consumers'.
    const serverCpu: Record<string, Record<string, number[]>> = {};
    const addServerCpu = (server: string, what: string, perGiB: number) => ((serverCpu[what] ??= {})[server] ??= []).push(perGiB);
    const consumersPerGiB = (runs: ConsumeResult[]) => (runs.reduce((a, c) => a + c.cpuSeconds, 0) / runs.reduce((a, c) => a + c.bytes, 0)) * 2 ** 30;
    const how = (runs: ConsumeResult[]) => {
      const bytes = runs.reduce((a, c) => a + c.bytes, 0);
      const reads = runs.reduce((a, c) => a + c.reads, 0);
      const per = (x: number) => ((x / bytes) * 2 ** 30).toFixed(3);
      return `consumer CPU ${per(runs.reduce((a, c) => a + c.userSeconds, 0))} user + ${per(runs.reduce((a, c) => a + c.systemSeconds, 0))} system s/GiB, ${reads} reads of ${(bytes / reads / 1024).toFixed(0)} KiB`;
    };
    for (let r = 0; r < rounds; r++) {
      for (const s of servers) {
        // (connected first, so that its process start-up is not in the machine's busy time)
        const one = startConsumer(s.port, start, end, 'bench', true);
        await one.ready;
        const busy0 = machineCpuSeconds();
        one.go();
        const c = await one.done;
        addServerCpu(s.name, 'discarding consumer', ((machineCpuSeconds() - busy0 - c.cpuSeconds) / c.bytes) * 2 ** 30);
        add(s.name, 'discarding consumer', c.bytes / 1048576 / c.seconds);
        addCpu(s.name, 'discarding consumer', consumersPerGiB([c]));
        // pg_receivewal both ways: pinned (see above) and where the scheduler puts it.
        const rwRates: string[] = [];
        for (const pinned of receivewalCpus ? [true, false] : [false]) {
          const what = pinned ? 'pg_receivewal (tmpfs), pinned' : 'pg_receivewal (tmpfs), unpinned';
          const dir = path.join(shm, `walkeeper-bench-rw-${process.pid}`);
          await rm(dir, { recursive: true, force: true });
          await mkdir(dir);
          await copyFile(path.join(pg.walDir, segName(firstSeg)), path.join(dir, segName(firstSeg)));
          const t0 = process.hrtime.bigint();
          const rw = startReceivewal({ host: '127.0.0.1', port: s.port, dir, endpos: end - 1n, noLoop: true, cpus: pinned ? receivewalCpus : undefined });
          // Its CPU, from /proc while it runs (the last sample before it exits).
          let rwCpu = 0;
          const pid = rw.pid;
          const sampler = setInterval(() => (rwCpu = pid ? Math.max(rwCpu, cpuSecondsOf(pid)) : 0), 10);
          // Where the server ran meanwhile: on the client's CPU, the two take turns on one core.
          const placement = pinned ? new Placement(() => (s.name === 'walkeeper node' ? [nodePid] : walsenderPids())) : null;
          const out = await rw.wait(600_000);
          clearInterval(sampler);
          placement?.stop();
          const secs = Number(process.hrtime.bigint() - t0) / 1e9;
          await rm(dir, { recursive: true, force: true });
          if (out.code !== 0) throw new Error(`pg_receivewal against ${s.name}: ${out.stderr}`);
          add(s.name, what, total / 1048576 / secs);
          addCpu(s.name, what, (rwCpu / total) * 2 ** 30);
          const shared = placement ? `, server on its CPU ${(placement.share(Number(receivewalCpus)) * 100).toFixed(0)}% of the time` : '';
          rwRates.push(`${pinned ? 'pinned' : 'unpinned'} ${(total / 1048576 / secs).toFixed(0)} MiB/s (${((rwCpu / total) * 2 ** 30).toFixed(3)} CPU s/GiB${shared})`);
        }
        log(`round ${r + 1}, ${s.name}: discarding consumer ${(c.bytes / 1048576 / c.seconds).toFixed(0)} MiB/s (${how([c])}), pg_receivewal ${rwRates.join(', ')}`);
      }
    }
    // Fan-out: N consumers at once, each server `rounds` times, alternating;
    // aggregate throughput; the node's memory meanwhile.
    const idleRss = await memoryKiB(nodePid, 'RssAnon');
    let peakDuring = idleRss;
    for (let r = 0; r < rounds; r++) for (const s of servers) {
      const sampler = setInterval(() => {
        if (s.port === nodePort) void memoryKiB(nodePid, 'RssAnon').then((k) => (peakDuring = Math.max(peakDuring, k)));
      }, 20);
      // All consumers connect first (their processes' start-up is not what is
      // measured), then stream at once: aggregate = all bytes / (last end − first start).
      const runs = Array.from({ length: fanout }, (_, i) => startConsumer(s.port, start, end, `fan${i}`, true));
      await Promise.all(runs.map((c) => c.ready));
      const busy0 = machineCpuSeconds();
      for (const c of runs) c.go();
      const all = await Promise.all(runs.map((c) => c.done));
      const busy = machineCpuSeconds() - busy0;
      clearInterval(sampler);
      const secs = (Math.max(...all.map((c) => c.endedAt)) - Math.min(...all.map((c) => c.startedAt))) / 1000;
      const bytes = all.reduce((a, c) => a + c.bytes, 0);
      add(s.name, `${fanout} discarding consumers (aggregate)`, bytes / 1048576 / secs);
      addCpu(s.name, `${fanout} discarding consumers (aggregate)`, consumersPerGiB(all));
      // The server's side: the machine's busy time less the consumers' own (the loopback's softirq included).
      const serverPerGiB = ((busy - all.reduce((a, c) => a + c.cpuSeconds, 0)) / bytes) * 2 ** 30;
      addServerCpu(s.name, `${fanout} discarding consumers (aggregate)`, serverPerGiB);
      log(`fan-out round ${r + 1}, ${s.name}: ${(bytes / 1048576 / secs).toFixed(0)} MiB/s (${how(all)}; server side ${serverPerGiB.toFixed(3)} CPU s/GiB)`);
    }
    const peakRss = await memoryKiB(nodePid, 'VmHWM');

    const lines: string[] = [];
    lines.push(`sender: ${(total / 1048576).toFixed(0)} MiB of real PostgreSQL 15 WAL (pgbench -i), page cache, median of ${rounds} rounds`);
    lines.push(`machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);
    lines.push(`${'consumer'.padEnd(40)} ${'PostgreSQL'.padStart(12)} ${'walkeeper'.padStart(12)}  ratio  consumer CPU s/GiB (PostgreSQL / walkeeper)  server side`);
    for (const [what, by] of Object.entries(res)) {
      const p = median(by['PostgreSQL walsender']!);
      const w = median(by['walkeeper node']!);
      const c = cpu[what];
      const sc = serverCpu[what];
      const cpuCol =
        (c ? `  ${median(c['PostgreSQL walsender']!).toFixed(3)} / ${median(c['walkeeper node']!).toFixed(3)}` : '') +
        (sc ? `                   ${median(sc['PostgreSQL walsender']!).toFixed(3)} / ${median(sc['walkeeper node']!).toFixed(3)}` : '');
      lines.push(`${what.padEnd(40)} ${`${p.toFixed(0)} MiB/s`.padStart(12)} ${`${w.toFixed(0)} MiB/s`.padStart(12)}  ${(w / p).toFixed(2)}×${cpuCol}`);
      const [mp, mw] = [modes(by['PostgreSQL walsender']!), modes(by['walkeeper node']!)];
      if (mp || mw) lines.push(`${''.padEnd(40)}   two modes, MiB/s (rounds): PostgreSQL ${mp ?? 'one'}; walkeeper ${mw ?? 'one'}`);
      record({ bench: 'sender', what: `send WAL to ${what} (vs PostgreSQL's walsender)`, unit: 'MiB/s', walkeeper: w, postgres: p, target: /discarding consumer$/.test(what) ? '≥ 1.2× or ≥ 90% of loopback' : /pg_receivewal/.test(what) ? '≥ 1.1×' : /consumers/.test(what) ? '≥ 1.3×' : undefined, better: 'higher', chart: 'throughput' });
    }
    lines.push(`node peak RSS ${(peakRss / 1024).toFixed(0)} MiB; anonymous (what the node allocated) idle ${(idleRss / 1024).toFixed(0)} MiB, with ${fanout} consumers ${(peakDuring / 1024).toFixed(0)} MiB → ${((peakDuring - idleRss) / fanout).toFixed(0)} KiB per connection`);
    console.log(lines.join('\n'));
  } finally {
    nodeProc?.kill('SIGTERM');
    await pg.destroy();
    await tmp.cleanup();
  }
}

main().catch((e) => {
  console.error(`sender: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
