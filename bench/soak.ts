/**
 * `npm run soak -- --minutes N` (default 10; not part of npm test): a
 * primary under a committing load, three nodes (--peers, ANY 2 synchronous),
 * a real standby streaming through node 1, and two `walkeeper receive`
 * directories, under a fault schedule. At the end it checks and prints:
 *   - commits the load saw acknowledged that are missing on the standby (must be 0),
 *   - WAL gaps or differences in each receiver directory vs the primary (must be 0),
 *   - node exits other than the injected kills (must be 0),
 *   - peak RSS per node.
 *
 * Faults, one every 10–20 s at random: SIGKILL and restart of a node; a
 * primary restart; the fault proxy between a node and the primary stalling
 * the link for 5 s, or cutting it (TCP reset); node 3's disk (a 48 MiB
 * tmpfs, mounted as root or through sudo) filled up for 5 s and freed.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import {
  basebackup,
  compareWalDirs,
  createTempDir,
  freePort,
  lsnOf,
  NodeProcess,
  startPostgres,
  startStandby,
  startTcpProxy,
  isRoot,
  type TcpProxy,
} from '../__test__/harness/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { minutes: { type: 'string', default: '10' }, seed: { type: 'string' } } });
const minutes = Number(values.minutes);
if (!(minutes > 0)) {
  process.stderr.write('soak: --minutes must be a positive number\n');
  process.exit(2);
}
let seed = Number(values.seed ?? Date.now() % 100000);
// (the high bits: the low bits of this LCG cycle quickly)
const rand = (n: number) => Math.floor((seed = (seed * 1103515245 + 12345) % 2147483648) / 65536) % n;
const log = (s: string) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${s}\n`);

async function main(): Promise<number> {
  const tmp = await createTempDir('walkeeper-soak-');
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '2GB', max_wal_senders: 20, synchronous_standby_names: 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)' } });
  const nodes: NodeProcess[] = [];
  const receivers: { dir: string; proc: ChildProcess }[] = [];
  let standby: Awaited<ReturnType<typeof startStandby>> | null = null;
  const injected = new Set<NodeProcess>();
  const unexpected: string[] = [];
  const peakRss = new Map<number, number>();
  const cleanups: (() => void)[] = [];
  let proxiesRef: TcpProxy[] = [];
  try {
    // Each node reaches the primary through its own fault proxy.
    const proxies: TcpProxy[] = [];
    for (let i = 0; i < 3; i++) proxies.push(await startTcpProxy({ host: '127.0.0.1', port: pg.port }));
    // Node 3's data on a small tmpfs, so that its disk can fill up.
    const small = path.join(tmp.path, 'small');
    mkdirSync(small);
    const priv = (cmd: string, args: string[]) => (isRoot() ? execFileSync(cmd, args, { stdio: 'ignore' }) : execFileSync('sudo', ['-n', cmd, ...args], { stdio: 'ignore' }));
    let mounted = false;
    try {
      priv('mount', ['-t', 'tmpfs', '-o', `size=48m,uid=${process.getuid!()},gid=${process.getgid!()},mode=0700`, 'tmpfs', small]);
      mounted = true;
    } catch {
      log('cannot mount a tmpfs (needs root or passwordless sudo): no disk-full faults in this run');
    }
    cleanups.push(() => {
      if (mounted) priv('umount', ['-l', small]);
      for (const p of proxies) void p.close();
    });
    for (let i = 1; i <= 3; i++) {
      const dataDir = i === 3 && mounted ? path.join(small, 'n3') : path.join(tmp.path, `n${i}`);
      const n = new NodeProcess({ dataDir, nodeId: i, upstream: `host=127.0.0.1 port=${proxies[i - 1]!.port} user=postgres`, env: { WALKEEPER_LOG_LEVEL: process.env.WALKEEPER_LOG_LEVEL ?? 'warn' } });
      n.pgPort = await freePort();
      n.httpPort = await freePort();
      nodes.push(n);
    }
    proxiesRef = proxies;
    for (const n of nodes) n.opts.extraArgs = ['--wal-keep-size', '8MB', '--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(',')];
    await Promise.all(nodes.map((n) => n.start()));
    const watchExit = (n: NodeProcess) => {
      const timer = setInterval(() => {
        if (!n.running && !injected.has(n)) {
          unexpected.push(`node ${n.opts.nodeId} exited unasked: ${n.output.slice(-500)}`);
          injected.add(n);
        }
        if (n.pid) {
          try {
            const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${n.pid}/status`, 'utf8'))?.[1] ?? 0);
            peakRss.set(n.opts.nodeId!, Math.max(peakRss.get(n.opts.nodeId!) ?? 0, kb));
          } catch {
            // gone
          }
        }
      }, 200);
      timer.unref();
    };
    nodes.forEach(watchExit);

    await pg.query('CREATE TABLE soak (id bigint PRIMARY KEY, at timestamptz DEFAULT now(), pad text)');
    const bb = await basebackup(pg);
    standby = await startStandby(bb, { primaryConninfo: `host=127.0.0.1 port=${nodes[0]!.pgPort} user=postgres application_name=soak_standby` });
    for (const name of ['a', 'b']) {
      const dir = path.join(tmp.path, `received-${name}`);
      const proc = spawn(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'receive', '--nodes', nodes.map((n) => n.httpUrl).join(','), '-D', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
      proc.stderr!.on('data', (b: Buffer) => {
        if (process.env.SOAK_LOG_DIR) appendFileSync(path.join(process.env.SOAK_LOG_DIR, `receiver-${name}.log`), b);
        b.toString().split('\n').filter((l) => /streaming from/.test(l)).forEach((l) => log(`receiver ${name}: ${l.replace(/^walkeeper receive: /, '')}`));
      });
      receivers.push({ dir, proc });
    }

    // The load: two sessions committing numbered rows; an id is "acknowledged" once COMMIT returned.
    const acked: number[] = [];
    let loadOn = true;
    let nextId = 1;
    const worker = async () => {
      const { default: pgmod } = await import('pg');
      while (loadOn) {
        const c = new pgmod.Client({ host: '127.0.0.1', port: pg.port, user: 'postgres', database: 'postgres' });
        c.on('error', () => undefined); // a primary restart: reconnect below
        try {
          await c.connect();
          while (loadOn) {
            const id = nextId++;
            await c.query('INSERT INTO soak (id, pad) VALUES ($1, repeat($2, 20))', [id, String(id)]);
            acked.push(id);
          }
        } catch {
          await new Promise((r) => setTimeout(r, 200)); // primary restarting
        } finally {
          await c.end().catch(() => undefined);
        }
      }
    };
    const load = Promise.all([worker(), worker()]);

    const end = Date.now() + minutes * 60_000;
    let faults = 0;
    while (Date.now() < end - 15_000) {
      await new Promise((r) => setTimeout(r, 10_000 + rand(10_000)));
      const kind = rand(8);
      faults++;
      if (kind === 0) {
        log(`fault ${faults}: restart the primary`);
        await pg.stop('fast');
        await new Promise((r) => setTimeout(r, 1000));
        await pg.start();
      } else if (kind === 1 || kind === 2) {
        const i = rand(3);
        log(`fault ${faults}: stall node ${i + 1}'s link to the primary for 5 s`);
        proxiesRef[i]!.stall();
        await new Promise((r) => setTimeout(r, 5000));
        proxiesRef[i]!.resume();
      } else if (kind === 3) {
        const i = rand(3);
        log(`fault ${faults}: cut node ${i + 1}'s link to the primary (TCP reset)`);
        proxiesRef[i]!.cut('reset');
      } else if (kind === 4 && mounted) {
        const st = statfsSync(small);
        const free = Number(st.bavail) * Number(st.bsize);
        log(`fault ${faults}: fill node 3's disk (${(free / 1048576).toFixed(0)} MiB free) for 5 s`);
        try {
          writeFileSync(path.join(small, 'filler'), Buffer.alloc(Math.max(0, free - 4096)));
        } catch {
          // full is full
        }
        await new Promise((r) => setTimeout(r, 5000));
        rmSync(path.join(small, 'filler'), { force: true });
      } else {
        const n = nodes[rand(3)]!;
        log(`fault ${faults}: SIGKILL node ${n.opts.nodeId}, restart in 3 s`);
        injected.add(n);
        await n.kill();
        await new Promise((r) => setTimeout(r, 3000));
        await n.start();
        injected.delete(n);
      }
    }
    loadOn = false;
    await load;
    log(`load stopped: ${acked.length} commits acknowledged; ${faults} faults injected`);

    // Let everyone catch up, then check.
    await pg.query('SELECT pg_switch_wal()');
    await pg.query('CHECKPOINT');
    const target = lsnOf((await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l'))[0]!.l);
    const deadline = Date.now() + 120_000;
    for (;;) {
      const r = await standby.query<{ l: string | null }>('SELECT pg_last_wal_replay_lsn()::text AS l').catch(() => [{ l: null }]);
      if (r[0]?.l && lsnOf(r[0].l) >= target) break;
      if (Date.now() > deadline) throw new Error('the standby did not catch up within 2 minutes');
      await new Promise((r2) => setTimeout(r2, 250));
    }
    const have = new Set((await standby.query<{ id: string }>('SELECT id FROM soak')).map((r) => Number(r.id)));
    const missing = acked.filter((id) => !have.has(id));
    const diffs: string[] = [];
    for (const r of receivers) {
      let d: string[] = ['not compared'];
      for (let i = 0; i < 240 && d.length > 0; i++) {
        d = await compareWalDirs(r.dir, pg.walDir, { segSize: 1 << 20, endLsn: target, segments: 'ours', partialTail: 'ignore' }).catch((e: Error) => [e.message]);
        if (d.length) await new Promise((r2) => setTimeout(r2, 500));
      }
      diffs.push(...d.map((x) => `${path.basename(r.dir)}: ${x}`));
    }
    const lines = [
      `soak: ${minutes} min, seed ${values.seed ?? '(time)'}, ${faults} faults (node SIGKILL + restart, primary restart, link stall and cut, disk full)`,
      `commits acknowledged: ${acked.length}; missing on the standby: ${missing.length}${missing.length ? ` (first: ${missing.slice(0, 5).join(', ')})` : ''}`,
      `receiver directories vs the primary's WAL up to ${target.toString(16)}: ${diffs.length} differences${diffs.length ? `: ${diffs.slice(0, 3).join('; ')}` : ''}`,
      `node exits not injected: ${unexpected.length}${unexpected.length ? `: ${unexpected.join(' | ')}` : ''}`,
      `peak RSS: ${[...peakRss].sort().map(([id, kb]) => `node ${id} ${(kb / 1024).toFixed(0)} MiB`).join(', ')}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    return missing.length === 0 && diffs.length === 0 && unexpected.length === 0 ? 0 : 1;
  } finally {
    for (const r of receivers) r.proc.kill('SIGINT');
    await standby?.destroy().catch(() => undefined);
    await Promise.all(nodes.map((n) => n.stop()));
    // SOAK_LOG_DIR=DIR keeps each node's output (all its runs) for a look afterwards.
    if (process.env.SOAK_LOG_DIR) for (const n of nodes) writeFileSync(path.join(process.env.SOAK_LOG_DIR, `node${n.opts.nodeId}.log`), n.output);
    await pg.destroy();
    for (const c of cleanups) {
      try {
        c();
      } catch {
        // best effort
      }
    }
    await tmp.cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`soak: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
