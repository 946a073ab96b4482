/**
 * `npm run bench`: every benchmark under bench/, then BENCHMARKS.md — one
 * table (what was measured, walkeeper, the PostgreSQL equivalent in the same
 * run, the ratio, the target, and the physical limit where one applies),
 * a PNG chart of throughput and one of commit latency (gnuplot), and the
 * machine it ran on.
 *
 * Physical limits, measured in the same run: loopback TCP throughput
 * (iperf3), page-cache read throughput (fs.readSync in bench/read-frame),
 * fsync latency (pg_test_fsync).
 *
 *   npm run bench [-- --size quick|full]    (quick: smaller data, fewer rounds)
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import type { ResultRow } from './results.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { size: { type: 'string', default: 'full' } } });
if (values.size !== 'quick' && values.size !== 'full') {
  process.stderr.write(`bench: --size must be quick or full, not ${JSON.stringify(values.size)}\n`);
  process.exit(2);
}
const quick = values.size === 'quick';
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);

const BENCHES: [string, string[]][] = [
  ['read-frame', quick ? ['--mib', '128', '--rounds', '3'] : []],
  ['sender', quick ? ['--mib', '256', '--rounds', '3'] : []],
  ['ingest', quick ? ['--time', '8', '--rounds', '1'] : []],
  ['receiver', quick ? ['--mib', '1024', '--rounds', '3', '--kills', '5'] : []],
  ['cluster', quick ? ['--commits', '1000', '--seconds', '5'] : []],
  ['streams', quick ? ['--streams', '200', '--idle', '20', '--primaries', '5', '--pgbench-seconds', '10'] : []],
  ['offload', quick ? ['--scale', '20'] : []],
  ['restore', quick ? ['--scale', '20', '--rounds', '1'] : []],
];

function need(tool: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
    process.stderr.write(`bench: ${tool} is needed for the report (Debian/Ubuntu: apt-get install ${pkg})\n`);
    process.exit(1);
  }
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<number | null> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] });
    p.on('exit', (c) => resolve(c));
  });
}

function loopbackMiBs(): number | null {
  const port = 15000 + Math.floor(Math.random() * 17000);
  const server = spawn('iperf3', ['-s', '-1', '-p', String(port), '-B', '127.0.0.1'], { stdio: 'ignore' });
  spawnSync('sleep', ['0.5']);
  const r = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', quick ? '3' : '8', '-J'], { encoding: 'utf8' });
  server.kill();
  try {
    const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
    return j.end.sum_received.bits_per_second / 8 / 1048576;
  } catch {
    return null;
  }
}

function fsyncMicros(bindir: string, dir: string): number | null {
  const file = path.join(dir, 'fsync-test');
  const r = spawnSync(path.join(bindir, 'pg_test_fsync'), ['-s', quick ? '1' : '3', '-f', file], { encoding: 'utf8' });
  const m = /fdatasync\s+[\d.]+ ops\/sec\s+(\d+) usecs\/op/.exec(r.stdout);
  return m ? Number(m[1]) : null;
}

function pgBindir(): string {
  const env = process.env.WALKEEPER_PG_BINDIR;
  if (env) return env;
  const r = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '/usr/lib/postgresql/15/bin';
}

const fmt = (n: number): string => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));

async function main(): Promise<void> {
  need('gnuplot', 'gnuplot-nox');
  need('iperf3', 'iperf3');
  const work = mkdtempSync(path.join(os.tmpdir(), 'walkeeper-bench-'));
  const results = path.join(work, 'results.jsonl');
  writeFileSync(results, '');
  const env = { ...process.env, WALKEEPER_BENCH_RESULTS: results };
  const failed: string[] = [];
  try {
    const t0 = Date.now();
    for (const [name, args] of BENCHES) {
      log(`${name} ${args.join(' ')}`);
      const code = await run(process.execPath, ['--import=tsx', path.join(root, 'bench', `${name}.ts`), ...args], env);
      if (code !== 0) failed.push(name);
    }
    log('physical limits: iperf3 on loopback, pg_test_fsync');
    const loop = loopbackMiBs();
    const fsyncUs = fsyncMicros(pgBindir(), work);
    const rows = readFileSync(results, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as ResultRow);
    const pageCache = rows.find((r) => r.bench === 'read-frame')?.postgres;
    const limitFor = (r: ResultRow): string => {
      if (r.unit === 'MiB/s' && loop) return `loopback TCP ${fmt(loop)} MiB/s`;
      if (r.bench === 'read-frame' && pageCache) return `page cache ${fmt(pageCache)} GB/s (fs.readSync)`;
      if (r.chart === 'latency' && fsyncUs) return `one fdatasync ${(fsyncUs / 1000).toFixed(2)} ms`;
      if (r.bench === 'ingest' && fsyncUs) return `fdatasync ${fsyncUs} µs/op`;
      return '';
    };
    const machine = `${os.cpus()[0]?.model ?? 'unknown CPU'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.type()} ${os.release()}, Node ${process.version}, ${spawnSync(path.join(pgBindir(), 'postgres'), ['--version'], { encoding: 'utf8' }).stdout.trim()}`;
    const table = [
      '| measured | walkeeper | PostgreSQL (same run) | ratio | target | physical limit |',
      '|---|---|---|---|---|---|',
      ...rows.map((r) => {
        const ratio = r.postgres === undefined ? '' : r.better === 'higher' ? `${(r.walkeeper / r.postgres).toFixed(2)}×` : `${(r.walkeeper - r.postgres >= 0 ? '+' : '')}${fmt(r.walkeeper - r.postgres)} ${r.unit}`;
        return `| ${r.what} | ${fmt(r.walkeeper)} ${r.unit} | ${r.postgres === undefined ? '' : `${fmt(r.postgres)} ${r.unit}`} | ${ratio} | ${r.target ?? ''} | ${limitFor(r)} |`;
      }),
    ];

    // Charts: throughput rows as grouped bars (with the loopback limit), latency rows likewise.
    const chart = (kind: 'throughput' | 'latency', file: string, ylabel: string, limit: number | null) => {
      const rs = rows.filter((r) => r.chart === kind);
      if (rs.length === 0) return false;
      const dat = path.join(work, `${kind}.dat`);
      const label = (w: string) => w.replace(/ \(vs.*$/, '').replace(/^commit → commit record at a consumer, /, '').replace(/"/g, "'").slice(0, 48);
      writeFileSync(dat, rs.map((r, i) => `${i} "${label(r.what)}" ${r.walkeeper} ${r.postgres ?? 0}`).join('\n') + '\n');
      const top = Math.max(...rs.map((r) => Math.max(r.walkeeper, r.postgres ?? 0)), limit ?? 0) * 1.15;
      const script = [
        'set terminal pngcairo size 1200,600 font "sans,10"',
        `set output "${path.join(root, file)}"`,
        'set style data histograms',
        'set style histogram clustered gap 1',
        'set style fill solid 0.8 border -1',
        'set key top right opaque box',
        'set grid ytics',
        `set ylabel "${ylabel}"`,
        `set yrange [0:${top}]`,
        'set xtics rotate by -15 scale 0',
        'set bmargin 8',
        limit ? `set arrow from graph 0, first ${limit} to graph 1, first ${limit} nohead lc rgb "#888888" dt 2` : '',
        limit ? `set label "loopback TCP ${fmt(limit)} MiB/s" at graph 0.01, first ${limit} offset 0,0.7 tc rgb "#666666"` : '',
        `plot "${dat}" using 3:xtic(2) title "walkeeper" lc rgb "#2b6cb0", "" using 4 title "PostgreSQL (same run)" lc rgb "#c05621"`,
      ].join('\n');
      const r = spawnSync('gnuplot', [], { input: script, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`gnuplot failed: ${r.stderr}`);
      return true;
    };
    const haveTp = chart('throughput', 'bench-throughput.png', 'MiB/s', loop);
    const haveLat = chart('latency', 'bench-latency.png', 'ms', null);

    // A full run adds its line to the record of every full run (bench/runs.md, committed).
    const runsFile = path.join(root, 'bench', 'runs.md');
    if (!quick && failed.length === 0) {
      const find = (re: RegExp) => rows.find((r) => re.test(r.what));
      const ratio = (re: RegExp) => {
        const r = find(re);
        return r?.postgres ? `${(r.walkeeper / r.postgres).toFixed(2)}×` : '';
      };
      const diff = (re: RegExp) => {
        const r = find(re);
        return r?.postgres !== undefined ? `${r.walkeeper - r.postgres >= 0 ? '+' : ''}${(r.walkeeper - r.postgres).toFixed(2)} ${r.unit}` : '';
      };
      const cpuName = (os.cpus()[0]?.model ?? 'unknown CPU').replace(/\(R\)|\(TM\)|\bProcessor\b|\bCPU\b|@.*$/g, '').replace(/\s+/g, ' ').trim();
      const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim();
      const cells = [
        new Date().toISOString().slice(0, 10),
        `${cpuName} × ${os.cpus().length}`,
        commit,
        ratio(/^send WAL to discarding consumer/),
        ratio(/^send WAL to pg_receivewal \(tmpfs\)(, pinned)? \(/),
        ratio(/^send WAL to pg_receivewal \(tmpfs\), unpinned/),
        ratio(/^send WAL to \d+ discarding consumers/),
        ratio(/^pgbench TPS with one node/),
        ratio(/^pgbench TPS with ANY 2/),
        diff(/^commit → commit record at a consumer, p99/),
        diff(/^commit → commit record at a consumer, median/),
        ratio(/^WAL offload to S3/),
        ratio(/^archive recovery rate.*vs pgBackRest/),
      ];
      writeFileSync(runsFile, `${readFileSync(runsFile, 'utf8').trimEnd()}\n| ${cells.join(' | ')} |\n`);
    }

    const md = [
      '# walkeeper benchmarks',
      '',
      `\`npm run bench${quick ? ' -- --size quick' : ''}\` on ${new Date().toISOString().slice(0, 10)}, ${Math.round((Date.now() - t0) / 60000)} min. Machine: ${machine}.`,
      '',
      'Each row pits walkeeper against the PostgreSQL equivalent measured in the same run; the ratio is walkeeper / PostgreSQL for throughput and the difference for latency. Figures vary from run to run on a small machine (2 cores here are shared by PostgreSQL, the nodes and the clients); the benchmarks print their raw rounds.',
      '',
      ...table,
      '',
      `Physical limits in this run: loopback TCP ${loop ? `${fmt(loop)} MiB/s (iperf3)` : 'not measured'}; page-cache reads ${pageCache ? `${fmt(pageCache)} GB/s (fs.readSync, 128 KiB)` : 'not measured'}; fdatasync ${fsyncUs ? `${fsyncUs} µs/op (pg_test_fsync)` : 'not measured'}.`,
      '',
      ...(haveTp ? ['![throughput](bench-throughput.png)', ''] : []),
      ...(haveLat ? ['![commit latency](bench-latency.png)', ''] : []),
      ...(failed.length ? [`Benchmarks that failed in this run: ${failed.join(', ')}.`, ''] : []),
      readFileSync(runsFile, 'utf8'),
      readFileSync(path.join(root, 'bench', 'profile-pass.md'), 'utf8'),
    ].join('\n');
    writeFileSync(path.join(root, 'BENCHMARKS.md'), md);
    log(`wrote BENCHMARKS.md${haveTp ? ', bench-throughput.png' : ''}${haveLat ? ', bench-latency.png' : ''}`);
    if (failed.length) {
      process.stderr.write(`bench: ${failed.join(', ')} failed\n`);
      process.exitCode = 1;
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(1);
});
