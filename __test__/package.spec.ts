// Issue 7 acceptance e: `npm pack` gives a package that installs offline
// into an empty directory and runs from its prebuilt linux-x64 binary with
// no Rust toolchain on PATH: `npx walkeeper --help`, and a short node run.

import { spawn, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

import { createTempDir, freePort, type TempDir } from './harness/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-pack-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

// node and npm, and the system's tools — but not ~/.cargo/bin.
const PATH = [...new Set([path.dirname(process.execPath), '/usr/local/bin', '/usr/bin', '/bin'])].join(':');

function run(cmd: string, args: string[], cwd: string, timeoutMs = 180_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, env: { PATH, HOME: process.env.HOME ?? '/root', npm_config_update_notifier: 'false' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

test('the packed tarball installs offline into an empty directory and runs without cargo on PATH', async (t) => {
  if (process.platform !== 'linux' || process.arch !== 'x64') return t.fail(`only linux-x64 is built here, not ${process.platform}-${process.arch}`);
  t.not(spawnSync('sh', ['-c', 'command -v cargo'], { env: { PATH } }).status, 0, 'cargo is not on the PATH the install runs with');

  // dist/ and the binary are built by `npm test` before the specs run: pack them as they are.
  const packed = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp.path], root);
  t.is(packed.code, 0, packed.out);
  const info = JSON.parse(packed.out.slice(packed.out.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  const files = info[0]!.files.map((f) => f.path);
  t.true(files.includes('dist/cli/main.js'));
  t.true(files.includes('walkeeper.linux-x64-gnu.node'), 'the prebuilt binary is in the package');
  t.false(files.some((f) => /^(ts|crates|__test__|target)\//.test(f)), `no sources or build outputs: ${files.filter((f) => /^(ts|crates|__test__|target)\//.test(f)).slice(0, 5).join(', ')}`);
  // The runtime dependencies are bundled (so the install needs no registry), the development ones are not.
  t.true(files.some((f) => f.startsWith('node_modules/pino/')) && files.some((f) => f.startsWith('node_modules/etcd3/')));
  t.false(files.some((f) => /^node_modules\/(ava|typescript|tsx|@napi-rs|playwright-core)\//.test(f)), 'no development dependencies');

  const app = path.join(tmp.path, 'app');
  await run('mkdir', ['-p', app], tmp.path);
  await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
  const installed = await run('npm', ['install', '--offline', '--no-audit', '--no-fund', path.join(tmp.path, info[0]!.filename)], app);
  t.is(installed.code, 0, installed.out);

  const help = await run('npx', ['--offline', 'walkeeper', '--help'], app);
  t.is(help.code, 0, help.out);
  t.regex(help.out, /^walkeeper \d+\.\d+\.\d+ — a durable WAL service for PostgreSQL/m);

  // The restore_command's shell fast path finds the package through npm's .bin link.
  const fetchHelp = await run(path.join(app, 'node_modules', '.bin', 'walkeeper-fetch'), ['--help'], app);
  t.is(fetchHelp.code, 0, fetchHelp.out);
  t.regex(fetchHelp.out, /^Usage: walkeeper fetch /m);

  // A short node run: it starts (the native core loads), answers HTTP, and stops on SIGTERM with exit 0.
  const [pg, http] = [await freePort(), await freePort()];
  const node = spawn(path.join(app, 'node_modules', '.bin', 'walkeeper'), ['node', '--data-dir', path.join(app, 'data'), '--listen-pg', `127.0.0.1:${pg}`, '--listen-http', `127.0.0.1:${http}`], {
    cwd: app,
    env: { PATH, HOME: process.env.HOME ?? '/root' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  node.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((r) => node.on('exit', (c) => r(c)));
  t.teardown(() => node.kill('SIGKILL'));
  let health: { status: string } | null = null;
  for (let i = 0; i < 200 && !health && node.exitCode === null; i++) {
    health = await fetch(`http://127.0.0.1:${http}/healthz`).then((r) => r.json() as Promise<{ status: string }>, () => null);
    if (!health) await new Promise((r) => setTimeout(r, 50));
  }
  t.is(health?.status, 'ok', err);
  node.kill('SIGTERM');
  t.is(await exited, 0, err);
});
