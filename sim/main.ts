#!/usr/bin/env node
/**
 * npm run sim -- --seeds N [--seed S] [--virtual-minutes M] [--jobs J]
 *
 * Runs N seeded simulations (seeds S … S+N−1, S = 1 by default) of M
 * virtual minutes each (default 1) on J processes (default: one per core,
 * at most 2 here), and prints one line per failing seed with its fault
 * schedule and last events, then `N seeds, F failed`. `--seed S` alone
 * replays that one seed and prints its schedule and digest: the same seed
 * gives the same run, bit for bit. Exits 1 when a seed failed, 2 on bad
 * arguments.
 */
import { fork } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';

import { describeFault, runSeed, type RunResult } from './run.js';

interface Args {
  seeds: number | null;
  seed: number | null;
  minutes: number;
  jobs: number;
  worker: boolean;
}

function usage(msg: string): never {
  process.stderr.write(`walkeeper sim: ${msg} (usage: npm run sim -- --seeds N [--seed S] [--virtual-minutes M] [--jobs J])\n`);
  process.exit(2);
}

function parse(argv: string[]): Args {
  const a: Args = { seeds: null, seed: null, minutes: 1, jobs: Math.max(1, Math.min(2, cpus().length)), worker: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    if (k === '--worker') {
      a.worker = true;
      continue;
    }
    const v = argv[i + 1];
    const int = (what: string, min: number): number => {
      if (v === undefined || !/^\d+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) usage(`${what} takes a whole number ≥ ${min}, not ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
      i++;
      return Number(v);
    };
    if (k === '--seeds') a.seeds = int('--seeds', 1);
    else if (k === '--seed') a.seed = int('--seed', 0);
    else if (k === '--jobs') a.jobs = int('--jobs', 1);
    else if (k === '--virtual-minutes') {
      if (v === undefined || !/^\d+(\.\d+)?$/.test(v) || Number(v) < 1) usage(`--virtual-minutes takes a number of minutes ≥ 1, not ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
      a.minutes = Number(v);
      i++;
    } else usage(`unknown argument ${JSON.stringify(k)}`);
  }
  if (a.seed !== null && a.seed > 0xffffffff) usage('--seed is at most 4294967295');
  return a;
}

function report(r: RunResult, virtualMs: number): string {
  const lines = [`seed ${r.seed} FAILED: ${r.violation}`, '  fault schedule:'];
  for (const f of r.schedule) lines.push(`    ${describeFault(f)}`);
  lines.push('  last events:');
  for (const e of r.recent.slice(-30)) lines.push(`    ${e}`);
  lines.push(`  replay: npm run sim -- --seed ${r.seed}${virtualMs !== 60_000 ? ` --virtual-minutes ${virtualMs / 60_000}` : ''}`);
  return lines.join('\n');
}

async function worker(first: number, count: number, stride: number, offset: number, virtualMs: number): Promise<void> {
  for (let i = offset; i < count; i += stride) {
    const r = await runSeed({ seed: first + i, virtualMs });
    process.send!({ seed: r.seed, ok: r.ok, events: r.events, text: r.ok ? null : report(r, virtualMs) });
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const args = parse(argv.filter((x) => !x.startsWith('--worker-')));
  const virtualMs = Math.round(args.minutes * 60_000);
  if (args.worker) {
    const get = (k: string): number => Number(argv.find((x) => x.startsWith(`--worker-${k}=`))!.split('=')[1]);
    await worker(args.seed ?? 1, args.seeds ?? 1, get('stride'), get('offset'), virtualMs);
    return;
  }
  if (args.seeds === null) {
    if (args.seed === null) usage('say how many seeds (--seeds N), or which one to replay (--seed S)');
    const t0 = performance.now();
    const r = await runSeed({ seed: args.seed, virtualMs });
    process.stdout.write(`seed ${r.seed}: ${r.ok ? 'ok' : 'FAILED'}, ${r.events} events in ${virtualMs / 1000} virtual s, ${Math.round(performance.now() - t0)} ms\n`);
    process.stdout.write(`  digest ${r.digest}\n`);
    process.stdout.write(`  WAL written ${r.stats.walBytes} bytes, received ${r.stats.delivered}; ${r.stats.crashes} crashes, ${r.stats.switches} receiver switches; object storage ${r.stats.offload ? 'on' : 'off'}\n`);
    if (!r.ok) process.stdout.write(`${report(r, virtualMs)}\n`);
    else {
      process.stdout.write('  fault schedule:\n');
      for (const f of r.schedule) process.stdout.write(`    ${describeFault(f)}\n`);
    }
    process.exit(r.ok ? 0 : 1);
  }
  const first = args.seed ?? 1;
  const n = args.seeds;
  const jobs = Math.min(args.jobs, n);
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
  process.stdout.write(`simulating seeds ${first}…${first + n - 1}, ${virtualMs / 1000} virtual s each, on ${jobs} process${jobs > 1 ? 'es' : ''} (${cpu})\n`);
  const t0 = performance.now();
  let done = 0;
  let events = 0;
  const failed: number[] = [];
  let lastPrint = t0;
  const self = fileURLToPath(import.meta.url);
  await Promise.all(
    Array.from({ length: jobs }, (_, k) =>
      new Promise<void>((resolve, reject) => {
        const child = fork(self, [...argv.filter((x) => !x.startsWith('--worker')), '--seed', String(first), '--worker', `--worker-stride=${jobs}`, `--worker-offset=${k}`], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        child.on('message', (m: { seed: number; ok: boolean; events: number; text: string | null }) => {
          done++;
          events += m.events;
          if (!m.ok) {
            failed.push(m.seed);
            process.stdout.write(`${m.text}\n`);
          }
          const now = performance.now();
          if (now - lastPrint > 10_000) {
            lastPrint = now;
            process.stdout.write(`  ${done}/${n} seeds, ${failed.length} failed, ${((now - t0) / 1000).toFixed(0)} s\n`);
          }
        });
        child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`a simulation process exited with ${code}`))));
      }),
    ),
  );
  const secs = (performance.now() - t0) / 1000;
  if (failed.length > 0) process.stdout.write(`failing seeds: ${failed.sort((a, b) => a - b).join(' ')}\n`);
  process.stdout.write(`${n} seeds, ${failed.length} failed, ${secs.toFixed(1)} s (${((secs * 1000 * jobs) / n).toFixed(1)} ms per seed per process, ${Math.round(events / n)} events per seed; ${virtualMs / 1000} virtual s each; ${cpu})\n`);
  process.exit(failed.length > 0 || done !== n ? 1 : 0);
}

main().catch((err: Error) => {
  process.stderr.write(`walkeeper sim: ${err.message}\n`);
  process.exit(1);
});
