// ReplicationClient against a real PostgreSQL 15 primary (and, for the
// endings a real server cannot be made to produce on demand, against a
// small scripted server built from the codec).

import { execFileSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import test, { type ExecutionContext } from 'ava';

import { formatLsn, parseLsn, segmentFileName, segmentNumber, segmentStart } from '../ts/lsn.js';
import { ReplicationClient, type ConnectOptions, type CopyBoth } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import type { FrontendMessage } from '../ts/protocol/messages.js';
import { ServerFramer } from '../ts/protocol/parser.js';
import { decodeStandbyStatus, xlogData, type Keepalive, type XLogData } from '../ts/protocol/replication.js';
import { backend } from '../ts/protocol/serializer.js';

import { chownToServerUserSync, freePort, registerCleanupHooks, withPostgres, type PgCluster } from './harness/index.js';

registerCleanupHooks(test);

const SEG = 16 * 1024 * 1024;

async function connect(t: ExecutionContext, pg: { host: string; port: number }, opts: Partial<ConnectOptions> = {}): Promise<ReplicationClient> {
  const c = await ReplicationClient.connect({ host: pg.host, port: pg.port, applicationName: 'walkeeper-test', ...opts });
  t.teardown(() => c.close());
  return c;
}

/** Collects XLogData, checking that each message starts where the previous one ended. */
function collectWal(copy: CopyBoth, from: bigint): { chunks: Buffer[]; gaps: string[]; reached: (lsn: bigint) => Promise<void> } {
  const chunks: Buffer[] = [];
  const gaps: string[] = [];
  let expected = from;
  let waiters: Array<{ lsn: bigint; resolve: () => void }> = [];
  copy.onXLogData = (m: XLogData) => {
    if (m.start !== expected) gaps.push(`got ${formatLsn(m.start)}, expected ${formatLsn(expected)}`);
    expected = m.start + BigInt(m.data.length);
    chunks.push(m.data);
    waiters = waiters.filter((w) => (expected >= w.lsn ? (w.resolve(), false) : true));
  };
  return {
    chunks,
    gaps,
    reached: (lsn) => (expected >= lsn ? Promise.resolve() : new Promise((resolve) => waiters.push({ lsn, resolve }))),
  };
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function pollFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ------------------------------------------------------------- real server

test('trust: startup parameters, IDENTIFY_SYSTEM, SHOW, errors leave the connection usable', async (t) => {
  const pg = await withPostgres(t);
  const c = await connect(t, pg);
  t.false(c.encrypted);
  t.is(c.parameters.integer_datetimes, 'on');
  t.regex(c.serverVersion ?? '', /^15\.\d+/);
  t.truthy(c.backendKey);
  t.true(c.backendKey!.pid > 0);

  const sys = await c.identifySystem();
  t.is(sys.systemId, await pg.systemId());
  t.is(sys.timeline, 1);
  t.is(sys.dbname, null);
  t.true(sys.xlogpos > 0n);

  const raw = await c.query('IDENTIFY_SYSTEM');
  t.deepEqual(
    raw.fields.map((f) => [f.name, f.typeOid, f.typeLen, f.typeMod]),
    [
      ['systemid', 25, -1, -1],
      ['timeline', 23, 4, -1],
      ['xlogpos', 25, -1, -1],
      ['dbname', 25, -1, -1],
    ],
  );
  t.deepEqual(raw.tags, ['IDENTIFY_SYSTEM']);
  t.is(raw.results.length, 1);

  const show = await c.query('SHOW wal_segment_size');
  t.deepEqual(show.rows, [['16MB']]);
  t.is(show.fields[0]!.name, 'wal_segment_size');
  t.deepEqual(show.tags, ['SHOW']);
  t.deepEqual((await c.query('SHOW data_directory_mode')).rows, [['0700']]);

  const noHistory = await t.throwsAsync(c.query('TIMELINE_HISTORY 2'), { instanceOf: PgError });
  t.is(noHistory?.code, '58P01');
  t.is(noHistory?.severity, 'ERROR');
  t.regex(noHistory?.message ?? '', /could not open file "pg_wal\/00000002\.history"/);

  const sql = await t.throwsAsync(c.query('SELECT 1'), { instanceOf: PgError });
  t.is(sql?.code, '0A000');
  t.regex(sql?.message ?? '', /cannot execute SQL commands in WAL sender for physical replication/);

  const slot = await c.query('READ_REPLICATION_SLOT nope');
  t.deepEqual(slot.rows, [[null, null, null]]);

  t.is((await c.identifySystem()).systemId, sys.systemId);
});

test('START_REPLICATION from a segment start: contiguous WAL equal to pg_wal, keepalive answered, client-initiated end', async (t) => {
  const pg = await withPostgres(t, { conf: { wal_sender_timeout: '2s' } });
  await pg.query('CREATE TABLE filler AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g');
  const c = await connect(t, pg);
  const sys = await c.identifySystem();
  const start = segmentStart(sys.xlogpos, SEG);

  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`);
  const wal = collectWal(copy, start);
  const keepalives: Keepalive[] = [];
  const firstRequest = new Promise<Keepalive>((resolve) => {
    copy.onKeepalive = (k) => {
      keepalives.push(k);
      if (k.replyRequested) {
        copy.sendStatus({ write: copy.lastReceived, flush: copy.lastReceived, apply: 0n });
        resolve(k);
      }
    };
  });
  t.throws(() => c.query('IDENTIFY_SYSTEM'), { message: /another command is in progress/ });
  t.true(await copy.started);
  t.true(copy.inCopy);
  await withTimeout(wal.reached(sys.xlogpos), 20_000, `WAL up to ${formatLsn(sys.xlogpos)}`);
  t.deepEqual(wal.gaps, []);

  // the bytes are those of the segment file, from its very first byte (long page header)
  const got = Buffer.concat(wal.chunks);
  t.is(got.readUInt16LE(0), 0xd110, 'xlp_magic of PG15');
  t.is(got.readUInt16LE(2) & 0x2, 0x2, 'XLP_LONG_HEADER');
  t.is(got.readBigUInt64LE(8), start, 'xlp_pageaddr');
  const file = readFileSync(path.join(pg.walDir, segmentFileName(1, segmentNumber(start, SEG), SEG)));
  const n = Math.min(got.length, SEG);
  t.true(got.subarray(0, n).equals(file.subarray(0, n)), 'streamed WAL equals the segment file');

  // wal_sender_timeout 2s: after 1 s without a reply the walsender asks for one
  const k = await withTimeout(firstRequest, 20_000, 'a keepalive with replyRequested');
  t.true(k.walEnd >= sys.xlogpos);
  t.true(k.sendTime > 0n);
  const reported = formatLsn(copy.lastReceived);
  const row = await pollFor('pg_stat_replication to show our reply', async () => {
    const rows = await pg.query<{ write_lsn: string | null; application_name: string; state: string }>(
      'SELECT write_lsn::text, application_name, state FROM pg_stat_replication',
    );
    return rows.find((r) => r.application_name === 'walkeeper-test' && r.write_lsn !== null && parseLsn(r.write_lsn) >= parseLsn(reported));
  });
  t.is(row.state, 'streaming');

  const res = await withTimeout(copy.end(), 10_000, 'the end of COPY');
  t.is(res.reason, 'clientEnd');
  t.true(res.usable);
  t.deepEqual(res.tags, ['START_STREAMING', 'START_REPLICATION']);
  t.is(res.nextTimeline, null);
  t.is(res.error, null);
  t.false(copy.inCopy);
  t.false(copy.sendStatus({ write: 0n, flush: 0n, apply: 0n }), 'nothing is sent after the end');
  t.is(copy.done, copy.done);

  // the same connection goes on
  t.is((await c.identifySystem()).systemId, sys.systemId);
});

test('START_REPLICATION: async iterator, errors before COPY, and W then E when ahead of the flush position', async (t) => {
  const pg = await withPostgres(t);
  const c = await connect(t, pg);
  const sys = await c.identifySystem();
  const start = segmentStart(sys.xlogpos, SEG);

  // iterate a few messages, then end
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`);
  let expected = start;
  let count = 0;
  for await (const m of copy) {
    if (m.type !== 'xlogData') continue;
    t.is(m.start, expected);
    expected = m.start + BigInt(m.data.length);
    if (expected >= sys.xlogpos || ++count >= 3) break;
  }
  // Received (framed) can be ahead of what the loop took: messages may already be queued.
  t.true(copy.lastReceived >= expected);
  const res = await copy.end();
  t.is(res.reason, 'clientEnd');
  t.deepEqual(res.tags, ['START_STREAMING', 'START_REPLICATION']);

  // a timeline the server never had: ErrorResponse instead of CopyBothResponse
  const bad = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 2`);
  const e1 = await t.throwsAsync(bad.started, { instanceOf: PgError });
  t.regex(e1?.message ?? '', /requested timeline 2 is not in this server's history/);
  await t.throwsAsync(bad.done, { is: e1 });
  t.false(bad.sendStatus({ write: 0n, flush: 0n, apply: 0n }));

  const noSlot = c.startReplication(`START_REPLICATION SLOT "nope" ${formatLsn(start)} TIMELINE 1`);
  const e2 = await t.throwsAsync(noSlot.done, { instanceOf: PgError });
  t.is(e2?.code, '42704');

  // ahead of the server's WAL: CopyBothResponse first, then the error, then ReadyForQuery
  const ahead = c.startReplication('START_REPLICATION FF/0 TIMELINE 1');
  t.true(await ahead.started);
  const e3 = await t.throwsAsync(ahead.done, { instanceOf: PgError });
  t.is(e3?.code, 'XX000');
  t.regex(e3?.message ?? '', /requested starting point FF\/0 is ahead of the WAL flush position of this server/);

  // the connection is still usable after all of that
  t.is((await c.identifySystem()).timeline, 1);
});

test('server shutdown while streaming: C "COPY 0" in COPY ends the stream', async (t) => {
  const pg = await withPostgres(t);
  const c = await connect(t, pg);
  const sys = await c.identifySystem();
  const start = segmentStart(sys.xlogpos, SEG);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`);
  const wal = collectWal(copy, start);
  // the walsender waits for the client to confirm everything before it exits
  copy.onKeepalive = (k) => {
    if (k.replyRequested) copy.sendStatus({ write: copy.lastReceived, flush: copy.lastReceived, apply: 0n });
  };
  await withTimeout(wal.reached(sys.xlogpos), 20_000, 'WAL');
  const stopping = pg.stop('fast');
  const res = await withTimeout(copy.done, 30_000, 'the end of COPY');
  await stopping;
  t.is(res.reason, 'commandComplete');
  t.deepEqual(res.tags, ['COPY 0']);
  t.false(res.usable);
  t.deepEqual(wal.gaps, []);
  await pollFor('the client to notice the close', async () => (c.closed ? true : undefined), 5000);
  await t.throwsAsync(async () => c.query('IDENTIFY_SYSTEM'));
});

test('timeline switch: TIMELINE_HISTORY, server CopyDone at the end of a historic timeline, start exactly at the switch point', async (t) => {
  const pg = await withPostgres(t);
  await pg.query('CREATE TABLE filler AS SELECT g FROM generate_series(1, 5000) g');
  await promoteInPlace(pg);

  const c = await connect(t, pg);
  const sys = await c.identifySystem();
  t.is(sys.timeline, 2);
  const hist = await c.timelineHistory(2);
  t.is(hist.filename, '00000002.history');
  const m = /^1\t([0-9A-F]+\/[0-9A-F]+)\t[^\n]*\n$/.exec(hist.content);
  t.truthy(m, JSON.stringify(hist.content));
  const switchpoint = parseLsn(m![1]!);

  // stream TLI 1 from the start of the segment holding the switch point: the
  // server sends WAL up to the switch point, then CopyDone
  const start = segmentStart(switchpoint, SEG);
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`);
  const wal = collectWal(copy, start);
  const res = await withTimeout(copy.done, 20_000, 'the server to end the historic timeline');
  t.is(res.reason, 'serverEnd');
  t.true(res.usable);
  t.deepEqual(res.nextTimeline, { timeline: 2, startLsn: switchpoint });
  t.deepEqual(res.tags, ['START_STREAMING', 'START_REPLICATION']);
  t.deepEqual(res.results[0]!.fields.map((f) => [f.name, f.typeOid]), [
    ['next_tli', 20],
    ['next_tli_startpos', 25],
  ]);
  t.deepEqual(wal.gaps, []);
  t.is(copy.lastReceived, switchpoint);

  // exactly at the switch point: no COPY at all, just the next timeline
  const none = c.startReplication(`START_REPLICATION ${formatLsn(switchpoint)} TIMELINE 1`);
  t.false(await none.started);
  const r2 = await none.done;
  t.is(r2.reason, 'noCopy');
  t.true(r2.usable);
  t.deepEqual(r2.nextTimeline, { timeline: 2, startLsn: switchpoint });
  t.deepEqual(r2.tags, ['START_STREAMING', 'START_REPLICATION']);

  t.is((await c.identifySystem()).timeline, 2);
});

/** Turns a primary into a standby of nothing (standby.signal) and promotes it: timeline 1 → 2. */
async function promoteInPlace(pg: PgCluster): Promise<void> {
  await pg.stop('fast');
  const signal = path.join(pg.dataDir, 'standby.signal');
  writeFileSync(signal, '');
  chownToServerUserSync(signal);
  await pg.start();
  const [{ promoted }] = await pg.query<{ promoted: boolean }>('SELECT pg_promote(true, 60) AS promoted');
  if (!promoted) throw new Error('pg_promote() failed');
}

test('password authentication: cleartext, MD5, SCRAM-SHA-256; wrong and missing passwords', async (t) => {
  const pg = await withPostgres(t, {
    hba: [
      'host replication clear_user 127.0.0.1/32 password',
      'host replication md5_user 127.0.0.1/32 md5',
      'host replication scram_user 127.0.0.1/32 scram-sha-256',
    ],
  });
  await pg.query(`CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear pw'`);
  await pg.query(`SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 pw'`);
  await pg.query(`CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram pw é'`);
  const [{ rolpassword }] = await pg.query<{ rolpassword: string }>(`SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'`);
  t.regex(rolpassword, /^md5/);
  const systemId = await pg.systemId();

  for (const [user, password] of [
    ['clear_user', 'clear pw'],
    ['md5_user', 'md5 pw'],
    ['scram_user', 'scram pw é'],
  ] as const) {
    const c = await connect(t, pg, { user, password });
    t.is((await c.identifySystem()).systemId, systemId, user);
    await c.close();
    t.true(c.closed);

    const wrong = await t.throwsAsync(ReplicationClient.connect({ host: pg.host, port: pg.port, user, password: 'nope' }), { instanceOf: PgError });
    t.is(wrong?.code, '28P01', user);
    t.is(wrong?.severity, 'FATAL');
    t.regex(wrong?.message ?? '', new RegExp(`password authentication failed for user "${user}"`));

    await t.throwsAsync(ReplicationClient.connect({ host: pg.host, port: pg.port, user }), { message: /no password was given/ });
  }
});

test('TLS: prefer falls back to plain, require fails without server SSL, then works once the server has a certificate', async (t) => {
  const pg = await withPostgres(t);
  const plain = await connect(t, pg, { ssl: 'prefer' });
  t.false(plain.encrypted);
  // prefer against a server without SSL ends on a socket a pump can be lent (libpq's default sslmode; node ingest relies on it)
  const lent = plain.lend();
  t.is(typeof lent?.fd, 'number');
  plain.giveBack(lent!.pending);
  t.is((await plain.identifySystem()).timeline, 1, 'given back, the connection works as before');
  await plain.close();
  await t.throwsAsync(ReplicationClient.connect({ host: pg.host, port: pg.port, ssl: 'require' }), { message: /does not support SSL, but SSL was required/ });

  // a self-signed certificate for "localhost", then ssl = on (reloadable)
  const crt = path.join(pg.dataDir, 'server.crt');
  const key = path.join(pg.dataDir, 'server.key');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', crt, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
  ], { stdio: 'ignore' });
  chmodSync(key, 0o600);
  chownToServerUserSync(key);
  chownToServerUserSync(crt);
  await pg.query(`ALTER SYSTEM SET ssl = on`);
  await pg.query(`SELECT pg_reload_conf()`);
  await pollFor('ssl = on', async () => ((await pg.query<{ ssl: string }>('SHOW ssl'))[0]!.ssl === 'on' ? true : undefined));

  const preferred = await connect(t, pg, { ssl: 'prefer' });
  t.true(preferred.encrypted, 'prefer takes TLS when the server offers it');
  t.is(preferred.lend(), null, 'a TLS connection has no descriptor to lend');
  t.is((await preferred.identifySystem()).timeline, 1);
  await preferred.close();

  const enc = await connect(t, pg, { ssl: 'require' });
  t.true(enc.encrypted);
  t.is((await enc.identifySystem()).timeline, 1);
  const rows = await pg.query<{ ssl: boolean }>(
    `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'walkeeper-test' AND a.backend_type = 'walsender'`,
  );
  t.true(rows.some((r) => r.ssl), JSON.stringify(rows));
  await enc.close();

  const verified = await connect(t, pg, { ssl: { ca: readFileSync(crt), servername: 'localhost' } });
  t.true(verified.encrypted);
  await verified.close();

  await t.throwsAsync(ReplicationClient.connect({ host: pg.host, port: pg.port, ssl: {} }), { message: /TLS handshake failed: .*self.signed/ });
});

// ------------------------------------------------------- scripted server

interface FakeSession {
  sock: net.Socket;
  /** Every message the client sent after startup. */
  received: FrontendMessage[];
}

/** A server that accepts any startup (answering SSLRequest with 'N') and hands queries to `onQuery`. */
async function fakeServer(
  t: ExecutionContext,
  onMessage: (m: FrontendMessage, s: FakeSession) => void,
  opts: { silent?: boolean } = {},
): Promise<{ port: number; sessions: FakeSession[] }> {
  const sessions: FakeSession[] = [];
  const server = net.createServer((sock) => {
    const session: FakeSession = { sock, received: [] };
    sessions.push(session);
    sock.on('error', () => undefined);
    if (opts.silent) return;
    const f = new ServerFramer();
    let ready = false;
    sock.on('data', (chunk: Buffer) => {
      f.push(chunk);
      for (;;) {
        if (!ready) {
          const p = f.nextStartup();
          if (!p) return;
          if (p.kind === 'ssl') {
            sock.write(backend.sslResponse('N'));
            continue;
          }
          ready = true;
          sock.write(
            Buffer.concat([
              backend.authenticationOk(),
              backend.parameterStatus('server_version', '15.4'),
              backend.parameterStatus('integer_datetimes', 'on'),
              backend.backendKeyData(7, 8),
              backend.readyForQuery(),
            ]),
          );
          continue;
        }
        const m = f.next();
        if (!m) return;
        session.received.push(m);
        if (m.type === 'terminate') sock.end();
        else onMessage(m, session);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.sock.destroy();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as net.AddressInfo).port, sessions };
}

const W = backend.copyBothResponse();
const wal = (start: bigint, n: number, fill = 1): Buffer => xlogData(start, start + BigInt(n), 0n, Buffer.alloc(n, fill));

test('scripted: ErrorResponse with SQLSTATE 00000 ends the stream normally (Neon style)', async (t) => {
  const srv = await fakeServer(t, (m, s) => {
    if (m.type === 'query') {
      s.sock.write(Buffer.concat([W, wal(0x2000000n, 100)]));
      s.sock.end(backend.errorResponse({ severity: 'ERROR', code: '00000', message: 'ending streaming to x at 0/2000064' }));
    }
  });
  const c = await connect(t, { host: '127.0.0.1', port: srv.port }, { ssl: 'prefer' });
  t.false(c.encrypted);
  t.is(c.parameters.server_version, '15.4');
  t.deepEqual(c.backendKey, { pid: 7, key: 8 });
  const copy = c.startReplication('START_REPLICATION 0/2000000 TIMELINE 1');
  const seen: bigint[] = [];
  copy.onXLogData = (x) => seen.push(x.start);
  const res = await copy.done;
  t.is(res.reason, 'error');
  t.is(res.error?.code, '00000');
  t.is(res.error?.message, 'ending streaming to x at 0/2000064');
  t.false(res.usable);
  t.deepEqual(seen, [0x2000000n]);
  t.is(copy.lastReceived, 0x2000064n);
});

test('scripted: FATAL during COPY rejects; a socket close during COPY rejects, after queued messages are read', async (t) => {
  const srv = await fakeServer(t, (m, s) => {
    if (m.type !== 'query') return;
    if (m.sql.includes('EARLY')) {
      s.sock.end(backend.errorResponse({ severity: 'FATAL', code: '53300', message: 'sorry, too many clients already' }));
    } else if (m.sql.includes('FATAL')) {
      s.sock.end(Buffer.concat([W, backend.errorResponse({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' })]));
    } else {
      s.sock.write(Buffer.concat([W, wal(0x1000000n, 10), wal(0x100000an, 10)]));
      setTimeout(() => s.sock.destroy(), 50);
    }
  });
  const c1 = await connect(t, { host: '127.0.0.1', port: srv.port });
  const e = await t.throwsAsync(c1.startReplication('START_REPLICATION FATAL').done, { instanceOf: PgError });
  t.is(e?.code, '57P01');
  t.is(e?.severity, 'FATAL');

  const c0 = await connect(t, { host: '127.0.0.1', port: srv.port });
  const early = c0.startReplication('START_REPLICATION EARLY');
  const e0 = await t.throwsAsync(early.started, { instanceOf: PgError });
  t.is(e0?.code, '53300');
  await t.throwsAsync(early.done, { is: e0 });

  const c2 = await connect(t, { host: '127.0.0.1', port: srv.port });
  const copy = c2.startReplication('START_REPLICATION 0/1000000');
  const starts: bigint[] = [];
  const err = await t.throwsAsync(async () => {
    for await (const m of copy) if (m.type === 'xlogData') starts.push(m.start);
  });
  t.regex(err?.message ?? '', /server closed the connection unexpectedly/);
  t.deepEqual(starts, [0x1000000n, 0x100000an]);
  await t.throwsAsync(copy.done, { is: err });
  t.true(c2.closed);
});

test('scripted: end() before CopyBothResponse sends CopyDone right after it; a throwing callback fails the connection', async (t) => {
  const srv = await fakeServer(t, (m, s) => {
    if (m.type === 'query' && m.sql.startsWith('START_REPLICATION')) {
      s.sock.write(Buffer.concat([W, wal(0x3000000n, 8)]));
    } else if (m.type === 'copyData') {
      // a status update: send more WAL
      s.sock.write(wal(0x3000008n, 8));
    } else if (m.type === 'copyDone') {
      s.sock.write(
        Buffer.concat([
          backend.copyDone(),
          backend.commandComplete('START_STREAMING'),
          backend.commandComplete('START_REPLICATION'),
          backend.readyForQuery(),
        ]),
      );
    } else if (m.type === 'query') {
      s.sock.write(Buffer.concat([backend.rowDescription([{ name: 'x', typeOid: 25, typeLen: -1, typeMod: -1 }]), backend.dataRow(['1']), backend.commandComplete('SHOW'), backend.readyForQuery()]));
    }
  });
  const c = await connect(t, { host: '127.0.0.1', port: srv.port });
  const copy = c.startReplication('START_REPLICATION 0/3000000');
  const res = await copy.end();
  t.is(res.reason, 'clientEnd');
  t.true(res.usable);
  t.deepEqual(res.tags, ['START_STREAMING', 'START_REPLICATION']);
  t.deepEqual((await c.query('SHOW x')).rows, [['1']]);
  const kinds = srv.sessions[0]!.received.map((m) => m.type);
  t.deepEqual(kinds, ['query', 'copyDone', 'query']);

  // status updates reach the server; a callback that throws ends everything
  const copy2 = c.startReplication('START_REPLICATION 0/3000000');
  copy2.onXLogData = (x) => {
    if (x.start === 0x3000000n) copy2.sendStatus({ write: x.start + BigInt(x.data.length), flush: 0n, apply: 0n, sendTime: 1n });
    else throw new Error('consumer failed');
  };
  await t.throwsAsync(copy2.done, { message: 'consumer failed' });
  t.true(await pollFor('close', async () => (c.closed ? true : undefined), 5000));
  const status = srv.sessions[0]!.received.find((m) => m.type === 'copyData');
  t.truthy(status);
  t.deepEqual(decodeStandbyStatus((status as { data: Buffer }).data), { write: 0x3000008n, flush: 0n, apply: 0n, sendTime: 1n, replyRequested: false });
});

test('scripted: the async iterator stops reading at its high-water mark and delivers everything in order', async (t) => {
  const total = 40;
  const size = 128 * 1024;
  const srv = await fakeServer(t, (m, s) => {
    if (m.type === 'query') {
      s.sock.write(W);
      for (let i = 0; i < total; i++) s.sock.write(wal(0x1000000n + BigInt(i * size), size, i));
    } else if (m.type === 'copyDone') {
      s.sock.write(Buffer.concat([backend.copyDone(), backend.commandComplete('START_STREAMING'), backend.commandComplete('START_REPLICATION'), backend.readyForQuery()]));
    }
  });
  const c = await connect(t, { host: '127.0.0.1', port: srv.port });
  const copy = c.startReplication('START_REPLICATION 0/1000000');
  copy.highWaterMark = 1024 * 1024;
  t.true(await copy.started);
  await sleep(300);
  t.true(copy.queued > 0);
  t.true(copy.queued <= copy.highWaterMark + 2 * size, `queued ${copy.queued}`);
  let i = 0;
  for await (const m of copy) {
    if (m.type !== 'xlogData') continue;
    t.is(m.start, 0x1000000n + BigInt(i * size));
    t.is(m.data[size - 1], i & 0xff);
    if (++i === total) break;
  }
  const res = await copy.end();
  t.is(res.reason, 'clientEnd');
});

test('connect errors: refused, timeout, server closing during startup', async (t) => {
  const port = await freePort();
  await t.throwsAsync(ReplicationClient.connect({ host: '127.0.0.1', port }), { message: /could not connect to 127\.0\.0\.1:\d+: .*ECONNREFUSED/ });

  const silent = await fakeServer(t, () => undefined, { silent: true });
  const t0 = Date.now();
  await t.throwsAsync(ReplicationClient.connect({ host: '127.0.0.1', port: silent.port, connectTimeoutMs: 300 }), { message: /timeout after 300 ms connecting to 127\.0\.0\.1/ });
  t.true(Date.now() - t0 < 5000);
  await t.throwsAsync(ReplicationClient.connect({ host: '127.0.0.1', port: silent.port, connectTimeoutMs: 300, ssl: 'prefer' }), { message: /timeout after 300 ms/ });

  const closer = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => closer.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => closer.close(() => resolve())));
  await t.throwsAsync(ReplicationClient.connect({ host: '127.0.0.1', port: (closer.address() as net.AddressInfo).port }), { message: /could not connect .*(closed|ECONNRESET|EPIPE)/ });
});
