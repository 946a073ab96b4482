// Issue 20: `walkeeper status` against a real node process with many
// streams — one row each, the most lagging first; a problem shared by every
// stream said once; one stream's members and replicas with --stream; the
// JSON for scripts as it was.

import path from 'node:path';

import test from 'ava';

import { createTempDir, nodeWithLaggingStreams, registerCleanupHooks, runCli, type LaggingStream, type NodeProcess, type TempDir } from './harness/index.js';

registerCleanupHooks(test);

const N = 60;

let tmp: TempDir;
let node: NodeProcess;
let peer: string;
let streams: LaggingStream[] = [];

// N streams with their own lags, behind a member that never answers (see nodeWithLaggingStreams).
test.before(async () => {
  tmp = await createTempDir('walkeeper-status-');
  ({ node, streams, peer } = await nodeWithLaggingStreams(path.join(tmp.path, 'data'), N, 1024));
});
test.after.always(async () => {
  await node?.kill();
  await tmp?.cleanup();
});

const kib = (n: bigint) => (n === 0n ? '0 B' : `${Number(n) / 1024 < 10 ? (Number(n) / 1024).toFixed(1) : (Number(n) / 1024).toFixed(0)} KiB`);

test('every stream on one line, the most lagging first; the absent member said once; the detail of one stream left to --stream', async (t) => {
  const out = await runCli(['status', '--http', node.httpUrl]);
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
  const out = await runCli(['status', '--http', node.httpUrl, '--stream', one.name]);
  t.is(out.code, 0, out.stderr);
  const st = (await node.status(one.name))!;
  const lines = out.stdout.trimEnd().split('\n');
  t.is(lines.length, 16, out.stdout);
  t.deepEqual(lines[4]!.split(/ {2,}/).slice(0, 6), [one.name, 'active', '1', st.flush_lsn, st.commit_lsn, `${kib(one.lag)} not on quorum`]);
  t.deepEqual(lines.slice(5, 8), ['', 'problems:', `  member ${peer} never heard`]);
  t.is(lines[9], `${one.name}: members`);
  t.deepEqual(lines[12]!.split(/ {2,}/), [peer, '?', 'never heard', '-']);
  t.deepEqual(lines.slice(-3), ['', `${one.name}: replicas`, 'none connected']);

  const json = await runCli(['status', '--http', node.httpUrl, '--stream', one.name, '--json']);
  t.is(json.code, 0, json.stderr);
  t.is((JSON.parse(json.stdout) as { name: string }).name, one.name);

  const missing = await runCli(['status', '--http', node.httpUrl, '--stream', 'no-such']);
  t.is(missing.code, 1);
  t.is(missing.stderr, `walkeeper: the node at ${node.httpUrl} has no stream "no-such" (walkeeper status without --stream lists them)\n`);
});

test('--json is GET /v1/streams, every stream, as the node gives it', async (t) => {
  const out = await runCli(['status', '--http', node.httpUrl, '--json']);
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
  const help = await runCli(['status', '--help']);
  t.is(help.code, 0);
  for (const o of ['--http URL', '--stream NAME', '--json']) t.true(help.stdout.includes(o), o);
  const bad = await runCli(['status', '--bogus']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /^walkeeper: Unknown option '--bogus'/);
});
