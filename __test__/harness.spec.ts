import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import test from 'ava';

import {
  fmtLsn,
  freePort,
  generateWal,
  lsnOf,
  pgWaldump,
  processAlive,
  registerCleanupHooks,
  withPostgres,
} from './harness/index.js';

registerCleanupHooks(test);

const SEGMENT_NAME = /^[0-9A-F]{24}$/;

test('lsnOf / fmtLsn round-trip', (t) => {
  t.is(lsnOf('0/0'), 0n);
  t.is(lsnOf('16/B374D848'), 0x16b374d848n);
  t.is(lsnOf('ffffffff/ffffffff'), 0xffff_ffff_ffff_ffffn);
  t.is(fmtLsn(0x16b374d848n), '16/B374D848');
  t.is(fmtLsn(0n), '0/0');
  t.throws(() => lsnOf('nope'));
});

test('freePort returns a usable port', async (t) => {
  const p = await freePort();
  t.true(Number.isInteger(p) && p > 0 && p < 65536);
});

test('postgres with 1 MiB segments: generate WAL, pg_waldump reads it, stop ends the server', async (t) => {
  const pg = await withPostgres(t, { walSegSizeMB: 1, conf: { wal_keep_size: '64MB' } });
  t.is(pg.host, '127.0.0.1');
  t.is(pg.walDir, path.join(pg.dataDir, 'pg_wal'));
  t.regex(pg.connectionString(), /^postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/);

  const [{ setting }] = await pg.query<{ setting: string }>(`SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'`);
  t.is(Number(setting), 1024 * 1024);
  const [{ wal_level }] = await pg.query<{ wal_level: string }>('SHOW wal_level');
  t.is(wal_level, 'replica');
  const sysid = await pg.systemId();
  t.true(sysid > 0n);

  const { startLsn, endLsn } = await generateWal(pg, { minBytes: 8 * 1024 * 1024, bigRecords: true, switches: 2 });
  t.true(endLsn - startLsn >= 8n * 1024n * 1024n, `only ${endLsn - startLsn} bytes of WAL`);

  const segments = readdirSync(pg.walDir).filter((f) => SEGMENT_NAME.test(f)).sort();
  t.true(segments.length >= 8, `segments: ${segments.join(' ')}`);
  for (const s of segments) t.is(statSync(path.join(pg.walDir, s)).size, 1024 * 1024);

  const r = await pgWaldump(['-p', pg.walDir, '-s', fmtLsn(startLsn), '-e', fmtLsn(endLsn), '--stats']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /Total/);
  // the > 1 MiB logical message is a single record that crosses segments
  const msgs = await pgWaldump(['-p', pg.walDir, '-s', fmtLsn(startLsn), '-e', fmtLsn(endLsn), '-r', 'LogicalMessage']);
  t.is(msgs.code, 0, msgs.stderr);
  const lens = [...msgs.stdout.matchAll(/len \(rec\/tot\):\s*(\d+)\//g)].map((m) => Number(m[1]));
  t.true(lens.some((l) => l > 1024 * 1024), `logical message lengths: ${lens.join(',')}`);

  const pid = pg.pid;
  t.truthy(pid);
  t.true(processAlive(pid!));
  await pg.stop();
  await pg.stop(); // idempotent
  t.false(processAlive(pid!));
  t.false(pg.running);
  t.false(existsSync(path.join(pg.dataDir, 'postmaster.pid')));
});

test('kill() is a crash; start() recovers on the same data dir and port', async (t) => {
  const pg = await withPostgres(t);
  const sysid = await pg.systemId();
  await pg.query('CREATE TABLE survives (x int)');
  await pg.query('INSERT INTO survives VALUES (42)');
  const pid = pg.pid!;
  const port = pg.port;
  await pg.kill();
  t.false(processAlive(pid));
  await pg.start();
  t.is(pg.port, port);
  t.not(pg.pid, pid);
  t.is(await pg.systemId(), sysid);
  t.deepEqual(await pg.query('SELECT x FROM survives'), [{ x: 42 }]);
  t.regex(pg.logTail(200), /database system was interrupted|was not properly shut down/);
});
