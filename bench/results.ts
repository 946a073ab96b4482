/**
 * Benchmarks report their figures here as well as printing them: one JSON
 * line per row into the file named by WALKEEPER_BENCH_RESULTS (set by
 * bench/run.ts, which turns them into BENCHMARKS.md). Without the variable
 * nothing is written.
 */
import { appendFileSync } from 'node:fs';

export interface ResultRow {
  bench: string;
  /** What was measured, in words. */
  what: string;
  unit: string;
  walkeeper: number;
  /** The PostgreSQL equivalent in the same run, when there is one. */
  postgres?: number;
  /** What the issue asks for, as text (e.g. "≥ 1.0×"). */
  target?: string;
  /** Higher is better (throughput) or lower (latency)? */
  better: 'higher' | 'lower';
  /** Which chart the row belongs on, if any. */
  chart?: 'throughput' | 'latency';
}

export function record(row: ResultRow): void {
  const file = process.env.WALKEEPER_BENCH_RESULTS;
  if (file) appendFileSync(file, `${JSON.stringify(row)}\n`);
}
