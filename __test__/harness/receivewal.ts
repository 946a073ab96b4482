// Real pg_receivewal as a child process (it is a client: it runs as the
// current user, also as root), and a byte-for-byte comparison of two WAL
// directories (pg_receivewal output, a server's pg_wal, walkeeper output).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';

import { buildConninfo } from './conninfo.js';
import { asServerUser, fmtLsn, pgToolPath, runPgTool, type PgToolResult } from './pgtools.js';
import { chownToServerUserSync, onProcessExit, tmpRoot } from './tmp.js';

export interface ReceivewalConnOptions {
  host: string;
  port: number;
  /** Default 'postgres'. */
  user?: string;
  /** application_name. Default 'pg_receivewal'. */
  applicationName?: string;
  /**
   * Extra conninfo: a raw `key=value ...` string, or a map that is quoted for
   * you, e.g. `{ options: '-c stream=main', sslmode: 'require', password: 'x' }`.
   */
  conninfo?: string | Record<string, string | number | undefined>;
  /** Sets PGPASSWORD for the child. */
  password?: string;
  /** Extra environment for the child (undefined deletes a variable). */
  env?: Record<string, string | undefined>;
  /** Run as the postgres OS user when root (then `dir` is chowned to it). Default false: as the current user. */
  asPostgres?: boolean;
}

export interface ReceivewalOptions extends ReceivewalConnOptions {
  /** Target directory; created if missing. */
  dir: string;
  /** --slot=NAME */
  slot?: string;
  /** Create the slot first (`pg_receivewal --create-slot --if-not-exists --slot=NAME`, which exits), then stream. Needs `slot`. */
  createSlot?: boolean;
  /** --endpos=X/X: stop (exit 0) once WAL up to here was received. */
  endpos?: bigint;
  /** --no-loop: exit on a connection error instead of retrying every 5 s. */
  noLoop?: boolean;
  /** --synchronous: flush after every write and report flush positions. */
  synchronous?: boolean;
  /** --status-interval=SECONDS (0 disables status updates). */
  statusInterval?: number;
  /** More pg_receivewal arguments (e.g. ['--no-sync'], ['--compress=gzip:1']). */
  extraArgs?: string[];
  /** Run it on these CPUs only (`taskset -c`), e.g. to keep a benchmark's client off the server's core. */
  cpus?: string;
}

export interface ReceivewalResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** stderr and stdout interleaved as received (pg_receivewal logs to stderr; --verbose is always on). */
  stderr: string;
}

export interface ReceivewalProcess {
  readonly dir: string;
  /** The streaming command's arguments (without the --create-slot step). */
  readonly args: readonly string[];
  /** Pid of the currently running pg_receivewal (the create-slot step first, with createSlot). */
  readonly pid: number | undefined;
  /** True once the (last) pg_receivewal has exited. */
  readonly exited: boolean;
  /** Output so far (both steps). */
  output(): string;
  /** Resolves when pg_receivewal exits; rejects (leaving it running) when that takes longer than timeoutMs. */
  wait(timeoutMs?: number): Promise<ReceivewalResult>;
  /** Resolves with the first output line matching `re`; rejects on timeout or when the process exits first. */
  waitForOutput(re: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGINT (pg_receivewal finishes its current file and exits 0), SIGKILL after graceMs (default 5000). Idempotent. */
  stop(graceMs?: number): Promise<ReceivewalResult>;
  /** Sorted names in dir (segments, .partial, .history, ...). */
  files(): Promise<string[]>;
}

const live = new Set<ChildProcess>();
onProcessExit(() => {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
});

function connArgs(o: ReceivewalConnOptions): string[] {
  let ci = buildConninfo({
    host: o.host,
    port: o.port,
    user: o.user ?? 'postgres',
    application_name: o.applicationName ?? 'pg_receivewal',
  });
  if (typeof o.conninfo === 'string' && o.conninfo.trim() !== '') ci += ' ' + o.conninfo.trim();
  else if (o.conninfo && typeof o.conninfo === 'object') {
    const extra = buildConninfo(o.conninfo);
    if (extra) ci += ' ' + extra;
  }
  return ['-d', ci, '-w'];
}

function childEnv(o: ReceivewalConnOptions): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (o.password !== undefined) env.PGPASSWORD = o.password;
  for (const [k, v] of Object.entries(o.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

function argv(o: ReceivewalConnOptions & { cpus?: string }, args: string[]): [string, string[]] {
  const tool = pgToolPath('pg_receivewal');
  const [cmd, a] = o.asPostgres ? asServerUser(tool, args) : [tool, args];
  return o.cpus === undefined ? [cmd, a] : ['taskset', ['-c', o.cpus, cmd, ...a]];
}

class Receivewal implements ReceivewalProcess {
  readonly args: readonly string[];
  private out = '';
  private child: ChildProcess | null = null;
  private stopRequested = false;
  private done: Promise<ReceivewalResult>;
  private result: ReceivewalResult | null = null;
  private listeners = new Set<() => void>();
  private stopping: Promise<ReceivewalResult> | null = null;

  constructor(
    readonly dir: string,
    private readonly opts: ReceivewalOptions,
  ) {
    const a = ['-D', dir, ...connArgs(opts), '--verbose'];
    if (opts.slot !== undefined) a.push(`--slot=${opts.slot}`);
    if (opts.endpos !== undefined) a.push(`--endpos=${fmtLsn(opts.endpos)}`);
    if (opts.noLoop) a.push('--no-loop');
    if (opts.synchronous) a.push('--synchronous');
    if (opts.statusInterval !== undefined) a.push(`--status-interval=${opts.statusInterval}`);
    a.push(...(opts.extraArgs ?? []));
    this.args = a;
    this.done = this.run().then((r) => {
      this.result = r;
      this.notify();
      return r;
    });
  }

  private async run(): Promise<ReceivewalResult> {
    if (this.opts.createSlot) {
      if (this.opts.slot === undefined) return { code: null, signal: null, stderr: 'createSlot needs slot' };
      const r = await this.spawnOnce(['-D', this.dir, ...connArgs(this.opts), '--verbose', '--create-slot', '--if-not-exists', `--slot=${this.opts.slot}`]);
      if (r.code !== 0 || this.stopRequested) return r;
    }
    return this.spawnOnce([...this.args]);
  }

  private spawnOnce(args: string[]): Promise<ReceivewalResult> {
    const [cmd, a] = argv(this.opts, args);
    return new Promise((resolve) => {
      const child = spawn(cmd, a, {
        cwd: this.opts.asPostgres ? tmpRoot() : undefined,
        env: childEnv(this.opts),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.child = child;
      live.add(child);
      const onData = (b: Buffer): void => {
        this.out += b.toString('utf8');
        this.notify();
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('error', (e) => {
        live.delete(child);
        this.out += `\n(cannot run ${cmd}: ${e.message})\n`;
        resolve({ code: null, signal: null, stderr: this.out });
      });
      child.once('close', (code, signal) => {
        live.delete(child);
        resolve({ code, signal, stderr: this.out });
      });
    });
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  get pid(): number | undefined {
    return this.result === null ? this.child?.pid : undefined;
  }

  get exited(): boolean {
    return this.result !== null;
  }

  output(): string {
    return this.out;
  }

  wait(timeoutMs = 60_000): Promise<ReceivewalResult> {
    if (this.result) return Promise.resolve(this.result);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`pg_receivewal ${this.args.join(' ')} still running after ${timeoutMs} ms; output:\n${this.out}`));
      }, timeoutMs);
      void this.done.then((r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  }

  waitForOutput(re: RegExp, timeoutMs = 30_000): Promise<string> {
    const find = (): string | undefined => this.out.split('\n').find((l) => re.test(l));
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = (): void => {
        const hit = find();
        if (hit !== undefined) {
          finish();
          resolve(hit);
        } else if (this.result) {
          finish();
          reject(new Error(`pg_receivewal exited (code ${this.result.code}) before printing ${re}; output:\n${this.out}`));
        }
      };
      const finish = (): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      timer = setTimeout(() => {
        finish();
        reject(new Error(`pg_receivewal did not print ${re} within ${timeoutMs} ms; output:\n${this.out}`));
      }, timeoutMs);
      this.listeners.add(check);
      check();
    });
  }

  stop(graceMs = 5000): Promise<ReceivewalResult> {
    if (this.result) return Promise.resolve(this.result);
    this.stopping ??= (async () => {
      this.stopRequested = true;
      const c = this.child;
      c?.kill('SIGINT');
      const timer = setTimeout(() => {
        // whichever step is running now
        this.child?.kill('SIGKILL');
      }, graceMs);
      try {
        return await this.done;
      } finally {
        clearTimeout(timer);
      }
    })();
    return this.stopping;
  }

  async files(): Promise<string[]> {
    return (await readdir(this.dir)).sort();
  }
}

/**
 * Starts `pg_receivewal -D dir -d "host=... port=... user=postgres
 * application_name=pg_receivewal <conninfo>" -w --verbose [options]`.
 * Stopped (SIGKILL) at process exit at the latest; use stop() in teardown.
 */
export function startReceivewal(opts: ReceivewalOptions): ReceivewalProcess {
  mkdirSync(opts.dir, { recursive: true });
  if (opts.asPostgres) chownToServerUserSync(opts.dir);
  return new Receivewal(opts.dir, opts);
}

/** startReceivewal() for an ava test: stopped when the test ends. */
export function withReceivewal(t: { teardown(fn: () => unknown): void }, opts: ReceivewalOptions): ReceivewalProcess {
  const p = startReceivewal(opts);
  t.teardown(() => p.stop());
  return p;
}

export interface SlotOptions extends ReceivewalConnOptions {
  slot: string;
  /** --if-not-exists. Default false. */
  ifNotExists?: boolean;
  /** Default 30000 ms. */
  timeoutMs?: number;
}

/** `pg_receivewal --create-slot --slot=NAME` (creates the physical slot and exits). */
export function createReceivewalSlot(opts: SlotOptions): Promise<PgToolResult> {
  const args = [...connArgs(opts), '--verbose', '--create-slot', `--slot=${opts.slot}`];
  if (opts.ifNotExists) args.push('--if-not-exists');
  return runSlotCommand(opts, args);
}

/** `pg_receivewal --drop-slot --slot=NAME`. */
export function dropReceivewalSlot(opts: SlotOptions): Promise<PgToolResult> {
  return runSlotCommand(opts, [...connArgs(opts), '--verbose', '--drop-slot', `--slot=${opts.slot}`]);
}

function runSlotCommand(opts: SlotOptions, args: string[]): Promise<PgToolResult> {
  const env: Record<string, string | undefined> = { ...(opts.env ?? {}) };
  if (opts.password !== undefined) env.PGPASSWORD = opts.password;
  return runPgTool('pg_receivewal', args, { asPostgres: opts.asPostgres ?? false, env, timeoutMs: opts.timeoutMs ?? 30_000 });
}

// ---------------------------------------------------------------------------
// comparing WAL directories

export interface CompareWalOptions {
  /** Segment size in bytes. Default: the size of the first plain-named segment found (else of any segment). */
  segSize?: number;
  /**
   * Where valid WAL ends: one LSN for every timeline, or per timeline
   * (`{ 1: switchLsn, 2: endLsn }`). Segments starting at or after it are
   * skipped; in the segment holding it only bytes before it are compared, and
   * a `.partial` file's bytes from there on must be zero (see partialTail).
   * Without an end for a timeline, its files are compared whole.
   */
  endLsn?: bigint | Record<number, bigint>;
  /** Skip segments that end at or before this LSN. */
  startLsn?: bigint;
  /** Only these timelines (segments and history files). Default all. */
  timelines?: number[];
  /**
   * Which segments must exist: 'union' (default; a segment in either dir must
   * be in both), 'ours' (those in `ours`; extra ones in `theirs` are fine),
   * 'theirs', or 'intersection' (only those in both are compared).
   */
  segments?: 'union' | 'ours' | 'theirs' | 'intersection';
  /** Bytes after the end LSN in a `.partial` file: 'zeros' (default, must be zero) or 'ignore'. */
  partialTail?: 'zeros' | 'ignore';
  /** Compare `*.history` files too (same selection rule as segments). Default true. */
  history?: boolean;
}

const SEG_RE = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/;
const HIST_RE = /^([0-9A-F]{8})\.history$/;

interface SegEntry {
  file: string;
  partial: boolean;
  tli: number;
  /** The two 8-hex-digit halves of the segment number in the name. */
  hi: bigint;
  lo: bigint;
}

async function scanWalDir(dir: string, problems: string[], label: string): Promise<{ segs: Map<string, SegEntry>; hist: Map<string, number> }> {
  const segs = new Map<string, SegEntry>();
  const hist = new Map<string, number>();
  for (const f of (await readdir(dir)).sort()) {
    const h = HIST_RE.exec(f);
    if (h) {
      hist.set(f, parseInt(h[1]!, 16));
      continue;
    }
    const m = SEG_RE.exec(f);
    if (!m) continue;
    const base = m[1]! + m[2]! + m[3]!;
    const e: SegEntry = {
      file: f,
      partial: m[4] !== undefined,
      tli: parseInt(m[1]!, 16),
      hi: BigInt('0x' + m[2]),
      lo: BigInt('0x' + m[3]),
    };
    const prev = segs.get(base);
    if (prev) {
      problems.push(`${label}: both ${prev.file} and ${f} exist (using the complete one)`);
      if (!prev.partial) continue;
    }
    segs.set(base, e);
  }
  return { segs, hist };
}

function segnoOf(e: SegEntry, segSize: number): bigint {
  return e.hi * (0x1_0000_0000n / BigInt(segSize)) + e.lo;
}

async function inferSegSize(dirs: Array<[string, Map<string, SegEntry>]>): Promise<number | null> {
  for (const wantPartial of [false, true]) {
    for (const [dir, segs] of dirs) {
      for (const e of segs.values()) {
        if (e.partial !== wantPartial) continue;
        return (await stat(path.join(dir, e.file))).size;
      }
    }
  }
  return null;
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

/** Differing byte ranges of a and b in [from, to): up to `max` ranges plus the total count of differing bytes. */
function diffRanges(a: Buffer, b: Buffer, from: number, to: number, max = 3): { ranges: Array<[number, number]>; count: number } {
  const ranges: Array<[number, number]> = [];
  let count = 0;
  let i = from;
  // fast path: compare 64 KiB blocks first
  while (i < to) {
    const blockEnd = Math.min(to, i + 65536);
    if (a.subarray(i, blockEnd).equals(b.subarray(i, blockEnd))) {
      i = blockEnd;
      continue;
    }
    for (let j = i; j < blockEnd; j++) {
      if (a[j] !== b[j]) {
        count++;
        const last = ranges[ranges.length - 1];
        if (last && last[1] === j) last[1] = j + 1;
        else if (ranges.length < max) ranges.push([j, j + 1]);
        // beyond `max` ranges differing bytes are only counted
      }
    }
    i = blockEnd;
  }
  return { ranges, count };
}

function firstNonZero(buf: Buffer, from: number): number {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return i;
  return -1;
}

/**
 * Compares the WAL segment files (and history files) of two directories byte
 * for byte and returns a readable list of differences; empty means identical
 * (within the selection, see CompareWalOptions). Names are matched without
 * their `.partial` suffix, so a `.partial` in one dir is compared with the
 * complete file in the other, up to the end LSN (zeros after it in the
 * `.partial`). Compressed (.gz/.lz4) files are ignored.
 */
export async function compareWalDirs(ours: string, theirs: string, opts: CompareWalOptions = {}): Promise<string[]> {
  const diffs: string[] = [];
  const a = await scanWalDir(ours, diffs, 'ours');
  const b = await scanWalDir(theirs, diffs, 'theirs');
  // (16 MiB only as a placeholder when neither dir holds a segment: then only history files are compared)
  const segSize = opts.segSize ?? (await inferSegSize([[ours, a.segs], [theirs, b.segs]])) ?? 1 << 24;
  if (segSize < 1 << 20 || segSize > 1 << 30 || (segSize & (segSize - 1)) !== 0) {
    return [...diffs, `segment size ${segSize} is not a power of two in [1 MiB, 1 GiB]${opts.segSize === undefined ? ' (inferred from a file size; pass segSize)' : ''}`];
  }
  const seg = BigInt(segSize);
  const mode = opts.segments ?? 'union';
  const tliOk = (tli: number): boolean => opts.timelines === undefined || opts.timelines.includes(tli);
  const endFor = (tli: number): bigint | undefined => {
    const e = opts.endLsn;
    if (e === undefined) return undefined;
    return typeof e === 'bigint' ? e : e[tli];
  };
  const tailMode = opts.partialTail ?? 'zeros';

  const pick = <T>(ma: Map<string, T>, mb: Map<string, T>): string[] => {
    const keys = new Set<string>();
    if (mode === 'union' || mode === 'ours') for (const k of ma.keys()) keys.add(k);
    if (mode === 'union' || mode === 'theirs') for (const k of mb.keys()) keys.add(k);
    if (mode === 'intersection') for (const k of ma.keys()) if (mb.has(k)) keys.add(k);
    return [...keys].sort();
  };

  for (const key of pick(a.segs, b.segs)) {
    const ea = a.segs.get(key);
    const eb = b.segs.get(key);
    const e = (ea ?? eb)!;
    if (!tliOk(e.tli)) continue;
    const segStart = segnoOf(e, segSize) * seg;
    const end = endFor(e.tli);
    if (end !== undefined && segStart >= end) continue;
    if (opts.startLsn !== undefined && segStart + seg <= opts.startLsn) continue;
    if (!ea || !eb) {
      diffs.push(`${key}: missing in ${ea ? 'theirs' : 'ours'} (${ea ? 'ours' : 'theirs'} has ${e.file})`);
      continue;
    }
    const [ba, bb] = await Promise.all([readFile(path.join(ours, ea.file)), readFile(path.join(theirs, eb.file))]);
    let bad = false;
    for (const [label, buf, ent] of [['ours', ba, ea], ['theirs', bb, eb]] as const) {
      if (buf.length !== segSize) {
        diffs.push(`${label} ${ent.file}: size ${buf.length}, expected ${segSize}`);
        bad = true;
      }
    }
    if (bad) continue;
    const limit = end !== undefined && end < segStart + seg ? Number(end - segStart) : segSize;
    const { ranges, count } = diffRanges(ba, bb, 0, limit);
    if (count > 0) {
      const where = ranges.map(([s, t]) => `[${hex(s)}, ${hex(t)}) (LSN ${fmtLsn(segStart + BigInt(s))})`).join(', ');
      const first = ranges[0]![0];
      const hint = ea.partial !== eb.partial && limit === segSize ? ' (one side is .partial: pass endLsn)' : '';
      diffs.push(
        `${key}: ${count} byte(s) differ before ${limit === segSize ? 'the segment end' : `end LSN ${fmtLsn(segStart + BigInt(limit))}`}` +
          ` (ours ${ea.file}, theirs ${eb.file}); first at offset ${hex(first)}: ours ${hex(ba[first]!)} theirs ${hex(bb[first]!)}; ranges ${where}${hint}`,
      );
    }
    if (tailMode === 'zeros' && limit < segSize) {
      for (const [label, buf, ent] of [['ours', ba, ea], ['theirs', bb, eb]] as const) {
        if (!ent.partial) continue;
        const nz = firstNonZero(buf, limit);
        if (nz >= 0) diffs.push(`${label} ${ent.file}: non-zero bytes after the end LSN ${fmtLsn(segStart + BigInt(limit))}, first at offset ${hex(nz)} (LSN ${fmtLsn(segStart + BigInt(nz))})`);
      }
    }
  }

  if (opts.history ?? true) {
    for (const name of pick(a.hist, b.hist)) {
      const tli = (a.hist.get(name) ?? b.hist.get(name))!;
      if (!tliOk(tli)) continue;
      const ha = a.hist.has(name);
      const hb = b.hist.has(name);
      if (!ha || !hb) {
        diffs.push(`${name}: missing in ${ha ? 'theirs' : 'ours'}`);
        continue;
      }
      const [ta, tb] = await Promise.all([readFile(path.join(ours, name)), readFile(path.join(theirs, name))]);
      if (!ta.equals(tb)) diffs.push(`${name}: differs: ours ${JSON.stringify(ta.toString('utf8'))} theirs ${JSON.stringify(tb.toString('utf8'))}`);
    }
  }
  return diffs;
}

/** Reads `len` bytes at `offset` of a file (for ad-hoc checks in tests). */
export async function readBytes(file: string, offset: number, len: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}
