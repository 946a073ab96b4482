// Issue 7 acceptance a: `walkeeper demo --duration 40` exits 0; its output
// shows WAL flowing, a failover with its reason, and the killed node
// catching up after its restart; nothing is left running and its temp
// directory is gone.

import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'dist', 'cli', 'main.js');

/** Processes whose command line mentions `s`. */
function processesMentioning(s: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(s)) out.push(`${e}: ${cmd}`);
    } catch {
      // gone
    }
  }
  return out;
}

test('walkeeper demo --duration 40: WAL flows, a failover with its reason, catch-up after the restart, nothing left behind', async (t) => {
  const p = spawn(process.execPath, [bin, 'demo', '--duration', '40'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WALKEEPER_DEMO_KEEP: '' } });
  let out = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  p.stderr.on('data', (b: Buffer) => (out += b.toString()));
  t.teardown(() => p.kill('SIGKILL'));
  const code = await new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  t.is(code, 0, out.slice(-3000));
  const dir = /^walkeeper demo in (\S+) /m.exec(out)?.[1];
  t.truthy(dir, out.slice(0, 500));

  // WAL flowing: the amount since the start grows to MiBs, and the nodes follow.
  const amounts = [...out.matchAll(/· ([\d.]+) (B|KiB|MiB|GiB) of WAL since the start/g)].map((m) => Number(m[1]) * { B: 1, KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 }[m[2] as 'B']);
  t.true(amounts.length >= 5, 'the table was printed as it ran');
  t.true(amounts.at(-1)! > amounts[0]! && amounts.at(-1)! > 1 << 20, `WAL flowed: ${amounts.map((a) => Math.round(a / 1024)).join(', ')} KiB`);
  t.regex(out, /^node 1 +streaming +\d+\/[0-9A-F]+ +\d+\/[0-9A-F]+ /m);
  t.regex(out, /standby replayed \d+\/[0-9A-F]+/);

  // The failover: the receiver's node is killed, the receiver switches, with its reason.
  const kill = /^>>> SIGKILL node (\d), the node walkeeper receive streams from/m.exec(out);
  t.truthy(kill, 'a node was killed');
  const after = out.slice(kill!.index);
  t.regex(after, /walkeeper receive: streaming from http:\/\/127\.0\.0\.1:\d+ \([^)]+\) at \d+\/[0-9A-F]+: NoExistingConnection: not connected/);
  // ... and the killed node catches up after its restart.
  t.regex(after, new RegExp(`^>>> restarted node ${kill![1]}`, 'm'));
  t.regex(after, new RegExp(`^>>> node ${kill![1]} caught up: flush_lsn \\d+/[0-9A-F]+`, 'm'));
  t.regex(out, /^done: [\d.]+ (KiB|MiB|GiB) of WAL flowed through the nodes; node \d was killed and caught up after its restart$/m);

  // Nothing left behind.
  t.regex(out, /stopped everything and removed the demo directory/);
  t.false(existsSync(dir!), `${dir} removed`);
  t.deepEqual(processesMentioning(dir!), []);
});

test('walkeeper demo without PostgreSQL binaries says how to install them', async (t) => {
  const p = spawn(process.execPath, [bin, 'demo', '--duration', '30'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WALKEEPER_PG_BINDIR: '/nonexistent' } });
  let err = '';
  p.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  t.is(code, 1);
  t.regex(err.trim(), /^walkeeper: WALKEEPER_PG_BINDIR=\/nonexistent lacks initdb, .*apt-get install postgresql-15.*$/);
  t.is(err.trim().split('\n').length, 1);
});
