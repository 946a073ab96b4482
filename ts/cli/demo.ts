/**
 * `walkeeper demo`: the whole system on this machine, then gone. A
 * throwaway PostgreSQL primary (from the installed binaries) with
 * `synchronous_standby_names = 'ANY 2 (walkeeper_1, walkeeper_2,
 * walkeeper_3)'`, three nodes that know each other (--peers), a pgbench
 * load, a real standby streaming through node 1, and `walkeeper receive`.
 * A table shows each node's LSNs, lag and replicas and the receiver's node
 * and last switch reason. Part way through, the receiver's node is
 * SIGKILLed (the failover shows, with its reason) and later restarted (it
 * catches up). At the end (--duration or Ctrl-C) everything is stopped and
 * the temp directory removed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, openSync, rmSync, writeFileSync, appendFileSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { formatLsn, parseLsn } from '../lsn.js';
import { parse, UsageError } from './args.js';
import { bytes, table } from './status.js';

export const DEMO_USAGE = `Usage: walkeeper demo [--duration SECS]

Runs the whole system on this machine in a temp directory: a PostgreSQL
primary (ANY 2 of three nodes as synchronous standbys), three walkeeper
nodes, a pgbench load, a standby streaming through a node and walkeeper
receive. Kills the receiver's node part way and restarts it. Ctrl-C (or
--duration) stops everything and removes the temp directory.

  --duration SECS   stop after this long (default: until Ctrl-C)

Needs PostgreSQL's server binaries (initdb, pg_ctl, pgbench, pg_basebackup):
pg_config --bindir, /usr/lib/postgresql/<version>/bin, or WALKEEPER_PG_BINDIR.
`;

const INSTALL_HINT =
  'install PostgreSQL (Debian/Ubuntu: apt-get install postgresql-15; Fedora: dnf install postgresql-server; macOS: brew install postgresql@15) or set WALKEEPER_PG_BINDIR';

function findBindir(): string {
  const has = (d: string) => ['initdb', 'pg_ctl', 'postgres', 'pgbench', 'pg_basebackup'].every((t) => existsSync(path.join(d, t)));
  const tried: string[] = [];
  const env = process.env.WALKEEPER_PG_BINDIR;
  if (env) {
    if (has(env)) return env;
    throw new Error(`WALKEEPER_PG_BINDIR=${env} lacks initdb, pg_ctl, postgres, pgbench or pg_basebackup; ${INSTALL_HINT}`);
  }
  const r = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  if (r.status === 0 && has(r.stdout.trim())) return r.stdout.trim();
  tried.push('pg_config --bindir');
  for (const v of [17, 16, 15]) {
    const d = `/usr/lib/postgresql/${v}/bin`;
    if (has(d)) return d;
  }
  throw new Error(`PostgreSQL server binaries not found (tried ${tried.join(', ')} and /usr/lib/postgresql/*/bin): ${INSTALL_HINT}`);
}

/**
 * A free port below Linux's ephemeral range: the three nodes must know each
 * other's ports before any listens, and a port from listen(0) could be
 * taken meanwhile by some process's outgoing connection.
 */
async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 15000 + Math.floor(Math.random() * 17000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free TCP port on 127.0.0.1 in 15000-32000');
}

/** PostgreSQL refuses to run as root: then its tools run as the postgres OS user, on files it owns. */
function serverUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const uid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (uid.status !== 0) throw new Error('running as root and there is no "postgres" OS user to run PostgreSQL as; run the demo as a regular user');
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) };
}

export async function demoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { duration: { type: 'string' } }, DEMO_USAGE);
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${DEMO_USAGE}`);
  const duration = values.duration === undefined ? null : Number(values.duration);
  if (duration !== null && (!Number.isFinite(duration) || duration < 20 || duration > 86_400)) throw new UsageError('--duration must be a number of seconds from 20 to 86400');
  const bindir = findBindir();
  const user = serverUser();
  const tool = (name: string) => path.join(bindir, name);
  const asPg = (cmd: string, a: string[]): [string, string[]] => (user ? ['runuser', ['-u', 'postgres', '--', cmd, ...a]] : [cmd, a]);
  const main = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');
  const tty = process.stdout.isTTY === true;
  const say = (line: string) => process.stdout.write(`${line}\n`);

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'walkeeper-demo-'));
  if (user) chownSync(tmp, user.uid, user.gid);
  const logFile = path.join(tmp, 'demo.log');
  const children = new Set<ChildProcess>();
  const start = (name: string, cmd: string, a: string[]): ChildProcess => {
    const fd = openSync(logFile, 'a');
    const c = spawn(cmd, a, { stdio: ['ignore', fd, fd], cwd: tmp });
    children.add(c);
    c.on('exit', () => children.delete(c));
    appendFileSync(logFile, `--- ${name}: ${cmd} ${a.join(' ')}\n`);
    return c;
  };
  const runSync = (cmd: string, a: string[], what: string): void => {
    const r = spawnSync(cmd, a, { encoding: 'utf8', cwd: tmp });
    if (r.status !== 0) throw new Error(`${what} failed: ${(r.stderr || r.stdout || String(r.error)).trim().split('\n').slice(-3).join(' / ')}`);
  };

  let stopping = false;
  let wake: () => void = () => undefined;
  const onSignal = (sig: string) => {
    if (!stopping) say(`${sig}: stopping`);
    stopping = true;
    wake();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const sleep = (ms: number) =>
    new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      wake = () => {
        clearTimeout(t);
        r();
      };
    });

  const pgPort = await freePort();
  const primary = path.join(tmp, 'primary');
  const standbyDir = path.join(tmp, 'standby');
  const nodes: { id: number; pg: number; http: number; proc: ChildProcess | null }[] = [];
  for (const id of [1, 2, 3]) nodes.push({ id, pg: await freePort(), http: await freePort(), proc: null });
  const url = (n: { http: number }) => `http://127.0.0.1:${n.http}`;
  const startNodeProc = (n: (typeof nodes)[number]) => {
    n.proc = start(`node ${n.id}`, process.execPath, [
      main, 'node', '--data-dir', path.join(tmp, `node${n.id}`), '--node-id', String(n.id),
      '--listen-pg', `127.0.0.1:${n.pg}`, '--listen-http', `127.0.0.1:${n.http}`,
      '--upstream', `host=127.0.0.1 port=${pgPort} user=postgres`,
      '--peers', nodes.filter((m) => m !== n).map(url).join(','), '--log-level', 'warn',
    ]);
  };
  const status = async (n: (typeof nodes)[number]) =>
    fetch(`${url(n)}/v1/streams/main`, { signal: AbortSignal.timeout(1000) }).then(
      (r) => (r.ok ? (r.json() as Promise<{ flush_lsn: string; commit_lsn: string; replicas: unknown[]; upstream: { state: string } | null }>) : null),
      () => null,
    );
  const lsn = parseLsn;
  let pgClient: import('pg').Client | null = null;
  const primaryFlush = async () => lsn(((await pgClient!.query('SELECT pg_current_wal_flush_lsn()::text AS l')).rows[0] as { l: string }).l);

  let receiverLines: string[] = [];
  let rx: ChildProcess | null = null;
  try {
    say(`walkeeper demo in ${tmp} (PostgreSQL from ${bindir}); Ctrl-C stops it${duration ? `, or after ${duration} s` : ''}`);
    runSync(...asPg(tool('initdb'), ['-D', primary, '-U', 'postgres', '--auth=trust', '--no-sync']), 'initdb');
    appendFileSync(
      path.join(primary, 'postgresql.conf'),
      [
        `port = ${pgPort}`, "listen_addresses = '127.0.0.1'", `unix_socket_directories = '${tmp}'`, 'wal_level = replica',
        'max_wal_senders = 20', "wal_keep_size = '1GB'", "synchronous_standby_names = 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)'",
        'fsync = on', 'max_connections = 50', "shared_buffers = '64MB'", '',
      ].join('\n'),
    );
    runSync(...asPg(tool('pg_ctl'), ['-D', primary, '-l', path.join(tmp, 'primary.log'), '-w', 'start']), 'starting the primary');
    say(`primary on 127.0.0.1:${pgPort}, synchronous_standby_names = 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)'`);
    const { default: pg } = await import('pg');
    pgClient = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', database: 'postgres' });
    await pgClient.connect();

    for (const n of nodes) startNodeProc(n);
    for (let i = 0; i < 300; i++) {
      const st = await Promise.all(nodes.map(status));
      if (st.every((s) => s?.upstream?.state === 'streaming')) break;
      if (stopping) return 0;
      await sleep(100);
    }
    say(`nodes 1-3 follow the primary: ${nodes.map((n) => `node ${n.id} replication 127.0.0.1:${n.pg}, HTTP ${url(n)}`).join('; ')}`);

    runSync(...asPg(tool('pgbench'), ['-i', '-q', '-s', '5', '-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', 'postgres']), 'pgbench -i');
    const bench = start('pgbench', ...asPg(tool('pgbench'), ['-c', '2', '-T', String(duration ?? 86_400), '-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', 'postgres']));
    say('pgbench is committing through the quorum (each commit waits for 2 of the 3 nodes)');

    runSync(...asPg(tool('pg_basebackup'), ['-D', standbyDir, '-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', '-X', 'stream', '-c', 'fast', '--no-sync']), 'pg_basebackup');
    const standbyPort = await freePort();
    appendFileSync(
      path.join(standbyDir, 'postgresql.conf'),
      [`port = ${standbyPort}`, "synchronous_standby_names = ''", `primary_conninfo = 'host=127.0.0.1 port=${nodes[0]!.pg} user=postgres application_name=demo_standby'`, 'hot_standby = on', 'wal_retrieve_retry_interval = 1s', ''].join('\n'),
    );
    writeFileSync(path.join(standbyDir, 'standby.signal'), '');
    if (user) chownSync(path.join(standbyDir, 'standby.signal'), user.uid, user.gid);
    runSync(...asPg(tool('pg_ctl'), ['-D', standbyDir, '-l', path.join(tmp, 'standby.log'), '-w', 'start']), 'starting the standby');
    say(`a PostgreSQL standby on 127.0.0.1:${standbyPort} streams through node 1`);
    const standby = new pg.Client({ host: '127.0.0.1', port: standbyPort, user: 'postgres', database: 'postgres' });
    await standby.connect().catch(() => undefined);

    mkdirSync(path.join(tmp, 'received'));
    rx = spawn(process.execPath, [main, 'receive', '--nodes', nodes.map(url).join(','), '-D', path.join(tmp, 'received')], { stdio: ['ignore', 'ignore', 'pipe'], cwd: tmp });
    children.add(rx);
    rx.stderr!.on('data', (b: Buffer) => {
      for (const l of b.toString().split('\n')) {
        if (!l.trim()) continue;
        receiverLines.push(l);
        if (/streaming from/.test(l)) say(l.replace(/^walkeeper receive: /, 'walkeeper receive: '));
      }
    });
    say('walkeeper receive follows the best node into received/');

    const t0 = Date.now();
    const end = duration === null ? Infinity : t0 + duration * 1000;
    const killAt = t0 + (duration === null ? 20_000 : duration * 400);
    const restartAt = t0 + (duration === null ? 30_000 : duration * 600);
    let killed: (typeof nodes)[number] | null = null;
    let restarted = false;
    let caughtUp = false;
    const first = await primaryFlush();
    let lastPrint = 0;
    while (!stopping && Date.now() < end) {
      const now = Date.now();
      const receiverNode = [...receiverLines].reverse().map((l) => /streaming from (\S+)/.exec(l)?.[1]).find(Boolean) ?? null;
      if (!killed && now >= killAt && receiverNode) {
        killed = nodes.find((n) => url(n) === receiverNode) ?? null;
        if (killed?.proc) {
          killed.proc.kill('SIGKILL');
          say(`>>> SIGKILL node ${killed.id}, the node walkeeper receive streams from; commits go on with 2 of 3`);
        }
      }
      if (killed && !restarted && now >= restartAt) {
        startNodeProc(killed);
        restarted = true;
        say(`>>> restarted node ${killed.id}; it catches up from the primary`);
      }
      const st = await Promise.all(nodes.map(status));
      const pf = await primaryFlush();
      if (killed && restarted && !caughtUp) {
        const s = st[killed.id - 1];
        if (s && lsn(s.flush_lsn) >= pf - 65536n) {
          caughtUp = true;
          say(`>>> node ${killed.id} caught up: flush_lsn ${s.flush_lsn} (primary at ${formatLsn(pf)})`);
        }
      }
      const replay = await standby
        .query('SELECT pg_last_wal_replay_lsn()::text AS l')
        .then((r) => (r.rows[0] as { l: string | null }).l, () => null);
      if (tty || now - lastPrint >= 5000) {
        lastPrint = now;
        const rows = nodes.map((n, i) => {
          const s = st[i];
          if (!s) return [`node ${n.id}`, 'down', '-', '-', '-', '-'];
          return [`node ${n.id}`, s.upstream?.state ?? '-', s.flush_lsn, s.commit_lsn, bytes(pf > lsn(s.flush_lsn) ? pf - lsn(s.flush_lsn) : 0n), String(s.replicas.length)];
        });
        const lastSwitch = [...receiverLines].reverse().find((l) => /streaming from/.test(l));
        const text = [
          `${Math.round((now - t0) / 1000)} s · primary flush ${formatLsn(pf)} · ${bytes(pf - first)} of WAL since the start · standby replayed ${replay ?? '-'}`,
          table(['node', 'upstream', 'flush_lsn', 'commit_lsn', 'behind primary', 'replicas'], rows),
          `receiver: ${receiverNode ?? '-'}; last switch: ${lastSwitch ? lastSwitch.replace(/^.*?: (\w+: .*)$/, '$1') : '-'}`,
        ].join('\n');
        if (tty) process.stdout.write(`\x1b[2J\x1b[H${text}\n`);
        else say(text);
      }
      await sleep(1000);
    }
    bench.kill('SIGINT');
    const pf = await primaryFlush();
    say(`done: ${bytes(pf - first)} of WAL flowed through the nodes${killed ? `; node ${killed.id} was killed and ${caughtUp ? 'caught up after its restart' : restarted ? 'restarted' : 'not restarted'}` : ''}`);
    await standby.end().catch(() => undefined);
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await pgClient?.end().catch(() => undefined);
    // Stop in order: the receiver and the load, the standby, the nodes, the primary.
    const stopChild = (c: ChildProcess, sig: NodeJS.Signals) =>
      new Promise<void>((r) => {
        if (c.exitCode !== null || c.signalCode !== null) return r();
        c.once('exit', () => r());
        c.kill(sig);
        setTimeout(() => {
          c.kill('SIGKILL');
          r();
        }, 10_000).unref();
      });
    if (rx) await stopChild(rx, 'SIGINT');
    spawnSync(...asPg(tool('pg_ctl'), ['-D', standbyDir, '-m', 'immediate', '-w', 'stop']), { stdio: 'ignore' });
    await Promise.all([...children].filter((c) => c !== rx).map((c) => stopChild(c, 'SIGTERM')));
    spawnSync(...asPg(tool('pg_ctl'), ['-D', primary, '-m', 'fast', '-w', 'stop']), { stdio: 'ignore' });
    if (process.env.WALKEEPER_DEMO_KEEP) say(`stopped everything; kept ${tmp} (WALKEEPER_DEMO_KEEP)`);
    else {
      rmSync(tmp, { recursive: true, force: true });
      say('stopped everything and removed the demo directory');
    }
  }
}

