// Issue 20: `walkeeper status` against a real node process with many
// streams — one row each, the most lagging first; a problem shared by every
// stream said once; one stream's members and replicas with --stream; the
// JSON for scripts as it was.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

import { importWal, readControlFile, writeControlFile } from '../ts/index.js';
import { createTempDir, FIXTURE_SEG, freePort, makeWalFixture, registerCleanupHooks, startNodeProcess, type NodeProcess, type TempDir } from './harness/index.js';

registerCleanupHooks(test);

const bin = path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..'), 'dist', 'cli', 'main.js');
const N = 60;
const GROUPS = ['orders', 'billing', 'audit'];

let tmp: TempDir;
let node: NodeProcess;
let peer: string;
let streams: { name: string; lag: bigint }[] = [];

// A node process serving N streams, each imported from one segment of real
// WAL and each with its own lag: its control file's commit_lsn put below
// flush_lsn (WAL flushed on this member and not yet on a quorum, as a member
// holds it after a crash), and a second member that never answers, so that
// the quorum leaves commit_lsn there.
test.before(async () => {
  tmp = await createTempDir('walkeeper-status-');
  const dataDir = path.join(tmp.path, 'data');
  const fx = await makeWalFixture({ minBytes: FIXTURE_SEG });
  try {
    const wal = await fx.prefixDir(1);
    for (let i = 0; i < N; i++) {
      const name = `${GROUPS[i % GROUPS.length]}-${String(i).padStart(3, '0')}`;
      // Each lag twice (0 too), so that ties show the order among equals.
      const lag = BigInt(((i * 37) % (N / 2)) * 1024);
      const r = await importWal({ dataDir, stream: name, walDir: wal });
      if (r.endLsn - r.firstLsn <= lag) throw new Error(`the imported WAL (${r.endLsn - r.firstLsn} bytes) is too short for a lag of ${lag}`);
      const c = (await readControlFile(r.dir))!;
      await writeControlFile(r.dir, { ...c, commitLsn: c.flushLsn - lag });
      streams.push({ name, lag });
    }
  } finally {
    await fx.destroy();
  }
  peer = `http://127.0.0.1:${await freePort()}`;
  node = await startNodeProcess({ dataDir, extraArgs: ['--peers', peer] });
});
test.after.always(async () => {
  await node?.kill();
  await tmp?.cleanup();
});

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

const kib = (n: bigint) => (n === 0n ? '0 B' : `${Number(n) / 1024 < 10 ? (Number(n) / 1024).toFixed(1) : (Number(n) / 1024).toFixed(0)} KiB`);

test('every stream on one line, the most lagging first; the absent member said once; the detail of one stream left to --stream', async (t) => {
  const out = await cli(['status', '--http', node.httpUrl]);
  t.is(out.code, 0, out.stderr);
  const lines = out.stdout.trimEnd().split('\n');
  t.is(lines[0], `node 1 at ${node.httpUrl}`);
  t.regex(lines[2]!, /^stream +state +tli +flush_lsn +commit_lsn +lag +oldest_lsn +upstream +replicas +members$/);
  const rows = lines.slice(4, 4 + N).map((l) => l.split(/ {2,}/));
  const byLag = [...streams].sort((a, b) => (a.lag > b.lag ? -1 : a.lag < b.lag ? 1 : a.name < b.name ? -1 : 1));
  t.deepEqual(
    rows.map((r) => [r[0], r[5]]),
    byLag.map((s) => [s.name, `${kib(s.lag)} not on quorum`]),
  );
  for (const r of rows) t.is(r[9], '2 (quorum 2)');
  // The rest: the member every stream waits for, once, and how to see one stream.
  t.deepEqual(lines.slice(4 + N), [
    '',
    'problems:',
    `  member ${peer} never heard (every stream)`,
    '',
    `one stream's members and replicas: walkeeper status --stream NAME --http ${node.httpUrl}`,
  ]);
});

test('--stream shows that stream with its members and replicas; an unknown name is an error', async (t) => {
  const one = streams[7]!;
  const out = await cli(['status', '--http', node.httpUrl, '--stream', one.name]);
  t.is(out.code, 0, out.stderr);
  const st = (await node.status(one.name))!;
  const lines = out.stdout.trimEnd().split('\n');
  t.is(lines.length, 16, out.stdout);
  t.deepEqual(lines[4]!.split(/ {2,}/).slice(0, 6), [one.name, 'active', '1', st.flush_lsn, st.commit_lsn, `${kib(one.lag)} not on quorum`]);
  t.deepEqual(lines.slice(5, 8), ['', 'problems:', `  member ${peer} never heard`]);
  t.is(lines[9], `${one.name}: members`);
  t.deepEqual(lines[12]!.split(/ {2,}/), [peer, '?', 'never heard', '-']);
  t.deepEqual(lines.slice(-3), ['', `${one.name}: replicas`, 'none connected']);

  const json = await cli(['status', '--http', node.httpUrl, '--stream', one.name, '--json']);
  t.is(json.code, 0, json.stderr);
  t.is((JSON.parse(json.stdout) as { name: string }).name, one.name);

  const missing = await cli(['status', '--http', node.httpUrl, '--stream', 'no-such']);
  t.is(missing.code, 1);
  t.is(missing.stderr, `walkeeper: the node at ${node.httpUrl} has no stream "no-such" (walkeeper status without --stream lists them)\n`);
});

test('--json is GET /v1/streams, every stream, as the node gives it', async (t) => {
  const out = await cli(['status', '--http', node.httpUrl, '--json']);
  t.is(out.code, 0, out.stderr);
  const docs = JSON.parse(out.stdout) as { name: string; commit_lsn: string }[];
  const direct = (await (await fetch(`${node.httpUrl}/v1/streams`)).json()) as { name: string; commit_lsn: string }[];
  t.deepEqual(
    docs.map((d) => [d.name, d.commit_lsn]),
    direct.map((d) => [d.name, d.commit_lsn]),
  );
  t.is(docs.length, N);
});

test('the usage names every option the command takes', async (t) => {
  const help = await cli(['status', '--help']);
  t.is(help.code, 0);
  for (const o of ['--http URL', '--stream NAME', '--json']) t.true(help.stdout.includes(o), o);
  const bad = await cli(['status', '--bogus']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /^walkeeper: Unknown option '--bogus'/);
});
