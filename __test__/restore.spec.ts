// Issue 18: restore. A base backup of a primary that three nodes follow
// (ANY 2 of them synchronous) and offload to a real S3 server (Ceph RGW);
// pgbench plus numbered, timestamped markers; retention removes the nodes'
// local WAL below the markers; the primary is destroyed. New servers from the
// base backup recover with `restore_command = 'walkeeper fetch … %f %p'` to
// marker N's LSN (nodes and object storage), to the end with --partial
// (every acknowledged commit), and to marker N's time with every node down
// (object storage alone). `walkeeper fetch` itself: object storage down
// (nodes alone), both down, and bad input — one line, non-zero, no %p.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test, { type ExecutionContext } from 'ava';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';

import { formatLsn, parseLsn, type Lsn } from '../ts/lsn.js';
import { zstdCompress } from '../ts/wal/compress.js';
import { ReplicationClient } from '../ts/client/client.js';
import {
  basebackup,
  createTempDir,
  freePort,
  lsnOf,
  NodeProcess,
  registerCleanupHooks,
  runPgTool,
  startPostgres,
  startRecovery,
  startStandby,
  until,
  type PgCluster,
  type TempDir,
} from './harness/index.js';
import { startRgw, type Rgw } from './harness/ceph.js';

registerCleanupHooks(test);

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(root, 'dist', 'cli', 'main.js');
const SEG = 1024 * 1024;
const BUCKET = 'restore';

interface Marker {
  n: number;
  /** End of its commit record. */
  lsn: Lsn;
  /** A moment after its commit and before the next marker's. */
  after: string;
}

let tmp: TempDir;
let rgw: Rgw;
let s3: S3Client;
let pg: PgCluster;
const nodes: NodeProcess[] = [];
const backups: string[] = [];
const markers: Marker[] = [];
let finalLsn: Lsn;
let historyCount: number;
let sysid: string;
/** The primary's segments, kept before it is destroyed. */
const saved = new Map<string, Buffer>();

const conninfoOf = (c: { port: number }) => `host=127.0.0.1 port=${c.port} user=postgres`;

function run(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd ?? tmp.path, env: { ...process.env, ...rgw.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * The restore_command PostgreSQL runs (as its own user, in its data
 * directory): `walkeeper fetch`, or with `shell` bin/walkeeper-fetch (its
 * /bin/sh fast path for prefetched segments).
 */
function restoreCommand(fetchArgs: string, shell = false): string {
  const env = Object.entries(rgw.env)
    .map(([k, v]) => `${k}='${v}'`)
    .join(' ');
  if (shell) return `PATH='${path.dirname(process.execPath)}':$PATH ${env} '${path.join(root, 'bin', 'walkeeper-fetch')}' ${fetchArgs} %f %p`;
  return `${env} '${process.execPath}' '${CLI}' fetch ${fetchArgs} %f %p`;
}

const nodeUrls = () => nodes.map((n) => n.httpUrl).join(',');
const remoteArgs = () => `--remote-storage s3://${BUCKET}/cluster --remote-endpoint ${rgw.endpoint}`;

async function status(n: NodeProcess): Promise<{ commit_lsn: string; oldest_lsn: string | null; backup_lsn: string | null; system_id: string } | null> {
  return (await n.status()) as never;
}

async function markersOf(c: PgCluster): Promise<number[]> {
  return (await c.query<{ n: number }>('SELECT n FROM markers ORDER BY n')).map((r) => r.n);
}

async function pgbench(args: string[]): Promise<void> {
  await runPgTool('pgbench', [...args, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 120_000 });
}

test.before(async () => {
  tmp = await createTempDir('walkeeper-restore-');
  rgw = await startRgw();
  await rgw.createBucket(BUCKET);
  s3 = rgw.client();
  pg = await startPostgres({
    walSegSizeMB: 1,
    conf: { wal_keep_size: '512MB', max_wal_senders: '10', synchronous_standby_names: 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)' },
  });
  for (let i = 1; i <= 3; i++) {
    const n = new NodeProcess({ dataDir: path.join(tmp.path, `n${i}`), nodeId: i, upstream: conninfoOf(pg), env: { ...rgw.env } });
    n.pgPort = await freePort();
    n.httpPort = await freePort();
    nodes.push(n);
  }
  for (const n of nodes) {
    n.opts.extraArgs = ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(','), ...remoteArgs().split(' '), '--wal-keep-size', '2MB', '--replica-window', '0', '--offload-partial-after', '0'];
  }
  await Promise.all(nodes.map((n) => n.start()));
  await until(async () => (await Promise.all(nodes.map(status))).every((s) => s !== null), 'the nodes to follow the primary', 60_000);
  await pg.query('CREATE TABLE markers (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())');
  await pgbench(['-i', '-q', '-s', '2']);
  for (let i = 0; i < 4; i++) backups.push(await basebackup(pg));

  // Markers between bursts of pgbench: each marker's commit is acknowledged by two nodes.
  for (let n = 1; n <= 6; n++) {
    await pgbench(['-c', '2', '-t', '400', '-N']);
    await pg.query(`INSERT INTO markers (n) VALUES (${n})`);
    const [e] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
    await new Promise((r) => setTimeout(r, 50));
    const [a] = await pg.query<{ t: string }>("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS t");
    await new Promise((r) => setTimeout(r, 50));
    markers.push({ n, lsn: lsnOf(e!.l), after: a!.t });
  }
  await pgbench(['-c', '2', '-t', '200', '-N']);
  const [h] = await pg.query<{ c: string }>('SELECT count(*)::text AS c FROM pgbench_history');
  historyCount = Number(h!.c);
  const [f] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  finalLsn = lsnOf(f!.l);
  sysid = (await status(nodes[0]!))!.system_id;

  // Every node has committed the end, and retention has removed its WAL below the first markers (offloaded first).
  await until(async () => (await Promise.all(nodes.map(status))).every((s) => s && parseLsn(s.commit_lsn) >= finalLsn), `every node's commit_lsn at ${formatLsn(finalLsn)}`, 60_000);
  await until(
    async () => (await Promise.all(nodes.map(status))).every((s) => s?.oldest_lsn && parseLsn(s.oldest_lsn) > markers[2]!.lsn),
    'retention to remove the nodes\' WAL below marker 3',
    90_000,
  );
  for (const name of await readdir(pg.walDir)) if (/^[0-9A-F]{24}$/.test(name)) saved.set(name, await readFile(path.join(pg.walDir, name)));
  await pg.destroy();
});

test.after.always(async () => {
  await Promise.all(nodes.map((n) => n.kill()));
  s3?.destroy();
  await rgw?.stop();
  await tmp?.cleanup();
});

/** Waits until the recovered server has promoted; its log goes to the test's output when a check fails. */
async function promoted(t: ExecutionContext, c: PgCluster): Promise<void> {
  t.teardown(async () => {
    if (!t.passed) t.log((await readFile(c.logFile, 'utf8').catch(() => '')).split('\n').slice(-60).join('\n'));
  });
  await until(async () => !(await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r'))[0]!.r, 'the recovered server to promote', 120_000);
}

test.serial('recovery to marker 3\'s LSN through walkeeper-fetch (nodes, then object storage, --prefetch 4 and the shell\'s fast path): markers 1–3 present, 4–6 absent', async (t) => {
  const target = markers[2]!;
  const oldest = Math.min(...(await Promise.all(nodes.map(status))).map((s) => Number(parseLsn(s!.oldest_lsn!))));
  t.true(BigInt(oldest) > target.lsn, 'the nodes no longer hold the WAL up to the target: object storage must serve it');
  const c = await startRecovery(backups[0]!, {
    restoreCommand: restoreCommand(`--nodes ${nodeUrls()} ${remoteArgs()} --prefetch 4`, true),
    conf: { recovery_target_lsn: formatLsn(target.lsn), recovery_target_inclusive: false },
  });
  t.teardown(() => c.destroy());
  await promoted(t, c);
  t.deepEqual(await markersOf(c), [1, 2, 3]);
  const log = await readFile(c.logFile, 'utf8');
  t.regex(log, /recovery stopping before .*location/);
  t.regex(log, /restored log file "[0-9A-F]{24}" from archive/);
  t.true(existsSync(path.join(c.walDir, 'walkeeper-prefetch')), 'the prefetch spool beside %p');
});

test.serial('recovery to the end with --partial: every commit the primary acknowledged is there', async (t) => {
  const c = await startRecovery(backups[1]!, { restoreCommand: restoreCommand(`--nodes ${nodeUrls()} ${remoteArgs()} --prefetch 2 --partial`) });
  t.teardown(() => c.destroy());
  await promoted(t, c);
  t.deepEqual(await markersOf(c), [1, 2, 3, 4, 5, 6]);
  const [h] = await c.query<{ c: string }>('SELECT count(*)::text AS c FROM pgbench_history');
  t.is(Number(h!.c), historyCount, 'every pgbench transaction the primary acknowledged');
  // The last segment was not complete: recovery had it from --partial, zero-padded after commit_lsn.
  const last = [...saved.keys()].sort().at(-1)!;
  t.true(finalLsn % BigInt(SEG) !== 0n && BigInt(Number.parseInt(last.slice(16), 16)) === finalLsn / BigInt(SEG), `${last} holds ${formatLsn(finalLsn)}`);
  t.regex(await readFile(c.logFile, 'utf8'), new RegExp(`restored log file "${last}" from archive`));
  const dir = path.join(tmp.path, 'partial');
  await mkdir(dir);
  t.is((await run(['fetch', '--nodes', nodeUrls(), last, path.join(dir, 'whole')])).code, 1, 'without --partial the unfinished segment is not there');
  // The endpoint itself: nothing past commit_lsn, and what a file name must be.
  const wal = (f: string) => fetch(`${nodes[0]!.httpUrl}/v1/streams/main/wal/${f}`);
  t.is((await wal(last)).status, 404);
  const p = await wal(`${last}?partial=1`);
  t.is(p.status, 200);
  t.is(p.headers.get('x-walkeeper-system-id'), sysid);
  t.is(p.headers.get('x-walkeeper-segment-size'), String(SEG));
  const endLsn = parseLsn(p.headers.get('x-walkeeper-end-lsn')!);
  t.is(endLsn, parseLsn(p.headers.get('x-walkeeper-commit-lsn')!), 'a partial segment ends at commit_lsn');
  t.is((await p.arrayBuffer()).byteLength, Number(endLsn % BigInt(SEG)));
  const next = `00000001${last.slice(8, 16)}${(Number.parseInt(last.slice(16), 16) + 1).toString(16).toUpperCase().padStart(8, '0')}`;
  t.is((await wal(`${next}?partial=1`)).status, 404, 'nothing of a segment past commit_lsn');
  t.is((await wal('pg_hba.conf')).status, 400);
  t.is((await wal('000000010000000000001000')).status, 400, 'not a name for 1 MiB segments');
  t.is((await wal('00000002.history')).status, 404);
  const r = await run(['fetch', '--nodes', nodeUrls(), '--partial', last, path.join(dir, 'part')]);
  t.is(r.code, 0, r.stderr);
  const part = await readFile(path.join(dir, 'part'));
  // (the nodes' commit_lsn may have moved past finalLsn: a checkpoint's WAL after the load)
  const commit = (await Promise.all(nodes.map(status))).map((x) => parseLsn(x!.commit_lsn)).reduce((a, b) => (a > b ? a : b));
  t.is(commit / BigInt(SEG), finalLsn / BigInt(SEG));
  const cut = Number(commit % BigInt(SEG));
  t.is(part.length, SEG);
  // (saved before the primary's shutdown checkpoint, which the nodes also committed)
  const upTo = Number(finalLsn % BigInt(SEG));
  t.true(part.subarray(0, upTo).equals(saved.get(last)!.subarray(0, upTo)), "the primary's bytes");
  t.true(part.subarray(upTo, cut).some((b) => b !== 0) || cut === upTo, 'WAL up to commit_lsn');
  t.true(part.subarray(cut).every((b) => b === 0), 'zeros after it');
  const [e] = await c.query<{ l: string }>("SELECT redo_lsn::text AS l FROM pg_control_checkpoint()");
  t.true(lsnOf(e!.l) >= finalLsn, `replayed to the primary's last flush ${formatLsn(finalLsn)}`);
});

test.serial('fetch with object storage down reads the nodes alone; with both down it exits non-zero', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const recent = [...saved.keys()].sort().filter((n) => saved.get(n)!.length === SEG).at(-2)!;
  const dir = path.join(tmp.path, 'fetch-nodes');
  await mkdir(dir);
  const r = await run(['fetch', '--nodes', nodeUrls(), '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', dead, recent, path.join(dir, 'RECOVERYXLOG')]);
  t.is(r.code, 0, r.stderr);
  t.true((await readFile(path.join(dir, 'RECOVERYXLOG'))).equals(saved.get(recent)!), `${recent} from the nodes equals the primary's`);
  const h = await run(['fetch', '--nodes', nodeUrls(), '00000002.history', path.join(dir, 'h')]);
  t.is(h.code, 1, 'there is no timeline 2: exit 1');
  t.is(h.stderr, '', 'silently');

  const both = await run(['fetch', '--nodes', `http://127.0.0.1:${await freePort()}`, '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', dead, recent, path.join(dir, 'X')]);
  t.is(both.code, 3, both.stderr);
  t.is(both.stderr.trim().split('\n').length, 1, 'one line');
  t.regex(both.stderr, /^walkeeper fetch: [0-9A-F]{24} not fetched: .*ECONNREFUSED/);
  t.false(existsSync(path.join(dir, 'X')));
  t.deepEqual((await readdir(dir)).sort(), ['RECOVERYXLOG'], 'no temporary file left');
});

test.serial('bad input: one line on stderr, non-zero, and %p never holds a partial file', async (t) => {
  const dir = path.join(tmp.path, 'bad');
  await mkdir(dir);
  const first = [...saved.keys()].sort()[2]!;
  // A file name that is no WAL name.
  let r = await run(['fetch', '--nodes', nodeUrls(), 'pg_hba.conf', path.join(dir, 'x')]);
  t.is(r.code, 2);
  t.regex(r.stderr, /^walkeeper: "pg_hba.conf" is not a WAL segment, timeline history or backup history file name\n$/);
  // A missing %p directory.
  r = await run(['fetch', '--nodes', nodeUrls(), first, path.join(dir, 'nope', 'RECOVERYXLOG')]);
  t.is(r.code, 3);
  t.regex(r.stderr, /^walkeeper fetch: cannot write .* directory .*nope does not exist\n$/);
  // An object that fails its checks: a segment whose page says it is elsewhere.
  const bad = Buffer.from(saved.get(first)!);
  bad.writeBigUInt64LE(bad.readBigUInt64LE(8192 + 8) + 8192n, 8192 + 8);
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `cluster/broken/${sysid}/${first}.zst`, Body: await zstdCompress(bad, 3) }));
  r = await run(['fetch', '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', rgw.endpoint, '--stream', 'broken', first, path.join(dir, 'RECOVERYXLOG')]);
  t.is(r.code, 3);
  t.regex(r.stderr, /^walkeeper fetch: [0-9A-F]{24} not fetched: object storage .*: WAL page at [0-9A-F]+\/[0-9A-F]+ has pageaddr/);
  t.is(r.stderr.split('\n').length, 2);
  // A stream of another database system than the data directory being recovered.
  const other = await startPostgres({ walSegSizeMB: 1 });
  t.teardown(() => other.destroy());
  r = await run(['fetch', '--nodes', nodeUrls(), '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', rgw.endpoint, first, path.join(dir, 'RECOVERYXLOG')], { cwd: other.dataDir });
  t.is(r.code, 3);
  t.regex(r.stderr, new RegExp(`database system ${sysid}, this server's is ${await other.systemId()}`));
  t.deepEqual(await readdir(dir), [], 'nothing written');
});

test.serial('read-through: a client starting below every node\'s oldest segment, walkeeper receive resuming there, and a standby from an old base backup are served from object storage as if the WAL were local', async (t) => {
  const n = nodes[0]!;
  const st = (await status(n))!;
  const oldest = parseLsn(st.oldest_lsn!);
  // A replication client below the horizon: the primary's exact bytes, across the horizon into local WAL.
  const first = [...saved.keys()].sort()[2]!;
  const start = BigInt(Number.parseInt(first.slice(16), 16)) * BigInt(SEG) + 8192n * 3n;
  t.true(start < oldest, `${formatLsn(start)} is below the node's oldest ${formatLsn(oldest)}`);
  const c = await ReplicationClient.connect({ host: '127.0.0.1', port: n.pgPort, user: 'postgres' });
  t.teardown(() => c.close());
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`);
  const chunks: Buffer[] = [];
  let at = start;
  const until2 = oldest + 8192n * 4n;
  const got = new Promise<void>((resolve, reject) => {
    copy.onXLogData = (m) => {
      if (m.start !== at) reject(new Error(`gap: ${formatLsn(m.start)} after ${formatLsn(at)}`));
      chunks.push(Buffer.from(m.data));
      at = m.start + BigInt(m.data.length);
      if (at >= until2) resolve();
    };
  });
  await got;
  await copy.end();
  const all = Buffer.concat(chunks);
  let off = 0;
  for (let lsn = start; lsn < until2; ) {
    const segno = lsn / BigInt(SEG);
    const name = `00000001${(segno / 4096n).toString(16).toUpperCase().padStart(8, '0')}${(segno % 4096n).toString(16).toUpperCase().padStart(8, '0')}`;
    const from = Number(lsn % BigInt(SEG));
    const want = saved.get(name)!.subarray(from);
    if (!all.subarray(off, off + want.length).equals(want.subarray(0, Math.min(want.length, all.length - off)))) {
      t.fail(`${name} differs from the primary's`);
      return;
    }
    off += want.length;
    lsn += BigInt(want.length);
  }
  t.pass(`${formatLsn(start)} to ${formatLsn(until2)}: the primary's bytes, from object storage below ${formatLsn(oldest)} and local WAL above`);

  // walkeeper receive resuming from a directory whose last segment is below the horizon.
  const dir = path.join(tmp.path, 'receive');
  await mkdir(dir);
  await writeFile(path.join(dir, first), saved.get(first)!);
  const rec = await run(['receive', '--nodes', nodeUrls(), '-D', dir, '--endpos', formatLsn(oldest + BigInt(SEG)), '--no-loop']);
  t.is(rec.code, 0, rec.stderr);
  const complete = (await readdir(dir)).filter((x) => /^[0-9A-F]{24}$/.test(x) && x !== first).sort();
  t.true(complete.length >= 2, `${complete.join(' ')}`);
  for (const x of complete) t.true((await readFile(path.join(dir, x))).equals(saved.get(x)!), `${x} received as the primary wrote it`);

  // A real standby from the fourth base backup (taken before the markers) streams from the node.
  const sb = await startStandby(backups[3]!, { primaryConninfo: n.conninfo() });
  t.teardown(() => sb.destroy());
  await sb.waitReplayed(finalLsn, 120_000);
  t.deepEqual(await markersOf(sb), [1, 2, 3, 4, 5, 6]);
  const [h] = await sb.query<{ c: string }>('SELECT count(*)::text AS c FROM pgbench_history');
  t.is(Number(h!.c), historyCount);
});

test.serial('recovery to marker 4\'s time with every node down: object storage alone', async (t) => {
  await Promise.all(nodes.map((n) => n.kill()));
  const target = markers[3]!;
  const c = await startRecovery(backups[2]!, {
    restoreCommand: restoreCommand(`--nodes ${nodeUrls()} ${remoteArgs()} --prefetch 8`),
    conf: { recovery_target_time: target.after },
  });
  t.teardown(() => c.destroy());
  await promoted(t, c);
  t.deepEqual(await markersOf(c), [1, 2, 3, 4]);
  t.regex(await readFile(c.logFile, 'utf8'), /recovery stopping before commit of transaction \d+, time/);
});
