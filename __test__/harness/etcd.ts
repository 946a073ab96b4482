// A real etcd v3 server (Debian's etcd-server) on loopback, on ports chosen
// at run time, with its data in a temp dir. stop() and start() keep both,
// so a test can take etcd away and bring it back.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';

import { freePort } from './ports.js';
import { onProcessExit } from './tmp.js';

const live = new Set<ChildProcess>();
onProcessExit(() => {
  for (const p of live) p.kill('SIGKILL');
});

export function etcdAvailable(): boolean {
  return spawnSync('etcd', ['--version'], { stdio: 'ignore' }).status === 0;
}

export class EtcdServer {
  clientPort = 0;
  peerPort = 0;
  output = '';
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(readonly dataDir: string) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  async start(): Promise<void> {
    if (this.child) throw new Error('etcd already running');
    this.clientPort ||= await freePort();
    this.peerPort ||= await freePort();
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const child = spawn(
      'etcd',
      [
        '--name', 'walkeeper-test',
        '--data-dir', path.join(this.dataDir, 'etcd'),
        '--listen-client-urls', this.endpoint,
        '--advertise-client-urls', this.endpoint,
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `walkeeper-test=${peer}`,
        '--log-level', 'warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    live.add(child);
    this.child = child;
    child.stdout!.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (this.output += b.toString()));
    this.exited = new Promise((resolve) =>
      child.on('exit', () => {
        live.delete(child);
        if (this.child === child) this.child = null;
        resolve();
      }),
    );
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (!this.child) throw new Error(`etcd exited during start-up:\n${this.output.slice(-2000)}`);
      const ok = await fetch(`${this.endpoint}/health`).then(
        async (r) => r.ok && ((await r.json()) as { health?: string }).health === 'true',
        () => false,
      );
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`etcd did not start:\n${this.output.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    await this.exited;
  }
}

export async function startEtcd(dataDir: string): Promise<EtcdServer> {
  const e = new EtcdServer(dataDir);
  await e.start();
  return e;
}
