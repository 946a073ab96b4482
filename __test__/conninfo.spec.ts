// libpq connection strings: parseConnInfo (both syntaxes, defaults from a
// fake environment, libpq's error messages), the password file,
// redactConnInfo, toConnectOptions, and a real PostgreSQL 15 reached
// through a parsed URI (plain, pgpass + SCRAM, and TLS verify modes).

import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';

import test from 'ava';

import { ReplicationClient } from '../ts/client/client.js';
import {
  ConnInfoError,
  parseConnInfo,
  passwordFromPgpass,
  redactConnInfo,
  toConnectOptions,
  type ConnInfo,
} from '../ts/client/conninfo.js';

import { chownToServerUserSync, registerCleanupHooks, withPostgres } from './harness/index.js';

registerCleanupHooks(test);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'walkeeper-conninfo-'));
test.after.always(() => rmSync(scratch, { recursive: true, force: true }));
let scratchN = 0;
/** A fresh empty directory (a fake HOME, say). */
function freshDir(): string {
  const d = path.join(scratch, `d${scratchN++}`);
  mkdirSync(d, { recursive: true });
  return d;
}

/** A fake environment: a HOME without dot files, PGUSER=bob, nothing else. */
function fakeEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { HOME: freshDir(), PGUSER: 'bob', ...extra };
}

const parse = (s: string, extra: Record<string, string> = {}): ConnInfo => parseConnInfo(s, fakeEnv(extra));
const hostsOf = (ci: ConnInfo): string[] => ci.hosts.map((h) => (h.hostaddr ? `${h.host}/${h.hostaddr}:${h.port}` : `${h.host}:${h.port}`));

function throwsMessage(t: import('ava').ExecutionContext, s: string, message: string, extra: Record<string, string> = {}): void {
  const e = t.throws(() => parse(s, extra), { instanceOf: ConnInfoError }, s);
  t.is(e?.message, message, s);
  t.false(e?.message.includes('\n'), 'one line');
}

// ------------------------------------------------------------ key=value

test('key=value: plain values, blanks around "=", and the defaults', (t) => {
  const ci = parse("host=db1 port = 5433\tuser=\n alice dbname='my db' application_name=wk");
  t.deepEqual(ci.hosts, [{ host: 'db1', port: 5433 }]);
  t.is(ci.user, 'alice');
  t.is(ci.dbname, 'my db');
  t.is(ci.applicationName, 'wk');
  t.is(ci.sslmode, 'prefer');
  t.is(ci.targetSessionAttrs, 'any');
  t.is(ci.password, undefined);
  t.is(ci.options, undefined);
  t.is(ci.connectTimeoutMs, undefined);

  const empty = parse('');
  t.deepEqual(empty.hosts, [{ host: 'localhost', port: 5432 }]);
  t.is(empty.user, 'bob');
  t.is(empty.dbname, 'bob', 'dbname defaults to the user name');
  t.deepEqual(parse('  \t\n ').hosts, [{ host: 'localhost', port: 5432 }]);
});

test('key=value: quoting and backslash escapes', (t) => {
  t.is(parse("password='a b\\'c'").password, "a b'c");
  t.is(parse("password='back\\\\slash'").password, 'back\\slash');
  t.is(parse('password=a\\ b\\\\c').password, 'a b\\c', 'a backslash escapes in unquoted values too');
  t.is(parse("password=it's").password, "it's", 'a quote inside an unquoted value is literal');
  t.is(parse("password='' user=x").password, undefined, 'an empty password is no password');
  t.is(parse("options='-c wal_sender_timeout=0  -c x=y'").options, '-c wal_sender_timeout=0  -c x=y');
  const adj = parse("host='h'port=6543");
  t.deepEqual(adj.hosts, [{ host: 'h', port: 6543 }], 'a closing quote ends the value: the next keyword may follow at once');
  t.is(parse('password=trailing\\').password, 'trailing', 'a backslash at the very end is dropped');
});

test('key=value: libpq quirks kept', (t) => {
  // an "empty" unquoted value swallows the next pair: blanks after "=" are skipped
  t.deepEqual(parse('host= port=5432').hosts, [{ host: 'port=5432', port: 5432 }]);
  t.deepEqual(parse("host='' port=5433").hosts, [{ host: 'localhost', port: 5433 }], "host='' means the default host");
  // the last of repeated keywords wins
  t.is(parse('user=a user=b').user, 'b');
  // requiressl is the old spelling of sslmode
  t.is(parse('requiressl=1').sslmode, 'require');
  t.is(parse('requiressl=0').sslmode, 'prefer');
  t.is(parse('sslmode=require requiressl=0').sslmode, 'prefer');
  // keywords are case-sensitive; values of enumerations too
  throwsMessage(t, 'HOST=x', 'invalid connection option "HOST"');
  throwsMessage(t, 'sslmode=REQUIRE', 'invalid sslmode value: "REQUIRE"');
  // dbname is not expanded as a connection string in this form
  t.is(parse('dbname=postgresql://elsewhere/x').dbname, 'postgresql://elsewhere/x');
  // a URI prefix is case-sensitive: this is parsed as key=value
  throwsMessage(t, 'POSTGRESQL://h/db', 'missing "=" after "POSTGRESQL://h/db" in connection info string');
});

test('key=value: errors use libpq wording', (t) => {
  throwsMessage(t, 'host', 'missing "=" after "host" in connection info string');
  throwsMessage(t, 'host=a port', 'missing "=" after "port" in connection info string');
  throwsMessage(t, 'host x=1', 'missing "=" after "host" in connection info string');
  throwsMessage(t, "password='abc", 'unterminated quoted string in connection info string');
  throwsMessage(t, "password='abc\\'", 'unterminated quoted string in connection info string');
  throwsMessage(t, 'foo=1', 'invalid connection option "foo"');
  throwsMessage(t, '=x', 'invalid connection option ""');
  throwsMessage(t, 'tty=x', 'invalid connection option "tty"');
  // the first problem met is the one reported, as libpq stores as it scans
  throwsMessage(t, "foo=1 host='x", 'invalid connection option "foo"');
  throwsMessage(t, "host='x", 'unterminated quoted string in connection info string');
});

test('key=value: other keywords are kept in `other`', (t) => {
  const ci = parse('keepalives=1 keepalives_idle=30 sslcrl=/c.crl fallback_application_name=fb channel_binding=disable replication=true');
  t.like(ci.other, { keepalives: '1', keepalives_idle: '30', sslcrl: '/c.crl', fallback_application_name: 'fb', channel_binding: 'disable', replication: 'true' });
  t.is(ci.applicationName, 'fb', 'fallback_application_name when application_name is unset');
  t.is(parse('application_name=a fallback_application_name=fb').applicationName, 'a');
  t.is(parse("application_name='' fallback_application_name=fb").applicationName, 'fb');
  for (const k of ['host', 'port', 'user', 'password', 'dbname', 'sslmode', 'application_name', 'connect_timeout']) t.false(k in ci.other, k);
});

// ------------------------------------------------------------------ URI

test('URI: everything at once', (t) => {
  const ci = parse('postgresql://rep:s3cr%40t@db1.example:5433,db2.example/my%20db?application_name=wk&sslmode=verify-full&connect_timeout=7&target_session_attrs=read-write&keepalives=0');
  t.deepEqual(ci.hosts, [
    { host: 'db1.example', port: 5433 },
    { host: 'db2.example', port: 5432 },
  ]);
  t.is(ci.user, 'rep');
  t.is(ci.password, 's3cr@t');
  t.is(ci.dbname, 'my db');
  t.is(ci.applicationName, 'wk');
  t.is(ci.sslmode, 'verify-full');
  t.is(ci.connectTimeoutMs, 7000);
  t.is(ci.targetSessionAttrs, 'read-write');
  t.is(ci.other.keepalives, '0');
});

test('URI: short prefix, optional parts, percent-decoding', (t) => {
  t.deepEqual(hostsOf(parse('postgres://h')), ['h:5432']);
  t.deepEqual(hostsOf(parse('postgresql://')), ['localhost:5432']);
  t.deepEqual(hostsOf(parse('postgresql://', { PGHOST: 'envhost', PGPORT: '6000' })), ['envhost:6000']);
  t.deepEqual(hostsOf(parse('postgresql://h:')), ['h:5432'], 'an empty port is the default');
  t.deepEqual(hostsOf(parse('postgresql://h:/db')), ['h:5432']);
  t.is(parse('postgresql://u@h').user, 'u');
  t.is(parse('postgresql://u:@h').password, undefined);
  const noUser = parse('postgresql://:pw@h');
  t.is(noUser.user, 'bob');
  t.is(noUser.password, 'pw');
  t.is(parse('postgresql://h/').dbname, 'bob');
  t.is(parse('postgresql://h/', { PGDATABASE: 'envdb' }).dbname, 'envdb', 'an empty dbname is not set, so PGDATABASE applies');
  t.is(parse('postgresql://h/db/more').dbname, 'db/more');
  t.is(parse('postgresql://u%3Ax@h').user, 'u:x');
  t.is(parse('postgresql://h/%C3%A9t%c3%a9').dbname, 'été');
  t.is(parse('postgresql://h?application_name=a%20b+c').applicationName, 'a b+c', "'+' is not a space");
  t.is(parse('postgresql://h?app%6Cication_name=x').applicationName, 'x', 'keywords are decoded too');
  t.is(parse('postgresql://h?options=-c%20wal_sender_timeout%3D0').options, '-c wal_sender_timeout=0');
  t.deepEqual(hostsOf(parse('postgresql://h?host=other&port=7')), ['other:7'], 'query parameters override the netloc');
  t.deepEqual(hostsOf(parse('postgresql://h?')), ['h:5432']);
  t.deepEqual(hostsOf(parse('postgresql://h?a=1&'.replace('a=1', 'keepalives=1'))), ['h:5432']);
  t.is(parse('postgresql://h/db?user=x@y').user, 'x@y');
});

test('URI: an unencoded "@" in the password ends it (libpq looks for the first "@" before "/")', (t) => {
  const ci = parse('postgresql://u:p@ss@h/db');
  t.is(ci.password, 'p');
  t.deepEqual(hostsOf(ci), ['ss@h:5432']);
  t.is(parse('postgresql://u:p%40ss@h/db').password, 'p@ss');
});

test('URI: ssl=true (JDBC) and requiressl', (t) => {
  t.is(parse('postgresql://h?ssl=true').sslmode, 'require');
  t.is(parse('postgresql://h?requiressl=1').sslmode, 'require');
  throwsMessage(t, 'postgresql://h?ssl=false', 'invalid URI query parameter: "ssl"');
  throwsMessage(t, 'postgresql://h?ssl=1', 'invalid URI query parameter: "ssl"');
});

test('URI: IPv6, host lists and per-host ports', (t) => {
  t.deepEqual(hostsOf(parse('postgresql://[::1]')), ['::1:5432']);
  t.deepEqual(hostsOf(parse('postgresql://[::1]:5433/db')), ['::1:5433']);
  t.deepEqual(hostsOf(parse('postgresql://[fe80::1%25eth0]:1,[::2],h:3/x')), ['fe80::1%eth0:1', '::2:5432', 'h:3']);
  t.deepEqual(hostsOf(parse('postgresql://a:1,b:2,c:3/d')), ['a:1', 'b:2', 'c:3']);
  t.deepEqual(hostsOf(parse('postgresql://a:1,b/d')), ['a:1', 'b:5432']);
  t.deepEqual(hostsOf(parse('postgresql://a,b:2/d')), ['a:5432', 'b:2']);
  t.deepEqual(hostsOf(parse('postgresql://a,b?port=7')), ['a:7', 'b:7'], 'one port for every host');
  t.deepEqual(hostsOf(parse('postgresql://h,/d')), ['h:5432', 'localhost:5432']);
  // libpq quirk: a host list without ports stores port="," so each host gets 5432, not PGPORT
  t.deepEqual(hostsOf(parse('postgresql://a,b/d', { PGPORT: '6000' })), ['a:5432', 'b:5432']);
  t.deepEqual(hostsOf(parse('postgresql://a/d', { PGPORT: '6000' })), ['a:6000']);
  // decoding happens on the joined list, so an encoded comma splits a host
  t.deepEqual(hostsOf(parse('postgresql://a%2Cb/d')), ['a:5432', 'b:5432']);
});

test('URI: Unix-socket hosts are kept', (t) => {
  t.deepEqual(hostsOf(parse('postgresql://%2Fvar%2Frun%2Fpostgresql/db')), ['/var/run/postgresql:5432']);
  t.deepEqual(hostsOf(parse('postgresql:///db?host=/tmp&port=5433')), ['/tmp:5433']);
  t.deepEqual(hostsOf(parse('host=@abstract')), ['@abstract:5432']);
});

test('URI: errors use libpq wording', (t) => {
  throwsMessage(t, 'postgresql://[::1', 'end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://[::1"');
  throwsMessage(t, 'postgresql://[]/db', 'IPv6 host address may not be empty in URI: "postgresql://[]/db"');
  throwsMessage(t, 'postgresql://[::1]x', 'unexpected character "x" at position 19 in URI (expected ":" or "/"): "postgresql://[::1]x"');
  throwsMessage(t, 'postgresql://u@[::1]x/db', 'unexpected character "x" at position 21 in URI (expected ":" or "/"): "postgresql://u@[::1]x/db"');
  throwsMessage(t, 'postgresql://h?x=1', 'invalid URI query parameter: "x"');
  throwsMessage(t, 'postgresql://h?a', 'missing key/value separator "=" in URI query parameter: "a"');
  throwsMessage(t, 'postgresql://h?keepalives=1&&x=2', 'missing key/value separator "=" in URI query parameter: ""');
  throwsMessage(t, 'postgresql://h?a=1=2', 'extra key/value separator "=" in URI query parameter: "a"');
  throwsMessage(t, 'postgresql://%zz', 'invalid percent-encoded token: "%zz"');
  throwsMessage(t, 'postgresql://h/db%2', 'invalid percent-encoded token: "db%2"');
  throwsMessage(t, 'postgresql://h?application_name=%G0', 'invalid percent-encoded token: "%G0"');
  throwsMessage(t, 'postgresql://h/%00', 'forbidden value %00 in percent-encoded value: "%00"');
  throwsMessage(t, 'postgresql://h:abc/db', 'invalid integer value "abc" for connection option "port"');
});

// ------------------------------------------------------ hosts and ports

test('host and port lists', (t) => {
  t.deepEqual(hostsOf(parse('host=a,b,c port=6000')), ['a:6000', 'b:6000', 'c:6000'], 'one port applies to all');
  t.deepEqual(hostsOf(parse('host=a,b port=1,2')), ['a:1', 'b:2']);
  t.deepEqual(hostsOf(parse('host=a,b,c port=1,,3')), ['a:1', 'b:5432', 'c:3']);
  t.deepEqual(hostsOf(parse('host=a,,b')), ['a:5432', 'localhost:5432', 'b:5432']);
  t.deepEqual(hostsOf(parse("host='a, b'")), ['a:5432', ' b:5432'], 'no trimming, as libpq');
  t.deepEqual(hostsOf(parse('host=a,b', { PGPORT: '6000' })), ['a:6000', 'b:6000']);
  t.deepEqual(hostsOf(parse('', { PGHOST: 'x,y', PGPORT: '1,2' })), ['x:1', 'y:2']);
  throwsMessage(t, 'host=a,b port=1,2,3', 'could not match 3 port numbers to 2 hosts');
  throwsMessage(t, 'host=a port=1,2', 'could not match 2 port numbers to 1 hosts');
  throwsMessage(t, '', 'could not match 3 port numbers to 2 hosts', { PGHOST: 'x,y', PGPORT: '1,2,3' });
});

test('hostaddr: where to connect, host names the server', (t) => {
  t.deepEqual(parse('host=db.example hostaddr=10.0.0.5 port=5433').hosts, [{ host: 'db.example', port: 5433, hostaddr: '10.0.0.5' }]);
  t.deepEqual(parse('hostaddr=10.0.0.5,10.0.0.6').hosts, [
    { host: '', port: 5432, hostaddr: '10.0.0.5' },
    { host: '', port: 5432, hostaddr: '10.0.0.6' },
  ]);
  t.deepEqual(hostsOf(parse('host=a,b hostaddr=10.0.0.1,')), ['a/10.0.0.1:5432', 'b:5432']);
  throwsMessage(t, 'host=a hostaddr=10.0.0.1,10.0.0.2', 'could not match 1 host names to 2 hostaddr values');
  throwsMessage(t, 'host=a,b', 'could not match 2 host names to 1 hostaddr values', { PGHOSTADDR: '10.0.0.1' });
});

test('port numbers: libpq checks them like strtol, then the range', (t) => {
  t.deepEqual(hostsOf(parse('port=+5 host=h')), ['h:5']);
  t.deepEqual(hostsOf(parse("port=' 6 ' host=h")), ['h:6']);
  t.deepEqual(hostsOf(parse('port=65535 host=h')), ['h:65535']);
  throwsMessage(t, 'port=abc', 'invalid integer value "abc" for connection option "port"');
  throwsMessage(t, 'port=5x', 'invalid integer value "5x" for connection option "port"');
  throwsMessage(t, 'port=99999999999', 'invalid integer value "99999999999" for connection option "port"');
  throwsMessage(t, 'port=0', 'invalid port number: "0"');
  throwsMessage(t, 'port=-1', 'invalid port number: "-1"');
  throwsMessage(t, 'port=70000', 'invalid port number: "70000"');
  throwsMessage(t, 'host=a,b port=1,70000', 'invalid port number: "70000"');
  throwsMessage(t, '', 'invalid integer value "x" for connection option "port"', { PGPORT: 'x' });
});

// ------------------------------------------------- settings and defaults

test('connect_timeout: seconds, at least 2, 0 or negative = none', (t) => {
  t.is(parse('connect_timeout=10').connectTimeoutMs, 10_000);
  t.is(parse('connect_timeout=1').connectTimeoutMs, 2000);
  t.is(parse('connect_timeout=0').connectTimeoutMs, 0);
  t.is(parse('connect_timeout=-3').connectTimeoutMs, 0);
  t.is(parse('', { PGCONNECT_TIMEOUT: '5' }).connectTimeoutMs, 5000);
  throwsMessage(t, 'connect_timeout=abc', 'invalid integer value "abc" for connection option "connect_timeout"');
  throwsMessage(t, 'connect_timeout=1.5', 'invalid integer value "1.5" for connection option "connect_timeout"');
});

test('enumerated settings are checked with libpq wording', (t) => {
  for (const m of ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const) t.is(parse(`sslmode=${m}`).sslmode, m);
  for (const a of ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const) t.is(parse(`target_session_attrs=${a}`).targetSessionAttrs, a);
  throwsMessage(t, 'sslmode=bogus', 'invalid sslmode value: "bogus"');
  throwsMessage(t, "sslmode=''", 'invalid sslmode value: ""');
  throwsMessage(t, 'target_session_attrs=master', 'invalid target_session_attrs value: "master"');
  throwsMessage(t, 'channel_binding=maybe', 'invalid channel_binding value: "maybe"');
  throwsMessage(t, 'gssencmode=x', 'invalid gssencmode value: "x"');
  throwsMessage(t, 'load_balance_hosts=x', 'invalid load_balance_hosts value: "x"');
  throwsMessage(t, 'ssl_min_protocol_version=TLSv9', 'invalid ssl_min_protocol_version value: "TLSv9"');
  throwsMessage(t, 'ssl_max_protocol_version=TLSv1.1', 'invalid SSL protocol version range', {});
  throwsMessage(t, 'ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSv1.2', 'invalid SSL protocol version range');
  throwsMessage(t, 'sslnegotiation=direct', 'weak sslmode "prefer" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")');
  // sslrootcert=system strengthens the default sslmode, and refuses weaker explicit ones
  t.is(parse('sslrootcert=system').sslmode, 'verify-full');
  throwsMessage(t, 'sslrootcert=system sslmode=require', 'weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")');
});

test('environment defaults, and explicit values win over them', (t) => {
  const env = {
    PGHOST: 'envhost',
    PGPORT: '6001',
    PGUSER: 'envuser',
    PGPASSWORD: 'envpw',
    PGDATABASE: 'envdb',
    PGAPPNAME: 'envapp',
    PGSSLMODE: 'require',
    PGCONNECT_TIMEOUT: '3',
    PGOPTIONS: '-c x=1',
    PGTARGETSESSIONATTRS: 'primary',
    PGSSLROOTCERT: '/ca.crt',
    PGSSLCERT: '/c.crt',
    PGSSLKEY: '/c.key',
    PGSSLCRL: '/c.crl',
    PGCHANNELBINDING: 'disable',
  };
  const ci = parse('', env);
  t.deepEqual(hostsOf(ci), ['envhost:6001']);
  t.like(ci, {
    user: 'envuser',
    password: 'envpw',
    dbname: 'envdb',
    applicationName: 'envapp',
    sslmode: 'require',
    connectTimeoutMs: 3000,
    options: '-c x=1',
    targetSessionAttrs: 'primary',
    sslrootcert: '/ca.crt',
    sslcert: '/c.crt',
    sslkey: '/c.key',
  });
  t.like(ci.other, { sslcrl: '/c.crl', channel_binding: 'disable' });

  const over = parse('postgresql://u:pw@h:7/db?application_name=a&sslmode=disable&connect_timeout=9&options=-cy%3D2&target_session_attrs=standby', env);
  t.deepEqual(hostsOf(over), ['h:7']);
  t.like(over, { user: 'u', password: 'pw', dbname: 'db', applicationName: 'a', sslmode: 'disable', connectTimeoutMs: 9000, options: '-cy=2', targetSessionAttrs: 'standby' });

  t.is(parse('', { PGREQUIRESSL: '1' }).sslmode, 'require');
  t.is(parse('', { PGREQUIRESSL: '1', PGSSLMODE: 'allow' }).sslmode, 'allow', 'PGSSLMODE beats PGREQUIRESSL');
  t.deepEqual(hostsOf(parse('', { PGHOST: '' })), ['localhost:5432'], 'an empty PGHOST is the default host');
  throwsMessage(t, '', 'invalid sslmode value: ""', { PGSSLMODE: '' });
  throwsMessage(t, '', 'invalid target_session_attrs value: "x"', { PGTARGETSESSIONATTRS: 'x' });
});

test('user defaults to the OS user, dbname to the user; passfile to ~/.pgpass', (t) => {
  const home = freshDir();
  const ci = parseConnInfo('host=h', { HOME: home });
  t.is(ci.user, os.userInfo().username);
  t.is(ci.dbname, ci.user);
  t.is(ci.other.passfile, path.join(home, '.pgpass'));
  t.is(parseConnInfo("user=''", { HOME: home, PGUSER: 'ignored?' }).user, os.userInfo().username, "user='' means the OS user (not PGUSER)");
  t.is(parseConnInfo('', { HOME: home, PGPASSFILE: '/x/pgpass' }).other.passfile, '/x/pgpass');
  t.is(parseConnInfo('passfile=/y', { HOME: home, PGPASSFILE: '/x/pgpass' }).other.passfile, '/y');
});

test('service files: PGSERVICEFILE, ~/.pg_service.conf, explicit values win', (t) => {
  const home = freshDir();
  writeFileSync(
    path.join(home, '.pg_service.conf'),
    ['# services', '[other]', 'host=nope', '', '[upstream]', 'host=svc1,svc2', 'port=7000', '  user=svcuser  ', 'sslmode=require', '[after]', 'host=nope2'].join('\n'),
  );
  const ci = parseConnInfo('service=upstream user=me', { HOME: home });
  t.deepEqual(hostsOf(ci), ['svc1:7000', 'svc2:7000']);
  t.is(ci.user, 'me');
  t.is(ci.sslmode, 'require');
  t.is(ci.other.service, 'upstream');
  t.deepEqual(hostsOf(parseConnInfo('', { HOME: home, PGSERVICE: 'upstream', PGHOST: 'envhost' })), ['svc1:7000', 'svc2:7000'], 'the service file beats the environment');
  t.deepEqual(hostsOf(parseConnInfo('postgresql://?service=other', { HOME: home, PGUSER: 'bob' })), ['nope:5432']);

  const file = path.join(freshDir(), 'services.conf');
  writeFileSync(file, '[a]\nhost=fromfile\n[nested]\nservice=a\n[bad]\nbogus=1\n[noeq]\nhost\n');
  const env = { HOME: home, PGSERVICEFILE: file, PGUSER: 'bob', PGSYSCONFDIR: freshDir() };
  t.deepEqual(hostsOf(parseConnInfo('service=a', env)), ['fromfile:5432']);
  t.throws(() => parseConnInfo('service=zzz', env), { message: 'definition of service "zzz" not found' });
  t.throws(() => parseConnInfo('service=nested', env), { message: `nested service specifications not supported in service file "${file}", line 4` });
  t.throws(() => parseConnInfo('service=bad', env), { message: `syntax error in service file "${file}", line 6` });
  t.throws(() => parseConnInfo('service=noeq', env), { message: `syntax error in service file "${file}", line 8` });
  t.throws(() => parseConnInfo('service=a', { ...env, PGSERVICEFILE: '/nonexistent/x.conf' }), { message: 'service file "/nonexistent/x.conf" not found' });
});

// ---------------------------------------------------------------- pgpass

function pgpassFile(lines: string[], mode = 0o600): string {
  const f = path.join(freshDir(), 'pgpass');
  writeFileSync(f, lines.join('\n'));
  chmodSync(f, mode);
  return f;
}

test('pgpass: fields, wildcards, escapes, first match wins', (t) => {
  const f = pgpassFile([
    '# comment:*:*:*:nope',
    'h1:5432:db:bob:pw1',
    'h1:5432:db:bob:second',
    'h2:*:*:bob:pw\\:2\\\\x:ignored',
    'h\\:3:5432:db:bob:colonhost',
    'localhost:5432:db:bob:local',
    'h5:5432:d\\b:bob:escdb',
    'crlf:5432:db:bob:crlf\r',
    '*:5433:*:*:star',
  ]);
  const pw = (h: string, p: number | string, d: string, u: string): string | undefined => passwordFromPgpass(h, p, d, u, {}, { passfile: f });
  t.is(pw('h1', 5432, 'db', 'bob'), 'pw1');
  t.is(pw('h1', '5432', 'db', 'bob'), 'pw1');
  t.is(pw('h1', 5432, 'db', 'alice'), undefined);
  t.is(pw('h1', 5433, 'db', 'bob'), 'star');
  t.is(pw('h2', 1, 'any', 'bob'), 'pw:2\\x', 'the password ends at the first unescaped ":"');
  t.is(pw('h:3', 5432, 'db', 'bob'), 'colonhost');
  t.is(pw('', 5432, 'db', 'bob'), 'local', 'an empty host is localhost');
  t.is(pw('h5', 5432, 'db', 'bob'), 'escdb', '"\\b" in the file is an escaped "b"');
  t.is(pw('crlf', 5432, 'db', 'bob'), 'crlf');
  t.is(pw('zz', 5433, 'q', 'r'), 'star');
  t.is(pw('H1', 5432, 'db', 'bob'), undefined, 'matching is exact');
  t.is(pw('h1', 5432, '', 'bob'), undefined, 'no lookup without a database');
  t.is(pw('h1', 5432, 'db', ''), undefined, 'no lookup without a user');
});

test('pgpass: where the file is, and insecure files are ignored with libpq\'s warning', (t) => {
  const f = pgpassFile(['*:*:*:*:found']);
  t.is(passwordFromPgpass('h', 1, 'd', 'u', { PGPASSFILE: f }), 'found');
  const home = freshDir();
  writeFileSync(path.join(home, '.pgpass'), 'h:1:d:u:fromhome\n');
  chmodSync(path.join(home, '.pgpass'), 0o600);
  t.is(passwordFromPgpass('h', 1, 'd', 'u', { HOME: home }), 'fromhome');
  t.is(passwordFromPgpass('h', 1, 'd', 'u', { HOME: freshDir() }), undefined, 'no file, no password');

  const open = pgpassFile(['*:*:*:*:leaky'], 0o644);
  const warnings: string[] = [];
  t.is(passwordFromPgpass('h', 1, 'd', 'u', {}, { passfile: open, warn: (m) => warnings.push(m) }), undefined);
  t.deepEqual(warnings, [`password file "${open}" has group or world access; permissions should be u=rw (0600) or less`]);
  const dir = freshDir();
  t.is(passwordFromPgpass('h', 1, 'd', 'u', {}, { passfile: dir, warn: (m) => warnings.push(m) }), undefined);
  t.is(warnings[1], `password file "${dir}" is not a plain file`);
});

// ------------------------------------------------------------- redaction

test('redactConnInfo: key=value', (t) => {
  t.is(redactConnInfo('host=h password=secret user=u'), 'host=h password=*** user=u');
  t.is(redactConnInfo("password='a b\\'c' host=x"), 'password=*** host=x');
  t.is(redactConnInfo('password = a\\ b host=x'), 'password = *** host=x');
  t.is(redactConnInfo("host=x sslpassword='k' PASSWORD=z"), 'host=x sslpassword=*** PASSWORD=***');
  t.is(redactConnInfo("host=x password='unterminated and more"), 'host=x password=***', 'an unterminated quote hides the rest');
  t.is(redactConnInfo('host=x user=u'), 'host=x user=u');
  t.is(redactConnInfo('host=x garbage password=y'), 'host=x garbage password=***', 'a word libpq would refuse does not hide what follows');
  t.is(redactConnInfo('password'), 'password');
  t.is(redactConnInfo(''), '');
});

test('redactConnInfo: URIs', (t) => {
  t.is(redactConnInfo('postgresql://u:secret@h:5432/db'), 'postgresql://u:***@h:5432/db');
  t.is(redactConnInfo('postgres://u:p%40ss@h1,h2/db?sslmode=require'), 'postgres://u:***@h1,h2/db?sslmode=require');
  t.is(redactConnInfo('postgresql://u@h/db'), 'postgresql://u@h/db');
  t.is(redactConnInfo('postgresql://h/db'), 'postgresql://h/db');
  t.is(redactConnInfo('postgresql://u:@h/db'), 'postgresql://u:@h/db');
  t.is(redactConnInfo('postgresql://h/db?password=x&application_name=a&sslpassword=y&pass%77ord=z'), 'postgresql://h/db?password=***&application_name=a&sslpassword=***&pass%77ord=***');
  // broken URIs still hide the whole password
  t.is(redactConnInfo('postgresql://u:p@ss@h/db'), 'postgresql://u:***@h/db');
  t.is(redactConnInfo('postgresql://u:pa/ss@h/db'), 'postgresql://u:***@h/db');
  for (const s of ['postgresql://u:s3cr3t@h/db?password=s3cr3t', "user=u password='s3cr3t'", 'postgresql://u:s3cr3t@h?sslpassword=s3cr3t']) {
    t.false(redactConnInfo(s).includes('s3cr3t'), s);
  }
});

// -------------------------------------------------------- toConnectOptions

function certLike(cn: string, san: string): tls.PeerCertificate {
  return { subject: { CN: cn }, subjectaltname: san } as unknown as tls.PeerCertificate;
}

test('toConnectOptions: the plain fields', (t) => {
  const env = fakeEnv();
  const ci = parseConnInfo("postgresql://rep:pw@db1:5433,db2/x?application_name=wk&options=-c%20a%3Db&connect_timeout=4&sslmode=disable", env);
  t.deepEqual(toConnectOptions(ci, ci.hosts[1]!, { env }), {
    host: 'db2',
    port: 5432,
    user: 'rep',
    password: 'pw',
    applicationName: 'wk',
    options: '-c a=b',
    connectTimeoutMs: 4000,
    ssl: false,
  });
  t.is(toConnectOptions(ci, ci.hosts[0]!, { env, database: 'replication' }).database, 'replication');
  t.false('database' in toConnectOptions(ci, ci.hosts[0]!, { env }), 'database is left to the client (replication)');
  const none = parseConnInfo('host=h connect_timeout=0 sslmode=disable', env);
  t.is(toConnectOptions(none, none.hosts[0]!, { env }).connectTimeoutMs, 2_147_483_647, '0 = wait (practically) forever');
  const bare = parseConnInfo('host=h sslmode=disable', env);
  t.deepEqual(toConnectOptions(bare, bare.hosts[0]!, { env }), { host: 'h', port: 5432, user: 'bob', ssl: false });
  const addr = parseConnInfo('host=db.example hostaddr=10.1.2.3 sslmode=disable', env);
  t.is(toConnectOptions(addr, addr.hosts[0]!, { env }).host, '10.1.2.3', 'hostaddr is where to connect');
});

test('toConnectOptions: Unix sockets and unsupported protections are refused', (t) => {
  const env = fakeEnv();
  const sock = parseConnInfo('host=/var/run/postgresql,h', env);
  t.throws(() => toConnectOptions(sock, sock.hosts[0]!, { env }), { instanceOf: ConnInfoError, message: 'unix-domain socket hosts are not supported: /var/run/postgresql' });
  t.notThrows(() => toConnectOptions(sock, sock.hosts[1]!, { env }));
  for (const [s, msg] of [
    ['channel_binding=require', /channel_binding=require .*not supported/],
    ['require_auth=scram-sha-256', /require_auth=scram-sha-256 is not supported/],
    ['gssencmode=require', /gssencmode=require is not supported/],
    ['sslmode=require sslnegotiation=direct', /sslnegotiation=direct is not supported/],
  ] as const) {
    const ci = parseConnInfo(`host=h ${s}`, env);
    t.throws(() => toConnectOptions(ci, ci.hosts[0]!, { env }), { message: msg }, s);
  }
});

test('toConnectOptions: sslmode → ssl', (t) => {
  const env = fakeEnv();
  const dir = freshDir();
  const ca = path.join(dir, 'ca.crt');
  writeFileSync(ca, 'CA PEM');
  const ssl = (s: string, hostIndex = 0, e = env): unknown => {
    const ci = parseConnInfo(s, e);
    return toConnectOptions(ci, ci.hosts[hostIndex]!, { env: e }).ssl;
  };
  t.is(ssl('host=h sslmode=disable'), false);
  t.is(ssl('host=h sslmode=allow'), 'prefer');
  t.is(ssl('host=h sslmode=prefer'), 'prefer');
  t.is(ssl('host=h'), 'prefer');
  t.is(ssl('host=h sslmode=require'), 'require');
  t.is(ssl(`host=h sslmode=require sslrootcert=${path.join(dir, 'missing.crt')}`), 'require', 'a root file that does not exist does not matter for require');

  const vca = ssl(`host=db.example sslmode=verify-ca sslrootcert=${ca}`) as tls.ConnectionOptions;
  t.like(vca, { rejectUnauthorized: true, servername: 'db.example' });
  t.is(String(vca.ca), 'CA PEM');
  t.is(vca.checkServerIdentity!('db.example', certLike('other', 'DNS:other')), undefined, 'verify-ca does not check the name');

  const vfull = ssl(`host=db.example sslmode=verify-full sslrootcert=${ca}`) as tls.ConnectionOptions;
  t.like(vfull, { rejectUnauthorized: true, servername: 'db.example' });
  t.is(vfull.checkServerIdentity!('x', certLike('db.example', 'DNS:db.example')), undefined);
  t.true(vfull.checkServerIdentity!('db.example', certLike('other', 'DNS:other')) instanceof Error);
  const wild = ssl(`host=db.example.com sslmode=verify-full sslrootcert=${ca}`) as tls.ConnectionOptions;
  t.is(wild.checkServerIdentity!('x', certLike('x', 'DNS:*.example.com')), undefined, 'a leading wildcard matches one label');
  t.true(wild.checkServerIdentity!('x', certLike('x', 'DNS:*.com')) instanceof Error);

  const ip = ssl(`host=10.0.0.1 sslmode=verify-full sslrootcert=${ca}`) as tls.ConnectionOptions;
  t.is(ip.servername, '', 'no SNI for an IP address');
  t.is(ip.checkServerIdentity!('', certLike('x', 'IP Address:10.0.0.1')), undefined);
  t.true(ip.checkServerIdentity!('', certLike('10.0.0.1', 'DNS:10.0.0.1')) instanceof Error);

  const viaAddr = ssl(`host=db.example hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=${ca}`) as tls.ConnectionOptions;
  t.is(viaAddr.servername, 'db.example', 'SNI and the name check use host, not hostaddr');
  t.is((ssl(`host=db.example sslsni=0 sslmode=verify-full sslrootcert=${ca}`) as tls.ConnectionOptions).servername, '', 'sslsni=0');

  const sys = ssl('host=db.example sslrootcert=system') as tls.ConnectionOptions;
  t.is(sys.ca, undefined, 'sslrootcert=system: the bundled roots');
  t.is(sys.rejectUnauthorized, true);

  const vers = ssl(`host=h sslmode=verify-ca sslrootcert=${ca} ssl_min_protocol_version=TLSv1.3`) as tls.ConnectionOptions;
  t.is(vers.minVersion, 'TLSv1.3');

  const noAddrHost = parseConnInfo(`hostaddr=10.0.0.1 sslmode=verify-full sslrootcert=${ca}`, env);
  t.throws(() => toConnectOptions(noAddrHost, noAddrHost.hosts[0]!, { env }), { message: 'host name must be specified for a verified SSL connection' });

  const missing = parseConnInfo(`host=h sslmode=verify-ca sslrootcert=${path.join(dir, 'nope.crt')}`, env);
  t.throws(() => toConnectOptions(missing, missing.hosts[0]!, { env }), { message: /^root certificate file ".*nope\.crt" does not exist\. Either provide the file/ });
  const defaultMissing = parseConnInfo('host=h sslmode=verify-full', env);
  t.throws(() => toConnectOptions(defaultMissing, defaultMissing.hosts[0]!, { env }), {
    message: `root certificate file "${path.join(env.HOME!, '.postgresql', 'root.crt')}" does not exist. Either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.`,
  });
});

test('toConnectOptions: libpq\'s require + root certificate = verify-ca, and client certificates', (t) => {
  const home = freshDir();
  const env = { HOME: home, PGUSER: 'bob' };
  mkdirSync(path.join(home, '.postgresql'));
  const ssl = (s: string): unknown => {
    const ci = parseConnInfo(s, env);
    return toConnectOptions(ci, ci.hosts[0]!, { env }).ssl;
  };
  t.is(ssl('host=h sslmode=require'), 'require');
  writeFileSync(path.join(home, '.postgresql', 'root.crt'), 'ROOT');
  const req = ssl('host=h sslmode=require') as tls.ConnectionOptions;
  t.is(String(req.ca), 'ROOT', '~/.postgresql/root.crt turns require into verify-ca');
  t.is(req.rejectUnauthorized, true);
  t.is(req.checkServerIdentity!('h', certLike('other', 'DNS:other')), undefined);
  t.is(String((ssl('host=h sslmode=verify-full') as tls.ConnectionOptions).ca), 'ROOT', 'the default root file');
  t.is(ssl('host=h sslmode=prefer'), 'prefer', 'prefer stays unverified');
  rmSync(path.join(home, '.postgresql', 'root.crt'));

  // the client certificate: ~/.postgresql/postgresql.{crt,key}, or sslcert/sslkey
  writeFileSync(path.join(home, '.postgresql', 'postgresql.crt'), 'CERT');
  t.throws(() => ssl('host=h sslmode=require'), { message: `certificate present, but not private key file "${path.join(home, '.postgresql', 'postgresql.key')}"` });
  writeFileSync(path.join(home, '.postgresql', 'postgresql.key'), 'KEY');
  chmodSync(path.join(home, '.postgresql', 'postgresql.key'), 0o644);
  t.throws(() => ssl('host=h sslmode=require'), { message: /^private key file ".*postgresql\.key" has group or world access/ });
  chmodSync(path.join(home, '.postgresql', 'postgresql.key'), 0o600);
  const withCert = ssl('host=h sslmode=require sslpassword=kp') as tls.ConnectionOptions;
  t.like(withCert, { rejectUnauthorized: false, passphrase: 'kp' });
  t.is(String(withCert.cert), 'CERT');
  t.is(String(withCert.key), 'KEY');
  t.is(ssl('host=h sslmode=require sslcertmode=disable'), 'require', 'sslcertmode=disable sends no certificate');
  const dir = freshDir();
  writeFileSync(path.join(dir, 'c.crt'), 'OTHERCERT');
  writeFileSync(path.join(dir, 'c.key'), 'OTHERKEY', { mode: 0o600 });
  const explicit = ssl(`host=h sslmode=require sslcert=${path.join(dir, 'c.crt')} sslkey=${path.join(dir, 'c.key')}`) as tls.ConnectionOptions;
  t.is(String(explicit.cert), 'OTHERCERT');
  t.is(String(explicit.key), 'OTHERKEY');
});

test('toConnectOptions: password from the password file when none is given', (t) => {
  const f = pgpassFile(['db1:5433:replication:rep:forrepl', 'db1:5433:x:rep:forx', 'db2:*:*:rep:db2pw', '10.0.0.9:5432:*:*:byaddr']);
  const env = fakeEnv({ PGPASSFILE: f });
  const ci = parseConnInfo('postgresql://rep@db1:5433,db2/x', env);
  t.is(toConnectOptions(ci, ci.hosts[0]!, { env }).password, 'forrepl', "matched against the database the client names: 'replication'");
  t.is(toConnectOptions(ci, ci.hosts[0]!, { env, database: 'x' }).password, 'forx');
  t.is(toConnectOptions(ci, ci.hosts[1]!, { env }).password, 'db2pw', 'per host');
  const explicit = parseConnInfo('postgresql://rep:given@db1:5433/x', env);
  t.is(toConnectOptions(explicit, explicit.hosts[0]!, { env }).password, 'given');
  const envPw = parseConnInfo('postgresql://rep@db1:5433/x', { ...env, PGPASSWORD: 'fromenv' });
  t.is(toConnectOptions(envPw, envPw.hosts[0]!, { env }).password, 'fromenv', 'PGPASSWORD beats the file');
  const viaKeyword = parseConnInfo(`host=db2 user=rep passfile=${f}`, fakeEnv());
  t.is(toConnectOptions(viaKeyword, viaKeyword.hosts[0]!).password, 'db2pw');
  const addrOnly = parseConnInfo('hostaddr=10.0.0.9 user=u', env);
  t.is(toConnectOptions(addrOnly, addrOnly.hosts[0]!, { env }).password, 'byaddr', 'hostaddr is the key when there is no host name');
  const nomatch = parseConnInfo('host=zz user=rep', env);
  t.false('password' in toConnectOptions(nomatch, nomatch.hosts[0]!, { env }));
});

// ------------------------------------------------- a real PostgreSQL 15

test('a parsed URI connects to PostgreSQL: application_name, IDENTIFY_SYSTEM, and a SCRAM password from pgpass', async (t) => {
  const pg = await withPostgres(t, { hba: ['host replication rep 127.0.0.1/32 scram-sha-256'] });
  await pg.query(`CREATE ROLE rep LOGIN REPLICATION PASSWORD 'from pgpass: é'`);
  const systemId = await pg.systemId();
  const env = fakeEnv();

  const ci = parseConnInfo(`postgresql://postgres@${pg.host}:${pg.port}/x?application_name=abc&sslmode=disable`, env);
  const c = await ReplicationClient.connect(toConnectOptions(ci, ci.hosts[0]!, { env }) as Parameters<typeof ReplicationClient.connect>[0]);
  t.teardown(() => c.close());
  const sys = await c.identifySystem();
  t.is(sys.systemId, systemId);
  t.is(sys.timeline, 1);
  const rows = await pg.query<{ application_name: string }>(`SELECT application_name FROM pg_stat_activity WHERE backend_type = 'walsender'`);
  t.deepEqual(rows.map((r) => r.application_name), ['abc']);
  await c.close();

  // a host list whose first entry is down: the caller moves on to the next
  const f = pgpassFile([`${pg.host}:${pg.port}:replication:rep:from pgpass\\: é`]);
  const envP = fakeEnv({ PGPASSFILE: f });
  const list = parseConnInfo(`host=127.0.0.1,${pg.host} port=1,${pg.port} user=rep connect_timeout=2 sslmode=prefer`, envP);
  t.is(list.hosts.length, 2);
  await t.throwsAsync(ReplicationClient.connect(toConnectOptions(list, list.hosts[0]!, { env: envP }) as Parameters<typeof ReplicationClient.connect>[0]));
  const opts = toConnectOptions(list, list.hosts[1]!, { env: envP });
  t.is(opts.password, 'from pgpass: é');
  const c2 = await ReplicationClient.connect(opts as Parameters<typeof ReplicationClient.connect>[0]);
  t.teardown(() => c2.close());
  t.is((await c2.identifySystem()).systemId, systemId);
  await c2.close();
});

test('TLS against PostgreSQL: verify-full via hostaddr, verify-ca, a wrong name, and require + sslrootcert = verify-ca', async (t) => {
  const pg = await withPostgres(t);
  const crt = path.join(pg.dataDir, 'server.crt');
  const key = path.join(pg.dataDir, 'server.key');
  const openssl = (out: string, keyOut: string, cn: string): void => {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyOut, '-out', out, '-days', '2', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`,
    ], { stdio: 'ignore' });
  };
  openssl(crt, key, 'localhost');
  chmodSync(key, 0o600);
  chownToServerUserSync(key);
  chownToServerUserSync(crt);
  const otherDir = freshDir();
  openssl(path.join(otherDir, 'other.crt'), path.join(otherDir, 'other.key'), 'localhost');
  await pg.query(`ALTER SYSTEM SET ssl = on`);
  await pg.query(`SELECT pg_reload_conf()`);
  for (let i = 0; (await pg.query<{ ssl: string }>('SHOW ssl'))[0]!.ssl !== 'on'; i++) {
    if (i > 200) throw new Error('ssl did not come on');
    await sleep(50);
  }
  const env = fakeEnv();
  const connect = async (conninfo: string): Promise<ReplicationClient> => {
    const ci = parseConnInfo(conninfo, env);
    const c = await ReplicationClient.connect(toConnectOptions(ci, ci.hosts[0]!, { env }) as Parameters<typeof ReplicationClient.connect>[0]);
    t.teardown(() => c.close());
    return c;
  };
  const base = `port=${pg.port} user=postgres application_name=tls-test`;

  const full = await connect(`host=localhost hostaddr=${pg.host} ${base} sslmode=verify-full sslrootcert=${crt}`);
  t.true(full.encrypted);
  t.is((await full.identifySystem()).timeline, 1);
  await full.close();

  const ca = await connect(`host=${pg.host} ${base} sslmode=verify-ca sslrootcert=${crt}`);
  t.true(ca.encrypted, 'verify-ca does not care that the certificate names localhost, not 127.0.0.1');
  await ca.close();

  await t.throwsAsync(connect(`host=${pg.host} ${base} sslmode=verify-full sslrootcert=${crt}`), { message: /TLS handshake failed: .*IP: 127\.0\.0\.1 is not in the cert's list/ }, 'the certificate does not name 127.0.0.1');
  await t.throwsAsync(connect(`host=${pg.host} ${base} sslmode=verify-ca sslrootcert=${path.join(otherDir, 'other.crt')}`), { message: /TLS|certificate|self.signed/i });
  // libpq: with a root certificate file, require verifies the chain too
  await t.throwsAsync(connect(`host=${pg.host} ${base} sslmode=require sslrootcert=${path.join(otherDir, 'other.crt')}`), { message: /TLS|certificate|self.signed/i });
  const req = await connect(`postgresql://postgres@${pg.host}:${pg.port}/?sslmode=require`);
  t.true(req.encrypted, 'require without a root certificate: encrypted, not verified');
  await req.close();
});
