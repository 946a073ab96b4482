import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import test, { type ExecutionContext } from 'ava';
import pg from 'pg';

import { PgError } from '../ts/protocol/errors.js';
import {
  formatVerifier,
  makeVerifier,
  parseVerifier,
  saslPrep,
  ScramClientSession,
  ScramServerSession,
  type ScramVerifier,
} from '../ts/protocol/scram.js';
import { registerCleanupHooks, runPgTool, withPostgres, type PgCluster } from './harness/index.js';

registerCleanupHooks(test);

// ---------------------------------------------------------------------------
// RFC 7677 §3 test vector

const RFC = {
  user: 'user',
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: 'W22ZaJ0SNY7soEsUEjb6gQ==',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

test('RFC 7677 test vector: client side', (t) => {
  const c = new ScramClientSession(RFC.user, RFC.password, RFC.clientNonce, { sendUsername: true });
  t.is(c.clientFirst(), RFC.clientFirst);
  t.is(c.handleServerFirst(RFC.serverFirst), RFC.clientFinal);
  t.notThrows(() => c.verifyServerFinal(RFC.serverFinal));
});

test('RFC 7677 test vector: server side', (t) => {
  const v = makeVerifier(RFC.password, { salt: Buffer.from(RFC.salt, 'base64'), iterations: 4096 });
  const s = new ScramServerSession(v, { serverNonce: RFC.serverNonce });
  t.deepEqual(s.mechanisms, ['SCRAM-SHA-256']);
  t.is(s.clientFirst('SCRAM-SHA-256', Buffer.from(RFC.clientFirst)), RFC.serverFirst);
  t.deepEqual(s.clientFinal(Buffer.from(RFC.clientFinal)), { ok: true, serverFinal: RFC.serverFinal });
});

test('RFC 7677 test vector: verifier', (t) => {
  const v = makeVerifier(RFC.password, { salt: Buffer.from(RFC.salt, 'base64') });
  t.is(v.iterations, 4096);
  // StoredKey / ServerKey computed independently from the RFC's definitions
  const sp = pbkdf2Sync(RFC.password, Buffer.from(RFC.salt, 'base64'), 4096, 32, 'sha256');
  const clientKey = createHmac('sha256', sp).update('Client Key').digest();
  t.deepEqual(v.storedKey, createHash('sha256').update(clientKey).digest());
  t.deepEqual(v.serverKey, createHmac('sha256', sp).update('Server Key').digest());
  t.is(formatVerifier(v), `SCRAM-SHA-256$4096:${RFC.salt}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`);
});

// ---------------------------------------------------------------------------
// Round trips

/** Runs a whole exchange; returns the server's verdict (and checks the client accepts a success). */
function exchange(t: ExecutionContext, verifier: ScramVerifier | null, password: string, opts: { mockSeed?: string } = {}) {
  const s = new ScramServerSession(verifier, opts);
  const c = new ScramClientSession('u', password);
  const first = c.clientFirst();
  t.regex(first, /^n,,n=,r=[A-Za-z0-9+/]{24}$/); // as libpq: empty user name, 18-byte nonce
  const serverFirst = s.clientFirst('SCRAM-SHA-256', Buffer.from(first));
  t.regex(serverFirst, /^r=[A-Za-z0-9+/]{48},s=[A-Za-z0-9+/]+={0,2},i=\d+$/);
  t.true(serverFirst.startsWith(`r=${first.slice('n,,n=,r='.length)}`));
  const final = c.handleServerFirst(serverFirst);
  t.regex(final, /^c=biws,r=[A-Za-z0-9+/]{48},p=[A-Za-z0-9+/]{43}=$/);
  const res = s.clientFinal(Buffer.from(final));
  if (res.ok) t.notThrows(() => c.verifyServerFinal(res.serverFinal));
  return { res, serverFirst };
}

test('client ↔ server round trip', (t) => {
  const v = makeVerifier('secret');
  t.is(v.salt.length, 16);
  t.is(v.iterations, 4096);
  const { res } = exchange(t, v, 'secret');
  t.true(res.ok);
});

test('round trip through the pg_authid format, other iteration counts', (t) => {
  for (const iterations of [1, 10_000]) {
    const v = parseVerifier(formatVerifier(makeVerifier('pw', { iterations })));
    t.is(v.iterations, iterations);
    t.true(exchange(t, v, 'pw').res.ok);
    t.false(exchange(t, v, 'PW').res.ok);
  }
});

test('wrong password fails at the last step', (t) => {
  const { res } = exchange(t, makeVerifier('secret'), 'wrong');
  t.deepEqual(res, { ok: false });
  t.false(exchange(t, makeVerifier('secret'), '').res.ok);
});

test('unknown user: mock exchange with a stable salt, fails at the same step', (t) => {
  const real = makeVerifier('secret');
  // the same messages and steps as for a real user...
  const mock1 = exchange(t, null, 'secret', { mockSeed: 'u\0server-secret' });
  t.deepEqual(mock1.res, { ok: false });
  const mock2 = exchange(t, null, 'anything', { mockSeed: 'u\0server-secret' });
  t.deepEqual(mock2.res, { ok: false });
  // ...with the same salt every time for the same user (as a real verifier's)...
  const saltOf = (serverFirst: string): string => /,s=([^,]*),/.exec(serverFirst)![1]!;
  t.is(saltOf(mock1.serverFirst), saltOf(mock2.serverFirst));
  t.is(Buffer.from(saltOf(mock1.serverFirst), 'base64').length, 16);
  t.regex(mock1.serverFirst, /,i=4096$/);
  // ...but a different one for another user
  const other = exchange(t, null, 'x', { mockSeed: 'v\0server-secret' });
  t.not(saltOf(other.serverFirst), saltOf(mock1.serverFirst));
  // without a seed: stable within the process
  t.is(saltOf(exchange(t, null, 'a').serverFirst), saltOf(exchange(t, null, 'b').serverFirst));
  // the real user's exchange looks the same
  t.true(exchange(t, real, 'secret').res.ok);
});

test('the y gs2 flag (client supports channel binding, thinks we do not) is accepted with c=eSws', (t) => {
  const v = makeVerifier('secret');
  const s = new ScramServerSession(v);
  const bare = 'n=,r=clientnonce';
  const serverFirst = s.clientFirst('SCRAM-SHA-256', Buffer.from(`y,,${bare}`));
  const res = s.clientFinal(Buffer.from(clientFinalFor('secret', bare, serverFirst, 'eSws')));
  t.true(res.ok);
  // and `c=biws` does not match the y flag
  const s2 = new ScramServerSession(v);
  const sf2 = s2.clientFirst('SCRAM-SHA-256', Buffer.from(`y,,${bare}`));
  const e = t.throws(() => s2.clientFinal(Buffer.from(clientFinalFor('secret', bare, sf2, 'biws'))), { instanceOf: PgError });
  t.is(e?.message, 'unexpected SCRAM channel-binding attribute in client-final-message');
});

test('a null initial response gets an empty challenge, then the first message', (t) => {
  const v = makeVerifier('secret');
  const s = new ScramServerSession(v);
  const c = new ScramClientSession('u', 'secret');
  t.is(s.clientFirst('SCRAM-SHA-256', null), '');
  const sf = s.clientFirst('SCRAM-SHA-256', Buffer.from(c.clientFirst()));
  const res = s.clientFinal(Buffer.from(c.handleServerFirst(sf)));
  t.true(res.ok);
});

test('calls out of order are errors', (t) => {
  const s = new ScramServerSession(makeVerifier('x'));
  t.throws(() => s.clientFinal(Buffer.from('c=biws,r=a,p=b')), { instanceOf: PgError });
  const c = new ScramClientSession('u', 'x');
  t.throws(() => c.handleServerFirst('r=x,s=QQ==,i=1'));
  t.throws(() => c.verifyServerFinal('v=x'));
  c.clientFirst();
  t.throws(() => c.clientFirst());
});

/** An independent client-final computation (RFC 5802 §3), for tests. */
function clientFinalFor(password: string, clientFirstBare: string, serverFirst: string, cbind = 'biws', extra = ''): string {
  const m = /^r=([^,]*),s=([^,]*),i=(\d+)$/.exec(serverFirst)!;
  const sp = pbkdf2Sync(saslPrep(password), Buffer.from(m[2]!, 'base64'), Number(m[3]), 32, 'sha256');
  const clientKey = createHmac('sha256', sp).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const withoutProof = `c=${cbind},r=${m[1]}${extra}`;
  const sig = createHmac('sha256', storedKey).update(`${clientFirstBare},${serverFirst},${withoutProof}`).digest();
  const proof = Buffer.from(clientKey.map((b, i) => b ^ sig[i]!));
  return `${withoutProof},p=${proof.toString('base64')}`;
}

// ---------------------------------------------------------------------------
// Malformed messages: PostgreSQL's errors (all FATAL)

function serverError(t: ExecutionContext, f: () => unknown, code: string, message: string, detail?: string): void {
  const e = t.throws(f, { instanceOf: PgError });
  t.is(e?.code, code, e?.message);
  t.is(e?.message, message);
  t.is(e?.detail, detail);
  t.is(e?.severity, 'FATAL');
}

test('client-first-message errors', (t) => {
  const first = (mech: string, msg: string) => () => new ScramServerSession(makeVerifier('x', { iterations: 1 })).clientFirst(mech, Buffer.from(msg, 'latin1'));
  const malformed = 'malformed SCRAM message';
  serverError(t, first('SCRAM-SHA-256-PLUS', 'p=tls-server-end-point,,n=,r=a'), '08P01', 'client selected an invalid SASL authentication mechanism');
  serverError(t, first('scram-sha-256', 'n,,n=,r=a'), '08P01', 'client selected an invalid SASL authentication mechanism');
  serverError(t, first('SCRAM-SHA-256', ''), '08P01', malformed, 'The message is empty.');
  serverError(t, first('SCRAM-SHA-256', 'n,,n=,r=a\0b'), '08P01', malformed, 'Message length does not match input length.');
  serverError(
    t,
    first('SCRAM-SHA-256', 'p=tls-server-end-point,,n=,r=a'),
    '08P01',
    malformed,
    'The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.',
  );
  serverError(t, first('SCRAM-SHA-256', 'x,,n=,r=a'), '08P01', malformed, `Unexpected channel-binding flag "'x'".`);
  serverError(t, first('SCRAM-SHA-256', ' n,,n=,r=a'), '08P01', malformed, 'Unexpected channel-binding flag "0x20".');
  serverError(t, first('SCRAM-SHA-256', 'n'), '08P01', malformed, 'Comma expected, but found character "0x00".');
  serverError(t, first('SCRAM-SHA-256', 'n;,n=,r=a'), '08P01', malformed, `Comma expected, but found character "';'".`);
  serverError(t, first('SCRAM-SHA-256', 'n,a=u,n=,r=a'), '0A000', 'client uses authorization identity, but it is not supported');
  serverError(t, first('SCRAM-SHA-256', 'n,x,n=,r=a'), '08P01', malformed, `Unexpected attribute "'x'" in client-first-message.`);
  serverError(t, first('SCRAM-SHA-256', 'n,,m=x,n=,r=a'), '0A000', 'client requires an unsupported SCRAM extension');
  serverError(t, first('SCRAM-SHA-256', 'n,,r=a'), '08P01', malformed, `Expected attribute "n" but found "'r'".`);
  serverError(t, first('SCRAM-SHA-256', 'n,,n'), '08P01', malformed, 'Expected character "=" for attribute "n".');
  serverError(t, first('SCRAM-SHA-256', 'n,,n='), '08P01', malformed, 'Expected attribute "r" but found "0x00".');
  serverError(t, first('SCRAM-SHA-256', 'n,,n=,r=a b'), '08P01', 'non-printable characters in SCRAM nonce');
  serverError(t, first('SCRAM-SHA-256', 'n,,n=,r=a\u00e9'), '08P01', 'non-printable characters in SCRAM nonce');
  serverError(t, first('SCRAM-SHA-256', 'n,,n=,r=a,1=x'), '08P01', malformed, `Attribute expected, but found invalid character "'1'".`);
  serverError(t, first('SCRAM-SHA-256', 'n,,n=,r=a,x'), '08P01', malformed, 'Expected character "=" for attribute "x".');
  // accepted: extensions are ignored, a trailing comma too, and an empty client nonce (as PostgreSQL does)
  for (const ok of ['n,,n=,r=a,x=1,y=2', 'n,,n=,r=a,', 'n,,n=,r=', 'n,,n=whoever,r=a', 'y,,n=,r=a']) {
    t.regex(first('SCRAM-SHA-256', ok)() as string, /^r=a?[A-Za-z0-9+/]{24},s=/, ok);
  }
});

test('client-final-message errors', (t) => {
  const start = () => {
    const s = new ScramServerSession(makeVerifier('x', { iterations: 1 }), { serverNonce: 'SN' });
    s.clientFirst('SCRAM-SHA-256', Buffer.from('n,,n=,r=CN'));
    return s;
  };
  const fin = (msg: string) => () => start().clientFinal(Buffer.from(msg, 'latin1'));
  const p = `p=${Buffer.alloc(32).toString('base64')}`;
  const malformed = 'malformed SCRAM message';
  serverError(t, fin(''), '08P01', malformed, 'The message is empty.');
  serverError(t, fin('r=CNSN'), '08P01', malformed, `Expected attribute "c" but found "'r'".`);
  serverError(t, fin('c=eSws,r=CNSN,' + p), '08P01', 'unexpected SCRAM channel-binding attribute in client-final-message');
  serverError(t, fin('c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=CNSN,' + p), '08P01', 'unexpected SCRAM channel-binding attribute in client-final-message');
  serverError(t, fin('c=biws'), '08P01', malformed, 'Expected attribute "r" but found "0x00".');
  serverError(t, fin('c=biws,r=CNSN'), '08P01', malformed, 'Attribute expected, but found end of string.');
  serverError(t, fin('c=biws,r=CNSN,x=1'), '08P01', malformed, 'Attribute expected, but found end of string.');
  serverError(t, fin('c=biws,r=CNSN,p=!!!!'), '08P01', malformed, 'Malformed proof in client-final-message.');
  serverError(t, fin('c=biws,r=CNSN,p=AAAA'), '08P01', malformed, 'Malformed proof in client-final-message.');
  serverError(t, fin(`c=biws,r=CNSN,${p},z=1`), '08P01', malformed, 'Garbage found at the end of client-final-message.');
  serverError(t, fin(`c=biws,r=CNSX,${p}`), '08P01', 'invalid SCRAM response', 'Nonce does not match.');
  serverError(t, fin(`c=biws,r=CN,${p}`), '08P01', 'invalid SCRAM response', 'Nonce does not match.');
  serverError(t, fin(`c=biws,r=CNSNSN,${p}`), '08P01', 'invalid SCRAM response', 'Nonce does not match.');
  // well-formed but wrong proof: no error, just a failure
  t.deepEqual(fin(`c=biws,r=CNSN,${p}`)(), { ok: false });
  t.deepEqual(fin(`c=biws,r=CNSN,x=1,${p},`)(), { ok: false });
  // a finished exchange cannot be continued
  const s = start();
  s.clientFinal(Buffer.from(`c=biws,r=CNSN,${p}`));
  t.throws(() => s.clientFinal(Buffer.from(`c=biws,r=CNSN,${p}`)), { instanceOf: PgError });
});

test('extensions before the proof are part of the signed message', (t) => {
  const v = makeVerifier('secret', { iterations: 1 });
  const s = new ScramServerSession(v, { serverNonce: 'SN' });
  const sf = s.clientFirst('SCRAM-SHA-256', Buffer.from('n,,n=,r=CN'));
  t.true(s.clientFinal(Buffer.from(clientFinalFor('secret', 'n=,r=CN', sf, 'biws', ',x=ext'))).ok);
  // and a trailing comma after the proof is tolerated, like PostgreSQL
  const s2 = new ScramServerSession(v, { serverNonce: 'SN' });
  const sf2 = s2.clientFirst('SCRAM-SHA-256', Buffer.from('n,,n=,r=CN'));
  t.true(s2.clientFinal(Buffer.from(clientFinalFor('secret', 'n=,r=CN', sf2) + ',')).ok);
});

test('client rejects bad server messages', (t) => {
  const started = () => {
    const c = new ScramClientSession('u', 'secret', 'CN');
    c.clientFirst();
    return c;
  };
  t.throws(() => started().handleServerFirst('r=XX123,s=QUJD,i=4096'), { message: /nonce mismatch/ });
  t.throws(() => started().handleServerFirst('r=CN,s=QUJD,i=4096'), { message: /nonce mismatch/ }); // no server part
  t.throws(() => started().handleServerFirst('m=x,r=CN1,s=QUJD,i=4096'), { message: /attribute "r" expected/ });
  t.throws(() => started().handleServerFirst('r=CN1,s=!!,i=4096'), { message: /invalid salt/ });
  t.throws(() => started().handleServerFirst('r=CN1,s=QUJD,i=0'), { message: /invalid iteration count/ });
  t.throws(() => started().handleServerFirst('r=CN1,s=QUJD,i=12x'), { message: /invalid iteration count/ });
  t.throws(() => started().handleServerFirst('r=CN1,s=QUJD,i=1,x=1'), { message: /garbage at end/ });

  const v = makeVerifier('secret', { iterations: 1 });
  const run = (serverFinal: (real: string) => string) => {
    const s = new ScramServerSession(v);
    const c = new ScramClientSession('u', 'secret');
    const final = c.handleServerFirst(s.clientFirst('SCRAM-SHA-256', Buffer.from(c.clientFirst())));
    const res = s.clientFinal(Buffer.from(final));
    if (!res.ok) throw new Error('unexpected failure');
    return () => c.verifyServerFinal(serverFinal(res.serverFinal));
  };
  t.notThrows(run((x) => x));
  t.throws(run(() => 'e=invalid-proof'), { message: 'error received from server in SCRAM exchange: invalid-proof' });
  t.throws(run(() => `v=${Buffer.alloc(32).toString('base64')}`), { message: 'incorrect server signature' });
  t.throws(run(() => 'v=AAAA'), { message: /invalid server signature/ });
  t.throws(run((x) => `${x},x=1`), { message: /garbage at end/ });
  t.throws(run(() => 'x=1'), { message: /attribute "v" expected/ });
  // a server that does not know the password cannot impersonate: wrong key → wrong signature
  const impostor = new ScramServerSession(null);
  const c = new ScramClientSession('u', 'secret');
  c.handleServerFirst(impostor.clientFirst('SCRAM-SHA-256', Buffer.from(c.clientFirst())));
  t.throws(() => c.verifyServerFinal(`v=${createHmac('sha256', Buffer.alloc(32)).update('x').digest('base64')}`), {
    message: 'incorrect server signature',
  });
});

// ---------------------------------------------------------------------------
// Verifier format

test('formatVerifier / parseVerifier round trip', (t) => {
  const v = makeVerifier('secret', { salt: Buffer.from('0123456789abcdef'), iterations: 4096 });
  const s = formatVerifier(v);
  t.regex(s, /^SCRAM-SHA-256\$4096:MDEyMzQ1Njc4OWFiY2RlZg==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
  t.deepEqual(parseVerifier(s), v);
  t.is(formatVerifier(parseVerifier(s)), s);
});

test('parseVerifier rejects bad input with a clear message', (t) => {
  const good = formatVerifier(makeVerifier('x'));
  const [, iterSalt, keys] = good.split('$') as [string, string, string];
  const [stored, server] = keys.split(':') as [string, string];
  const salt = iterSalt.split(':')[1]!;
  const cases: Array<[string, RegExp]> = [
    ['', /expected SCRAM-SHA-256\$<iterations>:<salt>\$<StoredKey>:<ServerKey>/],
    ['md5d8578edf8458ce06fbc5bb76a58c5ca4', /expected SCRAM-SHA-256/],
    ['secret', /expected SCRAM-SHA-256/],
    [good.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'), /unsupported scheme "SCRAM-SHA-1"/],
    [`SCRAM-SHA-256$x:${salt}$${keys}`, /iteration count "x" is not a number/],
    [`SCRAM-SHA-256$-1:${salt}$${keys}`, /iteration count "-1" is not a number/],
    [`SCRAM-SHA-256$0:${salt}$${keys}`, /iteration count 0 out of range/],
    [`SCRAM-SHA-256$99999999999:${salt}$${keys}`, /out of range/],
    [`SCRAM-SHA-256$4096:$${keys}`, /salt is not \(non-empty\) base64/],
    [`SCRAM-SHA-256$4096:!!!!$${keys}`, /salt is not/],
    [`SCRAM-SHA-256$4096:${salt}$${stored.slice(4)}:${server}`, /StoredKey is not base64 of 32 bytes/],
    [`SCRAM-SHA-256$4096:${salt}$${stored}:${server}AAAA`, /ServerKey is not base64 of 32 bytes/],
    [`SCRAM-SHA-256$4096:${salt}$${stored}`, /expected SCRAM-SHA-256/],
    [`${good}:extra`, /expected SCRAM-SHA-256/],
  ];
  for (const [input, re] of cases) {
    const e = t.throws(() => parseVerifier(input), undefined, input);
    t.regex(e?.message ?? '', /^invalid SCRAM-SHA-256 verifier: /, input);
    t.regex(e?.message ?? '', re, input);
  }
  t.throws(() => makeVerifier('x', { iterations: 0 }), { instanceOf: RangeError });
});

// ---------------------------------------------------------------------------
// SASLprep

test('SASLprep: ASCII is used as is, the rest is mapped and NFKC-normalised', (t) => {
  const prep = (s: string): string => saslPrep(s).toString('utf8');
  t.is(prep('pencil'), 'pencil');
  t.is(prep(' a\tb\x7f '), ' a\tb\x7f '); // pure ASCII: even control characters are kept (as PostgreSQL does)
  t.is(prep('pässwörd'), 'pässwörd');
  t.is(prep('pa\u0308sswo\u0308rd'), 'pässwörd'); // composed
  t.is(prep('\u2168-\ufb01'), 'IX-fi'); // compatibility forms
  t.is(prep('ＡＢＣ①'), 'ABC1');
  t.is(prep('a\u00a0b\u3000c\u200bd'), 'a b c d'); // non-ASCII spaces (U+200B is one too, before "mapped to nothing")
  t.is(prep('é\u00adé\u034f\ufe0f'), 'éé'); // mapped to nothing
  t.is(prep('שלום'), 'שלום'); // right-to-left only: fine
});

test('SASLprep: the raw bytes when it does not apply', (t) => {
  const raw = (s: string) => t.deepEqual(saslPrep(s), Buffer.from(s, 'utf8'), JSON.stringify(s));
  raw('\ue000é\u0301'); // private use (prohibited), not normalised
  raw('é\u0301\u0007'); // a control character with non-ASCII
  raw('é\u0301\u{1f600}'); // unassigned in Unicode 3.2
  raw('é\u0301\u0221'); // unassigned in Unicode 3.2 (U+0221)
  raw('\u00ad'); // empty after mapping
  raw('\u00ad\u200d');
  raw('שalom'); // right-to-left mixed with left-to-right
  raw('ש1'); // right-to-left must start and end the string
  raw('1ש');
  raw('\u200fé\u0301'); // U+200F is prohibited (C.8)
  const latin1 = Buffer.from('caf\xe9', 'latin1'); // not UTF-8
  t.deepEqual(saslPrep(latin1), latin1);
  t.deepEqual(saslPrep(Buffer.from('\u2168')), Buffer.from('IX'));
});

test('passwords go through SASLprep in makeVerifier and the client', (t) => {
  const v = makeVerifier('\u2168', { salt: Buffer.from('salt') });
  t.deepEqual(v, makeVerifier('IX', { salt: Buffer.from('salt') }));
  t.true(exchange(t, v, 'IX').res.ok);
  t.true(exchange(t, v, '\u2168').res.ok);
  t.true(exchange(t, makeVerifier('pa\u0308ss'), 'päss').res.ok);
  t.false(exchange(t, makeVerifier('\ue000'), '').res.ok);
});

// ---------------------------------------------------------------------------
// A real PostgreSQL 15

/** A minimal protocol-3 message reader/writer over a socket. */
class Wire {
  private buf = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | null = null;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    const end = (): void => {
      this.closed = true;
      this.wake?.();
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  static connect(port: number): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1', () => resolve(new Wire(sock)));
      sock.once('error', reject);
    });
  }

  static accept(sock: net.Socket): Wire {
    return new Wire(sock);
  }

  write(...parts: Buffer[]): void {
    this.sock.write(Buffer.concat(parts));
  }

  private async need(n: number): Promise<boolean> {
    while (this.buf.length < n) {
      if (this.closed) return false;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    return true;
  }

  /** A typed message ('R', 'E', 'p', ...), or null at end of stream. */
  async read(): Promise<{ type: string; body: Buffer } | null> {
    if (!(await this.need(5))) return null;
    const len = this.buf.readInt32BE(1);
    if (!(await this.need(1 + len))) return null;
    const msg = { type: String.fromCharCode(this.buf[0]!), body: this.buf.subarray(5, 1 + len) };
    this.buf = this.buf.subarray(1 + len);
    return msg;
  }

  /** The untyped first message of a connection (startup, SSLRequest, ...). */
  async readStartup(): Promise<Buffer | null> {
    if (!(await this.need(4))) return null;
    const len = this.buf.readInt32BE(0);
    if (!(await this.need(len))) return null;
    const msg = this.buf.subarray(4, len);
    this.buf = this.buf.subarray(len);
    return msg;
  }

  close(): void {
    this.sock.destroy();
  }
}

const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const message = (type: string, body: Buffer): Buffer => Buffer.concat([Buffer.from(type), int32(body.length + 4), body]);
const startupMessage = (user: string): Buffer => {
  const body = Buffer.concat([int32(196608), cstr('user'), cstr(user), cstr('database'), cstr('postgres'), Buffer.from([0])]);
  return Buffer.concat([int32(body.length + 4), body]);
};
const saslInitial = (mech: string, data: Buffer | null): Buffer =>
  message('p', Buffer.concat([cstr(mech), int32(data === null ? -1 : data.length), data ?? Buffer.alloc(0)]));
const errorFields = (body: Buffer): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const f of body.toString('utf8').split('\0')) if (f) out[f[0]!] = f.slice(1);
  return out;
};

type Event =
  | { t: 'sasl'; mechanisms: string[] }
  | { t: 'continue'; data: string }
  | { t: 'final'; data: string }
  | { t: 'ok' }
  | { t: 'error'; severity?: string; code?: string; message?: string; detail?: string }
  | { t: 'closed' };

/** Reads authentication messages until AuthenticationOk, an error or the end; returns them as events. */
async function readAuth(w: Wire): Promise<Event> {
  const m = await w.read();
  if (m === null) return { t: 'closed' };
  if (m.type === 'E') {
    const f = errorFields(m.body);
    return { t: 'error', severity: f.S, code: f.C, message: f.M, detail: f.D };
  }
  if (m.type !== 'R') throw new Error(`unexpected message ${m.type}`);
  const code = m.body.readInt32BE(0);
  const rest = m.body.subarray(4);
  if (code === 0) return { t: 'ok' };
  if (code === 10) return { t: 'sasl', mechanisms: rest.toString('utf8').split('\0').filter(Boolean) };
  if (code === 11) return { t: 'continue', data: rest.toString('latin1') };
  if (code === 12) return { t: 'final', data: rest.toString('latin1') };
  throw new Error(`unexpected authentication request ${code}`);
}

/**
 * A script for one SASL exchange: the mechanism and first message, then
 * (given the server-first-message) the final message.
 */
interface Script {
  name: string;
  mech: string;
  first: Buffer | null;
  /** after a null first message, the first message proper */
  firstAgain?: Buffer;
  final?: (serverFirst: string) => Buffer;
}

/** Runs a script against a real server; returns the events after the first R 10. */
async function runOnPostgres(port: number, user: string, s: Script): Promise<Event[]> {
  const w = await Wire.connect(port);
  try {
    w.write(startupMessage(user));
    const hello = await readAuth(w);
    if (hello.t !== 'sasl') throw new Error(`expected SASL, got ${JSON.stringify(hello)}`);
    const events: Event[] = [];
    w.write(saslInitial(s.mech, s.first));
    let ev = await readAuth(w);
    events.push(ev);
    if (ev.t === 'continue' && s.first === null && s.firstAgain) {
      w.write(message('p', s.firstAgain));
      ev = await readAuth(w);
      events.push(ev);
    }
    if (ev.t === 'continue' && s.final) {
      w.write(message('p', s.final(ev.data)));
      ev = await readAuth(w);
      events.push(ev);
      if (ev.t === 'final') events.push(await readAuth(w));
    }
    return events;
  } finally {
    w.close();
  }
}

/** The same script against ScramServerSession; a failed proof becomes the error PostgreSQL sends. */
function runOnOurs(verifier: ScramVerifier | null, user: string, s: Script): Event[] {
  const session = new ScramServerSession(verifier, { mockSeed: user });
  const events: Event[] = [];
  try {
    let sf = session.clientFirst(s.mech, s.first);
    events.push({ t: 'continue', data: sf });
    if (s.first === null && s.firstAgain) {
      sf = session.clientFirst(s.mech, s.firstAgain);
      events.push({ t: 'continue', data: sf });
    }
    if (s.final) {
      const res = session.clientFinal(s.final(sf));
      if (res.ok) events.push({ t: 'final', data: res.serverFinal }, { t: 'ok' });
      else events.push({ t: 'error', severity: 'FATAL', code: '28P01', message: `password authentication failed for user "${user}"` });
    }
  } catch (e) {
    if (!(e instanceof PgError)) throw e;
    events.push({ t: 'error', severity: e.severity, code: e.code, message: e.message, detail: e.detail });
  }
  return events;
}

/** Events with the random parts (nonces, signatures) reduced to their shape. */
function shape(events: Event[]): unknown[] {
  return events.map((e) => {
    if (e.t === 'continue') return { t: e.t, data: e.data.replace(/^r=[^,]*,s=[^,]*,i=\d+$/, 'r=…,s=…,i=…') };
    if (e.t === 'final') return { t: e.t, data: e.data.replace(/^v=[A-Za-z0-9+/]{43}=$/, 'v=…') };
    if (e.t === 'error') return { t: e.t, severity: e.severity, code: e.code, message: e.message, detail: e.detail };
    return e;
  });
}

/** Makes `user`'s password a SCRAM secret and returns the pg_authid value. */
async function createRole(cluster: PgCluster, user: string, password: string): Promise<string> {
  if (password.includes('$pw$')) throw new Error('test password must not contain $pw$');
  await cluster.query(`SET password_encryption = 'scram-sha-256'; CREATE ROLE "${user}" LOGIN PASSWORD $pw$${password}$pw$`);
  const rows = await cluster.query<{ rolpassword: string }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [user]);
  return rows[0]!.rolpassword;
}

/** pg_hba: postgres keeps trust, everybody else needs SCRAM over TCP. Waits until the reload took effect. */
async function requireScram(cluster: PgCluster, probeUser: string): Promise<void> {
  await writeFile(
    path.join(cluster.dataDir, 'pg_hba.conf'),
    [
      'local all all trust',
      'host all postgres 127.0.0.1/32 trust',
      'host replication postgres 127.0.0.1/32 trust',
      'host all all 127.0.0.1/32 scram-sha-256',
      'host replication all 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'),
  );
  await cluster.query('SELECT pg_reload_conf()');
  for (let i = 0; ; i++) {
    const w = await Wire.connect(cluster.port);
    w.write(startupMessage(probeUser));
    const ev = await readAuth(w);
    w.close();
    if (ev.t === 'sasl') {
      if (ev.mechanisms.join() !== 'SCRAM-SHA-256') throw new Error(`mechanisms: ${ev.mechanisms.join()}`);
      return;
    }
    if (i > 100) throw new Error(`pg_hba.conf reload did not take effect: ${JSON.stringify(ev)}`);
    await sleep(50);
  }
}

test('a real PostgreSQL 15: its verifiers, its SASLprep, its client and server behaviour', async (t) => {
  const cluster = await withPostgres(t);

  // 1. pg_authid's secret: parseVerifier accepts it, formatVerifier gives it back,
  //    makeVerifier with its salt computes the same keys.
  const secret = await createRole(cluster, 'u', 'secret');
  t.regex(secret, /^SCRAM-SHA-256\$4096:/);
  const v = parseVerifier(secret);
  t.is(formatVerifier(v), secret);
  t.is(v.salt.length, 16);
  t.deepEqual(makeVerifier('secret', { salt: v.salt, iterations: v.iterations }), v);

  // 2. Our server, given PostgreSQL's verifier, accepts our client with the right password only.
  t.true(exchange(t, v, 'secret').res.ok);
  t.false(exchange(t, v, 'wrong').res.ok);

  // 3. SASLprep: PostgreSQL's verifier for non-ASCII passwords is ours.
  const passwords = [
    'pässwörd',
    'pa\u0308sswo\u0308rd',
    '\u2168-\ufb01',
    'ＡＢＣ①',
    'a\u00a0b\u3000c\u200bd',
    'é\u00adé\u034f\ufe0f',
    'שלום',
    '\ue000é\u0301',
    'é\u0301\u{1f600}',
    'é\u0301\u0221',
    '\u00ad',
    'שalom',
    'ש1',
    '\u200fé\u0301',
  ];
  for (const [i, pw] of passwords.entries()) {
    const pv = parseVerifier(await createRole(cluster, `p${i}`, pw));
    t.deepEqual(makeVerifier(pw, { salt: pv.salt, iterations: pv.iterations }), pv, `password ${JSON.stringify(pw)}`);
  }

  // 4. Our client logs in to PostgreSQL (over the wire, no library), and fails with a wrong password.
  await requireScram(cluster, 'u');
  const login = (password: string): Promise<Event[]> => {
    const c = new ScramClientSession('u', password);
    let final: Buffer | undefined;
    return runOnPostgres(cluster.port, 'u', {
      name: 'login',
      mech: 'SCRAM-SHA-256',
      first: Buffer.from(c.clientFirst()),
      final: (sf) => (final = Buffer.from(c.handleServerFirst(sf))),
    }).then((events) => {
      t.truthy(final);
      const fin = events.find((e) => e.t === 'final');
      if (fin && fin.t === 'final') c.verifyServerFinal(fin.data); // throws if PostgreSQL's signature is not what we expect
      return events;
    });
  };
  const good = await login('secret');
  t.deepEqual(shape(good), [{ t: 'continue', data: 'r=…,s=…,i=…' }, { t: 'final', data: 'v=…' }, { t: 'ok' }]);
  const bad = await login('wrong');
  t.like(bad[1], { t: 'error', severity: 'FATAL', code: '28P01', message: 'password authentication failed for user "u"' });

  // 5. The same messages, good and bad, to PostgreSQL and to ScramServerSession: the same answers.
  const zeros = Buffer.alloc(32).toString('base64');
  const nonceOf = (sf: string): string => /^r=([^,]*)/.exec(sf)![1]!;
  const scripts: Script[] = [
    { name: 'libpq-like', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(clientFinalFor('secret', 'n=,r=abc', sf)) },
    { name: 'wrong proof', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(clientFinalFor('nope', 'n=,r=abc', sf)) },
    { name: 'y flag', mech: 'SCRAM-SHA-256', first: Buffer.from('y,,n=,r=abc'), final: (sf) => Buffer.from(clientFinalFor('secret', 'n=,r=abc', sf, 'eSws')) },
    { name: 'y flag, c=biws', mech: 'SCRAM-SHA-256', first: Buffer.from('y,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)},p=${zeros}`) },
    { name: 'extensions', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=x,r=abc,x=1,'), final: (sf) => Buffer.from(clientFinalFor('secret', 'n=x,r=abc,x=1,', sf, 'biws', ',e=1')) },
    { name: 'proof then comma', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(clientFinalFor('secret', 'n=,r=abc', sf) + ',') },
    { name: 'null initial response', mech: 'SCRAM-SHA-256', first: null, firstAgain: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(clientFinalFor('secret', 'n=,r=abc', sf)) },
    { name: 'PLUS', mech: 'SCRAM-SHA-256-PLUS', first: Buffer.from('p=tls-server-end-point,,n=,r=abc') },
    { name: 'unknown mechanism', mech: 'FOO', first: Buffer.from('n,,n=,r=abc') },
    { name: 'empty', mech: 'SCRAM-SHA-256', first: Buffer.alloc(0) },
    { name: 'p flag', mech: 'SCRAM-SHA-256', first: Buffer.from('p=tls-server-end-point,,n=,r=abc') },
    { name: 'bad flag', mech: 'SCRAM-SHA-256', first: Buffer.from('x,,n=,r=abc') },
    { name: 'blank flag', mech: 'SCRAM-SHA-256', first: Buffer.from(' ,,n=,r=abc') },
    { name: 'n only', mech: 'SCRAM-SHA-256', first: Buffer.from('n') },
    { name: 'authzid', mech: 'SCRAM-SHA-256', first: Buffer.from('n,a=u,n=,r=abc') },
    { name: 'no second comma', mech: 'SCRAM-SHA-256', first: Buffer.from('n,n=,r=abc') },
    { name: 'mext', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,m=x,n=,r=abc') },
    { name: 'no user', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,r=abc') },
    { name: 'no =', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n') },
    { name: 'no nonce', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=') },
    { name: 'blank in nonce', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=a c') },
    { name: 'bad extension name', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc,1=x') },
    { name: 'extension without =', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc,x') },
    { name: 'final: no r', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: () => Buffer.from('c=biws') },
    { name: 'final: no c', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`r=${nonceOf(sf)},p=${zeros}`) },
    { name: 'final: eSws for n', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=eSws,r=${nonceOf(sf)},p=${zeros}`) },
    { name: 'final: no proof', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)}`) },
    { name: 'final: bad proof', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)},p=!!!!`) },
    { name: 'final: short proof', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)},p=AAAA`) },
    { name: 'final: garbage', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)},x=1,p=${zeros},z=1`) },
    { name: 'final: nonce', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: (sf) => Buffer.from(`c=biws,r=${nonceOf(sf)}x,p=${zeros}`) },
    { name: 'final: client nonce only', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: () => Buffer.from(`c=biws,r=abc,p=${zeros}`) },
    { name: 'final: empty', mech: 'SCRAM-SHA-256', first: Buffer.from('n,,n=,r=abc'), final: () => Buffer.alloc(0) },
  ];
  for (const s of scripts) {
    const theirs = shape(await runOnPostgres(cluster.port, 'u', s));
    const ours = shape(runOnOurs(v, 'u', s));
    t.deepEqual(ours, theirs, s.name);
  }
  // an unknown user: PostgreSQL's mock exchange and ours look alike and fail alike
  for (const s of scripts.slice(0, 3)) {
    t.deepEqual(shape(runOnOurs(null, 'nosuch', s)), shape(await runOnPostgres(cluster.port, 'nosuch', s)), `unknown user: ${s.name}`);
  }

  // 6. node-postgres (its own SCRAM client) logs in to PostgreSQL with the password behind that verifier.
  const pgc = new pg.Client({ host: cluster.host, port: cluster.port, user: 'u', password: 'secret', database: 'postgres' });
  await pgc.connect();
  t.is((await pgc.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'u');
  await pgc.end();
});

// ---------------------------------------------------------------------------
// Our server against real clients: node-postgres and libpq (psql)

/** A tiny server that authenticates with ScramServerSession and answers every query with EmptyQueryResponse. */
async function startScramServer(verifiers: Record<string, ScramVerifier>): Promise<{ port: number; close: () => Promise<void> }> {
  const server = net.createServer((sock) => {
    const w = Wire.accept(sock);
    void (async () => {
      let startup = await w.readStartup();
      while (startup && (startup.readInt32BE(0) === 80877103 || startup.readInt32BE(0) === 80877104)) {
        w.write(Buffer.from('N')); // no SSL, no GSS encryption
        startup = await w.readStartup();
      }
      if (!startup) return w.close();
      const params = startup.subarray(4).toString('utf8').split('\0');
      const user = params[params.indexOf('user') + 1] ?? '';
      const session = new ScramServerSession(verifiers[user] ?? null, { mockSeed: `${user}\0test` });
      const error = (code: string, msg: string): void =>
        w.write(message('E', Buffer.concat([cstr('SFATAL'), cstr('VFATAL'), cstr(`C${code}`), cstr(`M${msg}`), Buffer.from([0])])));
      try {
        w.write(message('R', Buffer.concat([int32(10), ...session.mechanisms.map(cstr), Buffer.from([0])])));
        const init = await w.read();
        if (!init || init.type !== 'p') return w.close();
        const mechEnd = init.body.indexOf(0);
        const mech = init.body.subarray(0, mechEnd).toString('utf8');
        const len = init.body.readInt32BE(mechEnd + 1);
        const data = len < 0 ? null : init.body.subarray(mechEnd + 5, mechEnd + 5 + len);
        let sf = session.clientFirst(mech, data);
        w.write(message('R', Buffer.concat([int32(11), Buffer.from(sf, 'latin1')])));
        if (data === null) {
          const again = await w.read();
          if (!again) return w.close();
          sf = session.clientFirst(mech, again.body);
          w.write(message('R', Buffer.concat([int32(11), Buffer.from(sf, 'latin1')])));
        }
        const resp = await w.read();
        if (!resp || resp.type !== 'p') return w.close();
        const res = session.clientFinal(resp.body);
        if (!res.ok) {
          error('28P01', `password authentication failed for user "${user}"`);
          return w.sock.end();
        }
        w.write(
          message('R', Buffer.concat([int32(12), Buffer.from(res.serverFinal)])),
          message('R', int32(0)),
          ...[
            ['server_version', '15.4'],
            ['integer_datetimes', 'on'],
            ['server_encoding', 'UTF8'],
            ['client_encoding', 'UTF8'],
            ['DateStyle', 'ISO, MDY'],
            ['standard_conforming_strings', 'on'],
          ].map(([k, v]) => message('S', Buffer.concat([cstr(k!), cstr(v!)]))),
          message('K', Buffer.concat([int32(1), int32(2)])),
          message('Z', Buffer.from('I')),
        );
        for (;;) {
          const m = await w.read();
          if (!m || m.type === 'X') return w.close();
          if (m.type === 'Q') w.write(message('I', Buffer.alloc(0)), message('Z', Buffer.from('I')));
        }
      } catch (e) {
        if (e instanceof PgError) {
          error(e.code, e.message);
          return w.sock.end();
        }
        w.close();
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

test('node-postgres logs in to ScramServerSession (and checks its signature)', async (t) => {
  const srv = await startScramServer({ u: makeVerifier('secret'), v: makeVerifier('\u2168') });
  t.teardown(srv.close);
  const connect = async (user: string, password: string): Promise<void> => {
    const c = new pg.Client({ host: '127.0.0.1', port: srv.port, user, password, database: 'x', connectionTimeoutMillis: 10_000 });
    try {
      await c.connect();
      await c.query('');
    } finally {
      await c.end().catch(() => undefined);
    }
  };
  await t.notThrowsAsync(connect('u', 'secret'));
  await t.throwsAsync(connect('u', 'wrong'), { message: 'password authentication failed for user "u"' });
  await t.throwsAsync(connect('nosuch', 'secret'), { message: 'password authentication failed for user "nosuch"' });
  // node-postgres does not SASLprep: 'IX' is what PostgreSQL stores for 'Ⅸ'
  await t.notThrowsAsync(connect('v', 'IX'));
});

test('libpq (psql) logs in to ScramServerSession and verifies the server signature', async (t) => {
  const srv = await startScramServer({ u: makeVerifier('secret'), v: makeVerifier('\u2168-ﬁ') });
  t.teardown(srv.close);
  const psql = (user: string, password: string) =>
    runPgTool('psql', ['-X', '-w', '-h', '127.0.0.1', '-p', String(srv.port), '-U', user, '-d', 'x', '-c', 'SELECT 1'], {
      env: { PGPASSWORD: password, PGSSLMODE: 'prefer', PGCONNECT_TIMEOUT: '10' },
      timeoutMs: 30_000,
    });
  const ok = await psql('u', 'secret');
  t.is(ok.code, 0, ok.stderr);
  const wrong = await psql('u', 'wrong');
  t.not(wrong.code, 0);
  t.regex(wrong.stderr, /password authentication failed for user "u"/);
  const unknown = await psql('nosuch', 'secret');
  t.regex(unknown.stderr, /password authentication failed for user "nosuch"/);
  // libpq applies SASLprep too
  const prepped = await psql('v', '\u2168-ﬁ');
  t.is(prepped.code, 0, prepped.stderr);
  const prepped2 = await psql('v', 'IX-fi');
  t.is(prepped2.code, 0, prepped2.stderr);
});
