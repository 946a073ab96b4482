// The `walkeeper` command as an operator meets it: the compiled bin, help,
// one readable line and a non-zero exit on bad input, and `scan` on a real
// pg_wal.

import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import test from 'ava';

import { createTempDir, generateWal, lsnOf, registerCleanupHooks, withPostgres } from './harness/index.js';

registerCleanupHooks(test);

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'dist', 'cli', 'main.js');

function walkeeper(args: string[], opts: { viaNpx?: boolean } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const [cmd, argv] = opts.viaNpx ? ['npx', ['--no-install', 'walkeeper', ...args]] : [process.execPath, [bin, ...args]];
  return new Promise((resolve) => {
    execFile(cmd, argv, { cwd: root, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('npx walkeeper --help works from the package', async (t) => {
  const r = await walkeeper(['--help'], { viaNpx: true });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^walkeeper \d+\.\d+\.\d+ — a durable WAL service for PostgreSQL/);
  t.regex(r.stdout, /scan <wal-dir>/);
});

test('help, version and per-command help', async (t) => {
  const v = await walkeeper(['--version']);
  t.is(v.code, 0);
  t.regex(v.stdout, /^\d+\.\d+\.\d+\n$/);
  const h = await walkeeper(['help', 'scan']);
  t.is(h.code, 0);
  t.regex(h.stdout, /^Usage: walkeeper scan <wal-dir>/);
  const h2 = await walkeeper(['scan', '--help']);
  t.is(h2.stdout, h.stdout);
});

test('bad input: one readable line on stderr and a non-zero exit', async (t) => {
  const unknown = await walkeeper(['frobnicate']);
  t.is(unknown.code, 2);
  t.is(unknown.stderr, 'walkeeper: unknown command "frobnicate" (see walkeeper --help)\n');
  const badTli = await walkeeper(['scan', '/tmp', '--tli', 'abc']);
  t.is(badTli.code, 2);
  t.is(badTli.stderr, 'walkeeper: --tli must be an integer from 1 to 4294967295, not "abc"\n');
  const badOpt = await walkeeper(['scan', '/tmp', '--bogus']);
  t.is(badOpt.code, 2);
  t.regex(badOpt.stderr, /^walkeeper: Unknown option '--bogus'.*\n$/);
  const missing = await walkeeper(['scan', '/nonexistent/wal']);
  t.is(missing.code, 1);
  t.is(missing.stderr, 'walkeeper: cannot read directory /nonexistent/wal: ENOENT\n');
  const tmp = await createTempDir();
  t.teardown(() => tmp.cleanup());
  const empty = await walkeeper(['scan', tmp.path]);
  t.is(empty.code, 1);
  t.is(empty.stderr, `walkeeper: ${tmp.path} holds no WAL segment files\n`);
  const badStart = await walkeeper(['scan', tmp.path, '--start', 'zz']);
  t.is(badStart.code, 1);
  t.is(badStart.stderr.split('\n').length, 2, 'one line');
});

test('walkeeper scan on a live pg_wal reports the server flush position', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1, conf: { autovacuum: 'off' } });
  await generateWal(pg, { minBytes: 3 * 1024 * 1024, switches: 1 });
  for (let attempt = 0; attempt < 5; attempt++) {
    const [before] = await pg.query<{ f: string }>('SELECT pg_current_wal_flush_lsn()::text AS f');
    const r = await walkeeper(['scan', pg.walDir, '--json']);
    const [after] = await pg.query<{ f: string }>('SELECT pg_current_wal_flush_lsn()::text AS f');
    if (before!.f !== after!.f) continue;
    t.is(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    t.is(j.end_lsn, before!.f);
    t.is(j.pg_version, 15);
    t.is(j.segment_size, 1024 * 1024);
    t.is(j.system_id, (await pg.systemId()).toString());
    t.true((j.records as number) > 100);
    const text = await walkeeper(['scan', pg.walDir]);
    t.regex(text.stdout, new RegExp(`^end of valid WAL: ${before!.f.replace('/', '\\/')}\n`));
    t.true(lsnOf(j.end_lsn as string) > 0n);
    return;
  }
  t.fail('WAL kept moving');
});
