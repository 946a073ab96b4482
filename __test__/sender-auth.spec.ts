// Acceptance f: SCRAM-SHA-256 (libpq checks our server signature), trust
// only where configured, and TLS when a certificate is given.

import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import { ReplicationClient } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import { formatVerifier, makeVerifier } from '../ts/protocol/scram.js';
import { isLoopback } from '../ts/server/connection.js';
import { createTempDir, makeWalFixture, startReceivewal, startTestNode, type TempDir, type TestNode, type WalFixture } from './harness/index.js';

let fx: WalFixture;
let tmp: TempDir;
let passwordFile: string;

test.before(async () => {
  fx = await makeWalFixture({ minBytes: 2 * 1024 * 1024 });
  tmp = await createTempDir('walkeeper-auth-');
  passwordFile = path.join(tmp.path, 'passwords');
  await writeFile(passwordFile, `# users\nrepl:s3cret pass\nstored:${formatVerifier(makeVerifier('from-verifier'))}\n`);
});

test.after.always(async () => {
  await fx?.destroy();
  await tmp?.cleanup();
});

async function nodeWith(t: import('ava').ExecutionContext, opts: Parameters<typeof startTestNode>[0]): Promise<TestNode> {
  const n = await startTestNode({ importFrom: fx.walDir, ...opts });
  t.teardown(() => n.stop());
  return n;
}

async function refused(t: import('ava').ExecutionContext, p: Promise<unknown>, code: string, re: RegExp) {
  const e = await t.throwsAsync(p);
  t.true(e instanceof PgError, String(e));
  t.is((e as PgError).code, code, e?.message);
  t.regex(e!.message, re);
}

test('SCRAM: the right password streams with pg_receivewal (libpq verifies our server signature) and our client', async (t) => {
  const n = await nodeWith(t, { auth: 'scram', passwordFile });
  const end = n.node.stream().commitLsn;
  const rw = startReceivewal({ host: n.host, port: n.port, user: 'repl', password: 's3cret pass', dir: path.join(tmp.path, 'rw-scram'), endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  const c = await ReplicationClient.connect({ host: n.host, port: n.port, user: 'stored', password: 'from-verifier' });
  t.is((await c.identifySystem()).systemId, fx.systemId);
  await c.close();
});

test('SCRAM: a wrong password or an unknown user gets 28P01; no password at all fails in libpq', async (t) => {
  const n = await nodeWith(t, { auth: 'scram', passwordFile });
  await refused(t, ReplicationClient.connect({ host: n.host, port: n.port, user: 'repl', password: 'wrong' }), '28P01', /password authentication failed for user "repl"/);
  await refused(t, ReplicationClient.connect({ host: n.host, port: n.port, user: 'ghost', password: 'whatever' }), '28P01', /password authentication failed for user "ghost"/);
  const line = n.logs.find((l) => String(l.msg) === 'connection refused: password authentication failed for user "repl"');
  t.truthy(line, 'the refusal is logged');
  t.is(line?.stream, 'main');
  t.regex(String(line?.client), /^unnamed@127\.0\.0\.1:\d+$/);
  const rw = startReceivewal({ host: n.host, port: n.port, user: 'repl', dir: path.join(tmp.path, 'rw-nopw'), noLoop: true, env: { PGPASSWORD: undefined, PGPASSFILE: '/nonexistent' } });
  const r = await rw.wait(30_000);
  t.not(r.code, 0);
  t.regex(r.stderr, /no password supplied|password authentication failed/);
  const wrong = startReceivewal({ host: n.host, port: n.port, user: 'repl', password: 'nope', dir: path.join(tmp.path, 'rw-wrong'), noLoop: true });
  const rr = await wrong.wait(30_000);
  t.not(rr.code, 0);
  t.regex(rr.stderr, /password authentication failed for user "repl"/);
});

test('trust only where configured: --auth scram asks loopback clients too; --auth trust and the default (loopback) do not', async (t) => {
  const scram = await nodeWith(t, { auth: 'scram', passwordFile });
  const e = await t.throwsAsync(ReplicationClient.connect({ host: scram.host, port: scram.port, user: 'repl' }));
  t.regex(e!.message, /password/i);
  const trust = await nodeWith(t, { auth: 'trust' });
  await (await ReplicationClient.connect({ host: trust.host, port: trust.port, user: 'anyone' })).close();
  const dflt = await nodeWith(t, {});
  t.is(dflt.node.auth, 'loopback-trust');
  await (await ReplicationClient.connect({ host: dflt.host, port: dflt.port, user: 'anyone' })).close();
  // What counts as loopback for the default.
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) t.true(isLoopback(a), a);
  for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '192.168.1.1', 'fe80::1', undefined]) t.false(isLoopback(a), String(a));
  await t.throwsAsync(startTestNode({ importFrom: fx.walDir, auth: 'scram' }), { message: /--auth scram needs --password-file/ });
});

test('TLS: with a certificate, sslmode=require works for pg_receivewal and our client; without one, it is refused', async (t) => {
  const cert = path.join(tmp.path, 'server.crt');
  const key = path.join(tmp.path, 'server.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
  const n = await nodeWith(t, { tlsCert: cert, tlsKey: key, auth: 'scram', passwordFile });
  const c = await ReplicationClient.connect({ host: n.host, port: n.port, user: 'repl', password: 's3cret pass', ssl: 'require' });
  t.true(c.encrypted);
  t.is((await c.identifySystem()).systemId, fx.systemId);
  await c.close();
  const end = n.node.stream().commitLsn;
  const rw = startReceivewal({ host: n.host, port: n.port, user: 'repl', password: 's3cret pass', conninfo: { sslmode: 'require' }, dir: path.join(tmp.path, 'rw-tls'), endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  const plain = await nodeWith(t, {});
  const rw2 = startReceivewal({ host: plain.host, port: plain.port, conninfo: { sslmode: 'require' }, dir: path.join(tmp.path, 'rw-notls'), noLoop: true });
  const r2 = await rw2.wait(30_000);
  t.not(r2.code, 0);
  t.regex(r2.stderr, /server does not support SSL/);
  t.log(`TLS stream to ${formatLsn(end)} ok`);
});
