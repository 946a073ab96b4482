// `walkeeper import` and `walkeeper node` as an operator runs them: real
// processes, real signals; import's refusals; the HTTP API.

import { spawn, execFile } from 'node:child_process';
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

import { formatLsn, importWal, startNode } from '../ts/index.js';
import { ReplicationClient } from '../ts/client/client.js';
import { createTempDir, freePort, makeWalFixture, startReceivewal, startTestNode, type TempDir, type WalFixture } from './harness/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'dist', 'cli', 'main.js');

let fx: WalFixture;
let other: WalFixture;
let tmp: TempDir;

test.before(async () => {
  [fx, other] = await Promise.all([makeWalFixture({ minBytes: 2 * 1024 * 1024 }), makeWalFixture({ minBytes: 1024 * 1024 })]);
  tmp = await createTempDir('walkeeper-nodecli-');
});

test.after.always(async () => {
  await fx?.destroy();
  await other?.destroy();
  await tmp?.cleanup();
});

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { cwd: root, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

let dirs = 0;
const newDir = () => path.join(tmp.path, `d${dirs++}`);

test('walkeeper import, then walkeeper node: pg_receivewal streams it; SIGTERM stops the node with exit 0', async (t) => {
  const data = newDir();
  const imp = await run(['import', '--data-dir', data, fx.walDir]);
  t.is(imp.code, 0, imp.stderr);
  t.regex(imp.stdout, new RegExp(`^imported ${fx.segments.length} segments into stream main`));
  t.regex(imp.stdout, new RegExp(`flush_lsn = commit_lsn = ${formatLsn(fx.end).replace('/', '\\/')}`));
  const [pgPort, httpPort] = [await freePort(), await freePort()];
  const child = spawn(process.execPath, [bin, 'node', '--data-dir', data, '--listen-pg', `127.0.0.1:${pgPort}`, '--listen-http', `127.0.0.1:${httpPort}`, '--node-id', '7'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.teardown(() => child.kill('SIGKILL'));
  const deadline = Date.now() + 30_000;
  while (!log.includes('walkeeper node started')) {
    if (Date.now() > deadline) t.fail(log);
    await new Promise((r) => setTimeout(r, 50));
  }
  const health = await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json();
  t.like(health, { status: 'ok', node_id: 7, streams: 1 });
  const streams = (await (await fetch(`http://127.0.0.1:${httpPort}/v1/streams`)).json()) as Record<string, unknown>[];
  t.is(streams.length, 1);
  t.like(streams[0], {
    name: 'main',
    node_id: 7,
    system_id: fx.systemId.toString(),
    pg_version: 15,
    tli: 1,
    segment_size: 1024 * 1024,
    flush_lsn: formatLsn(fx.end),
    commit_lsn: formatLsn(fx.end),
    pg_address: `127.0.0.1:${pgPort}`,
    replicas: [],
  });
  t.is((await fetch(`http://127.0.0.1:${httpPort}/v1/streams/nope`)).status, 404);
  t.is((await fetch(`http://127.0.0.1:${httpPort}/nothing`)).status, 404);
  const rw = startReceivewal({ host: '127.0.0.1', port: pgPort, dir: path.join(tmp.path, 'rw-cli'), endpos: fx.end - 1n, noLoop: true, conninfo: { options: '-c stream=main' } });
  t.is((await rw.wait(60_000)).code, 0);
  // A data directory can have only one node.
  const second = await run(['node', '--data-dir', data, '--listen-pg', '127.0.0.1:0', '--listen-http', '127.0.0.1:0']);
  t.is(second.code, 1);
  t.regex(second.stderr, /^walkeeper: a walkeeper node \(pid \d+\) is running on .*; stop it first\n$/);
  const again = await run(['import', '--data-dir', data, '--stream', 'second', fx.walDir]);
  t.is(again.code, 1);
  t.regex(again.stderr, /is running on/);
  child.kill('SIGTERM');
  t.is(await exited, 0);
  t.regex(log, /"msg":"walkeeper node stopped"/);
  // Every line about the stream names it.
  for (const line of log.split('\n').filter((l) => l.includes('"client"'))) t.regex(line, /"stream":"main"/);
});

test('import refuses a mix of database systems, segment sizes or versions, with a clear error and nothing written', async (t) => {
  const mixed = newDir();
  await mkdir(mixed);
  for (const s of fx.segments.slice(0, 2)) await copyFile(path.join(fx.walDir, s), path.join(mixed, s));
  const theirs = other.segments.at(-1)!;
  const renamed = `00000001000000000000${(parseInt(fx.segments[1]!.slice(16), 16) + 1).toString(16).toUpperCase().padStart(4, '0')}`;
  await copyFile(path.join(other.walDir, theirs), path.join(mixed, renamed));
  const data = newDir();
  const r = await run(['import', '--data-dir', data, mixed]);
  t.is(r.code, 1);
  t.regex(r.stderr, /^walkeeper: .* (mixes WAL of two database systems|holds the WAL of)/);
  t.is(r.stderr.split('\n').length, 2, 'one line');
  t.deepEqual(await readdir(path.join(data, 'streams')).catch(() => []), [], 'nothing imported');
  // Same segment number, other system: the header says so.
  const mixed2 = newDir();
  await mkdir(mixed2);
  await copyFile(path.join(fx.walDir, fx.segments[0]!), path.join(mixed2, fx.segments[0]!));
  const sameNo = other.segments.find((s) => s !== fx.segments[0] && parseInt(s.slice(16), 16) > parseInt(fx.segments[0]!.slice(16), 16));
  if (sameNo) await copyFile(path.join(other.walDir, sameNo), path.join(mixed2, sameNo));
  const r2 = await run(['import', '--data-dir', newDir(), mixed2]);
  t.is(r2.code, 1);
  t.regex(r2.stderr, /mixes WAL of two database systems: \d+ \(0000000100000000000000[0-9A-F]{2}\) and \d+ \(/);
  const empty = newDir();
  await mkdir(empty);
  const r3 = await run(['import', '--data-dir', newDir(), empty]);
  t.is(r3.code, 1);
  t.regex(r3.stderr, /holds no WAL segments/);
  const r4 = await run(['import', '--data-dir', newDir()]);
  t.is(r4.code, 2);
});

test('import skips recycled and pre-allocated segments past the end and refuses to overwrite a stream', async (t) => {
  const data = newDir();
  const res = await importWal({ dataDir: data, stream: 'main', walDir: fx.walDir });
  t.is(res.endLsn, fx.end);
  t.is(res.segments, fx.segments.length);
  t.true(res.skipped.every((s) => /recycled|pre-allocated|not a WAL segment|zero-filled/.test(s)), res.skipped.join('\n'));
  await t.throwsAsync(importWal({ dataDir: data, stream: 'main', walDir: fx.walDir }), { message: /stream main already exists/ });
  await t.throwsAsync(importWal({ dataDir: data, stream: '../x', walDir: fx.walDir }), { message: /invalid stream name/ });
});

test('two streams on one node: clients choose with -c stream=, and a removed stream ends its senders cleanly', async (t) => {
  const data = newDir();
  await importWal({ dataDir: data, stream: 'alpha', walDir: fx.walDir });
  await importWal({ dataDir: data, stream: 'beta', walDir: other.walDir });
  const n = await startTestNode({ dataDir: data });
  t.teardown(() => n.stop());
  const a = await ReplicationClient.connect({ host: n.host, port: n.port, options: '-c stream=alpha' });
  const b = await ReplicationClient.connect({ host: n.host, port: n.port, options: '-c stream=beta' });
  t.is((await a.identifySystem()).systemId, fx.systemId);
  t.is((await b.identifySystem()).systemId, other.systemId);
  const e = await t.throwsAsync(ReplicationClient.connect({ host: n.host, port: n.port }));
  t.regex(e!.message, /stream "main" does not exist/);
  const beta = n.node.stream('beta');
  const copy = b.startReplication(`START_REPLICATION ${formatLsn(beta.oldestLsn!)}`);
  copy.onXLogData = () => undefined;
  copy.onKeepalive = () => undefined;
  await copy.started;
  const removing = beta.remove();
  const end = await copy.done;
  t.is(end.error?.code, '00000');
  t.regex(end.error!.message, /^ending streaming to .*: stream removed$/);
  await removing;
  t.deepEqual(await readdir(path.join(data, 'streams')), ['alpha']);
  t.is((await a.identifySystem()).systemId, fx.systemId, 'the other stream is untouched');
  await a.close();
  await b.close();
  await rm(path.join(data, 'streams', 'alpha', 'nothing'), { force: true });
});

test('a stream whose WAL ends below its commit_lsn is refused at start-up', async (t) => {
  const data = newDir();
  await importWal({ dataDir: data, stream: 'main', walDir: fx.walDir });
  // Lose the last segment behind the node's back.
  const dir = path.join(data, 'streams', 'main');
  const last = (await readdir(dir)).filter((f) => /^[0-9A-F]{24}/.test(f)).sort().at(-1)!;
  await rm(path.join(dir, last));
  const e = await t.throwsAsync(startNode({ dataDir: data, listenPg: '127.0.0.1:0', listenHttp: '127.0.0.1:0', logger: (await import('../ts/log.js')).silentLogger() }));
  t.regex(e!.message, /stream main: valid WAL ends at .*, below commit_lsn .*; WAL that clients may have received is missing, refusing to start/);
});

test('a bad --upstream is refused at start with one line', async (t) => {
  const r = await run(['node', '--data-dir', newDir(), '--listen-pg', '127.0.0.1:0', '--listen-http', '127.0.0.1:0', '--upstream', 'host=x bogus=1']);
  t.is(r.code, 1);
  t.is(r.stderr, 'walkeeper: invalid connection option "bogus"\n');
});
