// Issue 7 acceptance b: `walkeeper node` takes its settings from defaults,
// walkeeper.json (or --config), WALKEEPER_* variables and flags, in that
// order of precedence; a bad setting exits non-zero with one readable line
// naming where it came from.

import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

import { createTempDir, freePort, type TempDir } from './harness/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'dist', 'cli', 'main.js');
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-config-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

/** Runs `walkeeper node …` in `cwd`; when it serves HTTP, reads /healthz and stops it. */
async function runNode(cwd: string, args: string[], env: Record<string, string>, httpPort?: number): Promise<{ code: number | null; stderr: string; health: { node_id: number } | null }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WALKEEPER_')));
  const p = spawn(process.execPath, [bin, 'node', ...args], { cwd, env: { ...clean, WALKEEPER_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  let health: { node_id: number } | null = null;
  if (httpPort !== undefined) {
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && p.exitCode === null) {
      health = await fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.json() as Promise<{ node_id: number }>, () => null);
      if (health) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    p.kill('SIGTERM');
  }
  const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
  if (code === null) p.kill('SIGKILL');
  return { code, stderr, health };
}

test('precedence: defaults < walkeeper.json < WALKEEPER_* < flags; --config names another file', async (t) => {
  const dir = path.join(tmp.path, 'prec');
  await mkdir(dir);
  const [pgPort, httpPort] = [await freePort(), await freePort()];
  await writeFile(path.join(dir, 'walkeeper.json'), JSON.stringify({ 'node-id': 5, 'listen-pg': `127.0.0.1:${pgPort}`, 'listen-http': `127.0.0.1:${httpPort}`, 'data-dir': path.join(dir, 'data') }));
  // The file alone.
  let r = await runNode(dir, [], {}, httpPort);
  t.is(r.health?.node_id, 5, r.stderr);
  t.is(r.code, 0, r.stderr);
  // A variable beats the file.
  r = await runNode(dir, [], { WALKEEPER_NODE_ID: '6' }, httpPort);
  t.is(r.health?.node_id, 6, r.stderr);
  // A flag beats both.
  r = await runNode(dir, ['--node-id', '7'], { WALKEEPER_NODE_ID: '6' }, httpPort);
  t.is(r.health?.node_id, 7, r.stderr);
  // --config reads another file instead of ./walkeeper.json; the rest are defaults (node id 1).
  const other = path.join(dir, 'other.json');
  await writeFile(other, JSON.stringify({ 'listen-pg': `127.0.0.1:${pgPort}`, 'listen-http': `127.0.0.1:${httpPort}`, 'data-dir': path.join(dir, 'data'), peers: ['http://127.0.0.1:9'] }));
  r = await runNode(dir, ['--config', other], {}, httpPort);
  t.is(r.health?.node_id, 1, r.stderr);
  t.is(r.code, 0);
});

test('a bad setting: non-zero exit and one line naming the setting and where it came from', async (t) => {
  const dir = path.join(tmp.path, 'bad');
  await mkdir(dir);
  const cases: [string, string[], Record<string, string>, string | null, RegExp][] = [
    ['not an integer, in the file', [], {}, '{"node-id": "x"}', /^walkeeper: "node-id" in .*walkeeper\.json must be an integer from 1 to 2147483647, not "x"$/],
    ['out of range, in a variable', [], { WALKEEPER_NODE_ID: '0' }, null, /^walkeeper: WALKEEPER_NODE_ID must be an integer from 1 to 2147483647, not "0"$/],
    ['unknown key in the file', [], {}, '{"nod-id": 1}', /^walkeeper: config file .*walkeeper\.json: unknown setting "nod-id" \(settings are named like the flags: data-dir, /],
    ['not JSON', [], {}, '{', /^walkeeper: config file .*walkeeper\.json is not valid JSON: /],
    ['a missing --config', ['--config', 'nope.json'], {}, null, /^walkeeper: cannot read config file nope\.json: ENOENT$/],
    ['a bad flag value', ['--listen-pg', 'nope'], {}, null, /^walkeeper: --listen-pg must be host:port, not "nope"$/],
    ['a bad URL in a variable', [], { WALKEEPER_PEERS: 'ftp://x' }, null, /^walkeeper: WALKEEPER_PEERS: "ftp:\/\/x" is not an http:\/\/ URL$/],
    ['a bad size in a variable', [], { WALKEEPER_WAL_KEEP_SIZE: '1.5GB' }, null, /^walkeeper: WALKEEPER_WAL_KEEP_SIZE must be a size such as 512MB or 1GB, not "1.5GB"$/],
    ['a bad enum in the file', [], {}, '{"auth": "md5"}', /^walkeeper: "auth" in .*walkeeper\.json must be trust or scram, not "md5"$/],
    ['peers and broker from two layers', ['--broker', 'http://127.0.0.1:2379'], { WALKEEPER_PEERS: 'http://127.0.0.1:1' }, null, /^walkeeper: WALKEEPER_PEERS and --broker exclude each other/],
    ['a bad log level', ['--log-level', 'loud'], {}, null, /^walkeeper: --log-level must be trace or debug or info or warn or error or fatal or silent, not "loud"$/],
    ['a bad remote storage URL', ['--remote-storage', 'gs://b/x'], {}, null, /^walkeeper: --remote-storage: remote storage must be s3:\/\/bucket\/prefix or file:\/\/\/dir, not "gs:\/\/b\/x"$/],
    ['a bad S3 bucket in the file', [], {}, '{"remote-storage": "s3://B_ad/x"}', /^walkeeper: "remote-storage" in .*walkeeper\.json: "B_ad" is not an S3 bucket name \(in "s3:\/\/B_ad\/x"\)$/],
    ['an endpoint without remote storage', [], { WALKEEPER_REMOTE_ENDPOINT: 'http://127.0.0.1:1' }, null, /^walkeeper: WALKEEPER_REMOTE_ENDPOINT needs --remote-storage s3:\/\/bucket\/prefix$/],
  ];
  for (const [what, args, env, file, re] of cases) {
    const d = path.join(dir, what.replace(/\W+/g, '-'));
    await mkdir(d);
    if (file !== null) await writeFile(path.join(d, 'walkeeper.json'), file);
    const r = await runNode(d, args, env);
    t.is(r.code, 2, `${what}: exit status`);
    const lines = r.stderr.trimEnd().split('\n');
    t.is(lines.length, 1, `${what}: one line (${r.stderr})`);
    t.regex(lines[0]!, re, what);
  }
});

test('logs: JSON lines by default, readable lines on a terminal', async (t) => {
  const { readableLine, createLogger } = await import('../ts/log.js');
  t.is(
    readableLine({ level: 'warn', time: '2026-11-26T01:02:03.456Z', pid: 1, node_id: 2, stream: 'main', client: 'standby1@127.0.0.1:5000', msg: 'terminating walsender', timeout_ms: 60000, reason: 'no reply' }),
    '01:02:03.456 WARN  [node 2 stream main client standby1@127.0.0.1:5000] terminating walsender  timeout_ms=60000 reason="no reply"\n',
  );
  t.is(readableLine({ level: 'info', time: '2026-11-26T01:02:03.456Z', msg: 'walkeeper node started' }), '01:02:03.456 INFO  walkeeper node started\n');
  // Not a terminal: JSON; a terminal: readable.
  const { Writable } = await import('node:stream');
  const sink = (tty: boolean) => {
    const lines: string[] = [];
    const w = Object.assign(new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }), tty ? { isTTY: true } : {});
    return { w, lines };
  };
  const plain = sink(false);
  createLogger({ level: 'info', destination: plain.w }).child({ stream: 'main' }).info({ lsn: '0/3000000' }, 'hello');
  const rec = JSON.parse(plain.lines.join('')) as Record<string, unknown>;
  t.like(rec, { level: 'info', stream: 'main', lsn: '0/3000000', msg: 'hello' });
  const tty = sink(true);
  createLogger({ level: 'info', destination: tty.w }).child({ stream: 'main' }).info({ lsn: '0/3000000' }, 'hello');
  t.regex(tty.lines.join(''), /^\d\d:\d\d:\d\d\.\d{3} INFO  \[stream main\] hello  lsn=0\/3000000\n$/);
});
