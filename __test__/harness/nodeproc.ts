// A walkeeper node as its own process (the built CLI), for tests that kill
// it with SIGKILL and restart it on the same data directory and ports.

import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort } from './ports.js';
import { onProcessExit } from './tmp.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const live = new Set<ChildProcess>();
onProcessExit(() => {
  for (const p of live) p.kill('SIGKILL');
});

export interface NodeProcessOptions {
  dataDir: string;
  nodeId?: number;
  upstream?: string;
  stream?: string;
  extraArgs?: string[];
  env?: Record<string, string>;
  /** Options for node itself (e.g. --cpu-prof), before the script. */
  nodeArgs?: string[];
}

export interface StreamStatus {
  flush_lsn: string;
  commit_lsn: string;
  tli: number;
  upstream: { state: string; received_lsn: string | null; last_error: string | null; lag_bytes: number | null } | null;
  replicas: unknown[];
  [k: string]: unknown;
}

export class NodeProcess {
  pgPort = 0;
  httpPort = 0;
  private child: ChildProcess | null = null;
  private exited: Promise<number | null> = Promise.resolve(null);
  output = '';

  constructor(readonly opts: NodeProcessOptions) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  conninfo(extra = ''): string {
    return `host=127.0.0.1 port=${this.pgPort} user=postgres ${extra}`.trim();
  }

  /** Starts (or restarts, on the same ports) and waits until HTTP answers. */
  async start(): Promise<void> {
    if (this.child) throw new Error('already running');
    this.pgPort ||= await freePort();
    this.httpPort ||= await freePort();
    const o = this.opts;
    const args = [path.join(root, 'dist', 'cli', 'main.js'), 'node', '--data-dir', o.dataDir, '--listen-pg', `127.0.0.1:${this.pgPort}`, '--listen-http', `127.0.0.1:${this.httpPort}`, '--node-id', String(o.nodeId ?? 1)];
    if (o.upstream) args.push('--upstream', o.upstream);
    if (o.stream) args.push('--stream', o.stream);
    args.push(...(o.extraArgs ?? []));
    const child = spawn(process.execPath, [...(o.nodeArgs ?? []), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
    live.add(child);
    this.child = child;
    child.stdout!.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (this.output += b.toString()));
    this.exited = new Promise((resolve) =>
      child.on('exit', (code) => {
        live.delete(child);
        if (this.child === child) this.child = null;
        resolve(code);
      }),
    );
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (!this.child) throw new Error(`node exited during start-up:\n${this.output.slice(-3000)}`);
      if (await fetch(`${this.httpUrl}/healthz`).then((r) => r.ok, () => false)) return;
      if (Date.now() > deadline) throw new Error(`node did not start:\n${this.output.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGKILL: a crash. */
  async kill(): Promise<void> {
    if (!this.child) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM and wait: a clean stop. Returns the exit code. */
  async stop(): Promise<number | null> {
    if (!this.child) return null;
    this.child.kill('SIGTERM');
    return this.exited;
  }

  async status(stream = 'main'): Promise<StreamStatus | null> {
    const r = await fetch(`${this.httpUrl}/v1/streams/${stream}`).catch(() => null);
    if (!r || !r.ok) return null;
    return (await r.json()) as StreamStatus;
  }
}

export async function startNodeProcess(opts: NodeProcessOptions): Promise<NodeProcess> {
  const n = new NodeProcess(opts);
  await n.start();
  return n;
}
