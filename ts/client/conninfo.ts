/**
 * libpq connection strings for the upstream: what a user would pass to
 * psql, pg_receivewal or primary_conninfo, parsed the way libpq
 * (src/interfaces/libpq/fe-connect.c) parses it, then mapped onto our
 * ReplicationClient's ConnectOptions.
 *
 *   const ci = parseConnInfo('postgresql://rep@db1:5432,db2/x?sslmode=require');
 *   for (const h of ci.hosts) {
 *     const c = await ReplicationClient.connect({ ...toConnectOptions(ci, h), applicationName: 'walkeeper' });
 *     ...
 *   }
 *   log.info({ upstream: redactConnInfo(text) });
 *
 * Both syntaxes: `key=value` pairs (values in single quotes with `\'` and
 * `\\` escapes; a backslash escapes the next character in unquoted values
 * too) and `postgresql://` / `postgres://` URIs (percent-encoding,
 * `user:password@`, host lists `h1:p1,h2:p2`, `[v6]:port`, `/dbname`,
 * `?key=value&...`, `ssl=true`). Unknown keywords are errors, as in libpq.
 * Defaults come from a service file (`service=` / PGSERVICE), then the
 * PG* environment variables, then libpq's compiled-in defaults.
 *
 * Differences from libpq, on purpose:
 * - no host at all means 'localhost', never the default Unix socket
 *   directory (our client speaks TCP only; a Unix-socket host is kept in
 *   `hosts` but toConnectOptions() refuses it);
 * - port and connect_timeout are checked when parsing (libpq checks them
 *   when it connects, and skips a host whose port is out of range);
 * - the pgpass lookup happens in toConnectOptions(), for the database the
 *   replication connection names ('replication' unless told otherwise),
 *   the way pg_receivewal and the walreceiver match ~/.pgpass;
 * - `other` holds the keywords set in the string, the service file or the
 *   environment, not libpq's compiled-in defaults.
 */

import { existsSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';

import type { ConnectOptions } from './client.js';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
export type TargetSessionAttrs = 'any' | 'read-write' | 'read-only' | 'primary' | 'standby' | 'prefer-standby';

/** One entry of the host list. `hostaddr` (an IP address) is where to connect when given; `host` names the server (TLS, pgpass). */
export interface ConnHost {
  /** Host name, IP address, or Unix-socket directory (starts with '/' or '@'). '' only when hostaddr is given for this slot. */
  host: string;
  port: number;
  hostaddr?: string;
}

/** The parsed, libpq-equivalent connection parameters. */
export interface ConnInfo {
  /** host=a,b port=1,2 (one port applies to every host), or URI postgresql://a:1,b:2/... */
  hosts: ConnHost[];
  user: string;
  /** password= (string, service file or PGPASSWORD); undefined when absent or empty (toConnectOptions then tries the password file). */
  password?: string;
  /** dbname (default: the user name). */
  dbname: string;
  /** application_name, else fallback_application_name (libpq sends the first non-empty one). */
  applicationName?: string;
  /** The startup `options` (e.g. '-c wal_sender_timeout=0'); undefined when empty. */
  options?: string;
  sslmode: SslMode;
  sslrootcert?: string;
  sslcert?: string;
  sslkey?: string;
  /** connect_timeout in ms: 0 = wait indefinitely; at least 2000 otherwise (libpq's minimum of 2 s); undefined when not set. */
  connectTimeoutMs?: number;
  targetSessionAttrs: TargetSessionAttrs;
  /** Every other keyword that was set (string, service file or environment), e.g. keepalives, sslpassword, channel_binding; passfile holds the resolved password-file path. */
  other: Record<string, string>;
}

/** A connection string that libpq would refuse; the message is libpq's (one line). */
export class ConnInfoError extends Error {
  override name = 'ConnInfoError';
}

const DEF_PGPORT = 5432;
const DEFAULT_HOST = 'localhost';
const DEFAULT_SSLMODE: SslMode = 'prefer';
const DEFAULT_SYSCONFDIR = '/etc/postgresql-common';

/**
 * libpq's keywords (PQconninfoOptions, PostgreSQL 18) and their environment
 * fallbacks. A keyword not listed here is "invalid connection option".
 */
const KEYWORDS: ReadonlyMap<string, string | null> = new Map<string, string | null>([
  ['service', 'PGSERVICE'],
  ['servicefile', null],
  ['user', 'PGUSER'],
  ['password', 'PGPASSWORD'],
  ['passfile', 'PGPASSFILE'],
  ['channel_binding', 'PGCHANNELBINDING'],
  ['connect_timeout', 'PGCONNECT_TIMEOUT'],
  ['dbname', 'PGDATABASE'],
  ['host', 'PGHOST'],
  ['hostaddr', 'PGHOSTADDR'],
  ['port', 'PGPORT'],
  ['client_encoding', 'PGCLIENTENCODING'],
  ['options', 'PGOPTIONS'],
  ['application_name', 'PGAPPNAME'],
  ['fallback_application_name', null],
  ['keepalives', null],
  ['keepalives_idle', null],
  ['keepalives_interval', null],
  ['keepalives_count', null],
  ['tcp_user_timeout', null],
  ['sslmode', 'PGSSLMODE'],
  ['sslnegotiation', 'PGSSLNEGOTIATION'],
  ['sslcompression', 'PGSSLCOMPRESSION'],
  ['sslcert', 'PGSSLCERT'],
  ['sslkey', 'PGSSLKEY'],
  ['sslcertmode', 'PGSSLCERTMODE'],
  ['sslpassword', null],
  ['sslkeylogfile', null],
  ['sslrootcert', 'PGSSLROOTCERT'],
  ['sslcrl', 'PGSSLCRL'],
  ['sslcrldir', 'PGSSLCRLDIR'],
  ['sslsni', 'PGSSLSNI'],
  ['requirepeer', 'PGREQUIREPEER'],
  ['require_auth', 'PGREQUIREAUTH'],
  ['ssl_min_protocol_version', 'PGSSLMINPROTOCOLVERSION'],
  ['ssl_max_protocol_version', 'PGSSLMAXPROTOCOLVERSION'],
  ['min_protocol_version', 'PGMINPROTOCOLVERSION'],
  ['max_protocol_version', 'PGMAXPROTOCOLVERSION'],
  ['gssencmode', 'PGGSSENCMODE'],
  ['krbsrvname', 'PGKRBSRVNAME'],
  ['gsslib', 'PGGSSLIB'],
  ['gssdelegation', 'PGGSSDELEGATION'],
  ['scram_client_key', null],
  ['scram_server_key', null],
  ['oauth_issuer', null],
  ['oauth_client_id', null],
  ['oauth_client_secret', null],
  ['oauth_scope', null],
  ['replication', null],
  ['target_session_attrs', 'PGTARGETSESSIONATTRS'],
  ['load_balance_hosts', 'PGLOADBALANCEHOSTS'],
]);

/** Keywords with their own ConnInfo field (not copied into `other`). */
const FIRST_CLASS = new Set([
  'host', 'hostaddr', 'port', 'user', 'password', 'dbname', 'application_name', 'options', 'sslmode',
  'sslrootcert', 'sslcert', 'sslkey', 'connect_timeout', 'target_session_attrs',
]);

/** Keywords whose values redactConnInfo() hides. */
const SECRET_KEYWORDS = new Set(['password', 'sslpassword', 'oauth_client_secret', 'scram_client_key', 'scram_server_key']);

const SSL_MODES: readonly SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];
const TARGET_SESSION_ATTRS: readonly TargetSessionAttrs[] = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'];
const TLS_VERSIONS = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'] as const;

function fail(msg: string): never {
  throw new ConnInfoError(msg);
}

/** C isspace() in the "C" locale. */
function isSpace(c: string | undefined): boolean {
  return c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';
}

function uriPrefixLength(s: string): number {
  if (s.startsWith('postgresql://')) return 'postgresql://'.length;
  if (s.startsWith('postgres://')) return 'postgres://'.length;
  return 0;
}

function hexValue(c: string | undefined): number {
  if (c === undefined) return -1;
  const code = c.charCodeAt(0);
  if (code >= 0x30 && code <= 0x39) return code - 0x30;
  if (code >= 0x41 && code <= 0x46) return code - 0x41 + 10;
  if (code >= 0x61 && code <= 0x66) return code - 0x61 + 10;
  return -1;
}

/** conninfo_uri_decode: %xy tokens become bytes (the result read as UTF-8); %00 is forbidden. */
function uriDecode(str: string): string {
  if (!str.includes('%')) return str;
  const parts: Buffer[] = [];
  let lit = 0;
  for (let i = 0; i < str.length; ) {
    if (str[i] !== '%') {
      i++;
      continue;
    }
    if (i > lit) parts.push(Buffer.from(str.slice(lit, i), 'utf8'));
    const hi = hexValue(str[i + 1]);
    const lo = hi < 0 ? -1 : hexValue(str[i + 2]);
    if (hi < 0 || lo < 0) fail(`invalid percent-encoded token: "${str}"`);
    const c = (hi << 4) | lo;
    if (c === 0) fail(`forbidden value %00 in percent-encoded value: "${str}"`);
    parts.push(Buffer.from([c]));
    i += 3;
    lit = i;
  }
  if (lit < str.length) parts.push(Buffer.from(str.slice(lit), 'utf8'));
  return Buffer.concat(parts).toString('utf8');
}

// ------------------------------------------------------------ key=value

interface KvToken {
  key: string;
  value: string;
  /** Where the value's text (including quotes) starts and ends in the input. */
  valueStart: number;
  valueEnd: number;
}

/**
 * conninfo_parse's scanner. Strict: throws libpq's errors. Tolerant (for
 * redaction): a word without '=' is skipped, and an unterminated quoted
 * value runs to the end of the string.
 */
function scanKeyValue(s: string, tolerant: boolean, onToken?: (t: KvToken) => void): KvToken[] {
  const tokens: KvToken[] = [];
  const out = {
    push(t: KvToken): void {
      tokens.push(t);
      onToken?.(t);
    },
  };
  const n = s.length;
  let i = 0;
  while (i < n) {
    if (isSpace(s[i])) {
      i++;
      continue;
    }
    const keyStart = i;
    while (i < n && s[i] !== '=' && !isSpace(s[i])) i++;
    const key = s.slice(keyStart, i);
    while (i < n && isSpace(s[i])) i++;
    if (s[i] !== '=') {
      if (tolerant) continue; // skip the bare word: a later password=... must still be found
      fail(`missing "=" after "${key}" in connection info string`);
    }
    i++;
    while (i < n && isSpace(s[i])) i++;
    const valueStart = i;
    let value = '';
    if (s[i] !== "'") {
      while (i < n) {
        if (isSpace(s[i])) break;
        if (s[i] === '\\') {
          i++;
          if (i < n) value += s[i++];
        } else {
          value += s[i++];
        }
      }
      out.push({ key, value, valueStart, valueEnd: i });
      if (i < n) i++; // the blank that ended the value
    } else {
      i++;
      for (;;) {
        if (i >= n) {
          if (tolerant) {
            out.push({ key, value, valueStart, valueEnd: n });
            return tokens;
          }
          fail('unterminated quoted string in connection info string');
        }
        if (s[i] === '\\') {
          i++;
          if (i < n) value += s[i++];
          continue;
        }
        if (s[i] === "'") {
          i++;
          break;
        }
        value += s[i++];
      }
      out.push({ key, value, valueStart, valueEnd: i });
    }
  }
  return tokens;
}

type Store = (keyword: string, value: string, ignoreMissing: boolean) => boolean;

/** conninfo_storeval: requiressl is translated; an unknown keyword is an error unless ignoreMissing. */
function makeStore(opts: Map<string, string>): Store {
  return (keyword, value, ignoreMissing) => {
    if (keyword === 'requiressl') {
      keyword = 'sslmode';
      value = value[0] === '1' ? 'require' : 'prefer';
    }
    if (!KEYWORDS.has(keyword)) {
      if (ignoreMissing) return false;
      fail(`invalid connection option "${keyword}"`);
    }
    opts.set(keyword, value);
    return true;
  };
}

// ------------------------------------------------------------------ URI

/** conninfo_uri_parse_options. */
function parseUri(uri: string, prefixLen: number, store: Store): void {
  const n = uri.length;
  const at = (i: number): string => (i < n ? uri[i]! : '');
  const storeDecoded = (keyword: string, raw: string): void => {
    store(keyword, uriDecode(raw), false);
  };

  const start = prefixLen;
  let p = start;
  // user[:password]@ comes before the first '/' (a '@' in either must be percent-encoded)
  while (p < n && uri[p] !== '@' && uri[p] !== '/') p++;
  if (at(p) === '@') {
    const atPos = p;
    let u = start;
    while (uri[u] !== ':' && uri[u] !== '@') u++;
    const user = uri.slice(start, u);
    if (user !== '') storeDecoded('user', user);
    if (uri[u] === ':') {
      const password = uri.slice(u + 1, atPos);
      if (password !== '') storeDecoded('password', password);
    }
    p = atPos + 1;
  } else {
    p = start;
  }

  // netloc[:port][,netloc[:port]...]
  let hostbuf = '';
  let portbuf = '';
  let prevchar = '';
  for (;;) {
    let host: string;
    if (at(p) === '[') {
      const hs = ++p;
      while (p < n && uri[p] !== ']') p++;
      if (p >= n) fail(`end of string reached when looking for matching "]" in IPv6 host address in URI: "${uri}"`);
      if (p === hs) fail(`IPv6 host address may not be empty in URI: "${uri}"`);
      host = uri.slice(hs, p);
      p++;
      const c = at(p);
      if (c !== '' && c !== ':' && c !== '/' && c !== '?' && c !== ',') {
        fail(`unexpected character "${c}" at position ${p + 1} in URI (expected ":" or "/"): "${uri}"`);
      }
    } else {
      const hs = p;
      while (p < n && !':/?,'.includes(uri[p]!)) p++;
      host = uri.slice(hs, p);
    }
    prevchar = at(p);
    hostbuf += host;
    if (prevchar === ':') {
      const ps = ++p;
      while (p < n && !'/?,'.includes(uri[p]!)) p++;
      prevchar = at(p);
      portbuf += uri.slice(ps, p);
    }
    if (prevchar !== ',') break;
    p++;
    hostbuf += ',';
    portbuf += ',';
  }
  if (hostbuf !== '') storeDecoded('host', hostbuf);
  if (portbuf !== '') storeDecoded('port', portbuf);

  if (prevchar !== '' && prevchar !== '?') {
    const ds = ++p;
    while (p < n && uri[p] !== '?') p++;
    prevchar = at(p);
    const dbname = uri.slice(ds, p);
    // an empty dbname is not set at all (so PGDATABASE still applies)
    if (dbname !== '') storeDecoded('dbname', dbname);
  }
  if (prevchar !== '') parseUriParams(uri.slice(p + 1), store);
}

/** conninfo_uri_parse_params. */
function parseUriParams(params: string, store: Store): void {
  const n = params.length;
  let i = 0;
  while (i < n) {
    const ks = i;
    let eq = -1;
    let end: number;
    for (;;) {
      const c = i < n ? params[i] : '';
      if (c === '=') {
        if (eq >= 0) fail(`extra key/value separator "=" in URI query parameter: "${params.slice(ks, eq)}"`);
        eq = i;
        i++;
      } else if (c === '&' || c === '') {
        end = i;
        if (c === '&') i++;
        if (eq < 0) fail(`missing key/value separator "=" in URI query parameter: "${params.slice(ks, end)}"`);
        break;
      } else {
        i++;
      }
    }
    let keyword = uriDecode(params.slice(ks, eq));
    let value = uriDecode(params.slice(eq + 1, end));
    // JDBC compatibility
    if (keyword === 'ssl' && value === 'true') {
      keyword = 'sslmode';
      value = 'require';
    }
    if (!store(keyword, value, true)) fail(`invalid URI query parameter: "${keyword}"`);
  }
}

// --------------------------------------------------------- service file

function homeDirectory(env: NodeJS.ProcessEnv): string | undefined {
  if (process.platform === 'win32') return env.APPDATA ? path.join(env.APPDATA, 'postgresql') : undefined;
  if (env.HOME) return env.HOME;
  try {
    return os.userInfo().homedir || undefined;
  } catch {
    return undefined;
  }
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** parseServiceFile: fills options the string did not set. Returns whether the group was found. */
function parseServiceFile(file: string, service: string, opts: Map<string, string>): boolean {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    fail(`service file "${file}" not found`);
  }
  let found = false;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.replace(/^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g, '');
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('[')) {
      if (found) return true;
      found = line.slice(1, 1 + service.length) === service && line[service.length + 1] === ']';
      continue;
    }
    if (!found) continue;
    if (line.startsWith('ldap')) fail(`LDAP service lookups are not supported (service file "${file}", line ${n + 1})`);
    const eq = line.indexOf('=');
    if (eq < 0) fail(`syntax error in service file "${file}", line ${n + 1}`);
    const key = line.slice(0, eq);
    const val = line.slice(eq + 1);
    if (key === 'service') fail(`nested service specifications not supported in service file "${file}", line ${n + 1}`);
    if (!KEYWORDS.has(key)) fail(`syntax error in service file "${file}", line ${n + 1}`);
    if (!opts.has(key)) opts.set(key, val);
  }
  return found;
}

/** parseServiceInfo: service= or PGSERVICE, looked up in servicefile= / PGSERVICEFILE / ~/.pg_service.conf, then PGSYSCONFDIR/pg_service.conf. */
function applyService(opts: Map<string, string>, env: NodeJS.ProcessEnv): void {
  const service = opts.get('service') ?? env.PGSERVICE;
  if (service === undefined) return;
  let userFile = opts.get('servicefile') ?? env.PGSERVICEFILE;
  if (userFile === undefined) {
    const home = homeDirectory(env);
    if (home !== undefined && isFile(path.join(home, '.pg_service.conf'))) userFile = path.join(home, '.pg_service.conf');
  }
  if (userFile !== undefined && parseServiceFile(userFile, service, opts)) return;
  const sysFile = path.join(env.PGSYSCONFDIR ?? DEFAULT_SYSCONFDIR, 'pg_service.conf');
  if (isFile(sysFile) && parseServiceFile(sysFile, service, opts)) return;
  fail(`definition of service "${service}" not found`);
}

// -------------------------------------------------------------- parsing

/** pqParseIntParam: strtol with optional blanks around, no trailing garbage, fits an int. */
function parseIntParam(value: string, context: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*$/.exec(value);
  const v = m ? Number(m[1]) : NaN;
  if (!Number.isSafeInteger(v) || v > 2147483647 || v < -2147483648) {
    fail(`invalid integer value "${value}" for connection option "${context}"`);
  }
  return v;
}

function currentUserName(): string {
  try {
    const name = os.userInfo().username;
    if (name) return name;
  } catch (e) {
    fail(`could not look up local user ID ${process.getuid?.() ?? -1}: ${(e as Error).message}`);
  }
  fail(`could not look up local user ID ${process.getuid?.() ?? -1}: no user name`);
}

function checkEnum(keyword: string, value: string, allowed: readonly string[]): void {
  if (!allowed.includes(value)) fail(`invalid ${keyword} value: "${value}"`);
}

function tlsVersionIndex(v: string | undefined): number {
  if (v === undefined || v === '') return -1;
  return TLS_VERSIONS.findIndex((t) => t.toLowerCase() === v.toLowerCase());
}

/**
 * Parses a libpq connection string (key=value or URI) and fills in the
 * defaults libpq would (service file, PG* environment variables, compiled-in
 * defaults). Throws a ConnInfoError with libpq's message for anything libpq
 * would refuse.
 */
export function parseConnInfo(text: string, env: NodeJS.ProcessEnv = process.env): ConnInfo {
  const opts = new Map<string, string>();
  const store = makeStore(opts);
  const prefixLen = uriPrefixLength(text);
  if (prefixLen > 0) parseUri(text, prefixLen, store);
  else scanKeyValue(text, false, (t) => store(t.key, t.value, false));

  // conninfo_add_defaults
  applyService(opts, env);
  let sslmodeDefaulted = false;
  for (const [keyword, envvar] of KEYWORDS) {
    if (opts.has(keyword)) continue;
    const v = envvar === null ? undefined : env[envvar];
    if (v !== undefined) {
      opts.set(keyword, v);
      continue;
    }
    if (keyword === 'sslmode') {
      if (env.PGREQUIRESSL?.[0] === '1') opts.set('sslmode', 'require');
      else sslmodeDefaulted = true;
    }
  }
  if (sslmodeDefaulted) opts.set('sslmode', opts.get('sslrootcert') === 'system' ? 'verify-full' : DEFAULT_SSLMODE);

  // pqConnectOptions2: the host list
  const hostStr = opts.get('host') ?? '';
  const hostaddrStr = opts.get('hostaddr') ?? '';
  const count = hostaddrStr !== '' ? hostaddrStr.split(',').length : hostStr !== '' ? hostStr.split(',').length : 1;
  const hostaddrs = hostaddrStr !== '' ? hostaddrStr.split(',') : [];
  const hostNames = hostStr !== '' ? hostStr.split(',') : [];
  if (hostStr !== '' && hostNames.length !== count) fail(`could not match ${hostNames.length} host names to ${count} hostaddr values`);
  const portStr = opts.get('port') ?? '';
  let portList: string[] = [];
  if (portStr !== '') {
    portList = portStr.split(',');
    if (portList.length === 1) portList = new Array<string>(count).fill(portList[0]!);
    else if (portList.length !== count) fail(`could not match ${portList.length} port numbers to ${count} hosts`);
  }

  let user = opts.get('user') ?? '';
  if (user === '') user = currentUserName();
  const dbname = opts.get('dbname') || user;

  // the checks pqConnectOptions2 makes, in its order
  checkEnum('channel_binding', opts.get('channel_binding') ?? 'prefer', ['disable', 'prefer', 'require']);
  const sslmode = opts.get('sslmode')!;
  checkEnum('sslmode', sslmode, SSL_MODES);
  if (opts.get('sslrootcert') === 'system' && sslmode !== 'verify-full') {
    fail(`weak sslmode "${sslmode}" may not be used with sslrootcert=system (use "verify-full")`);
  }
  for (const k of ['ssl_min_protocol_version', 'ssl_max_protocol_version']) {
    const v = opts.get(k);
    if (v !== undefined && v !== '' && tlsVersionIndex(v) < 0) fail(`invalid ${k} value: "${v}"`);
  }
  const minTls = tlsVersionIndex(opts.get('ssl_min_protocol_version') ?? 'TLSv1.2');
  const maxTls = tlsVersionIndex(opts.get('ssl_max_protocol_version'));
  if (minTls >= 0 && maxTls >= 0 && minTls > maxTls) fail('invalid SSL protocol version range');
  if (opts.has('sslcertmode')) checkEnum('sslcertmode', opts.get('sslcertmode')!, ['disable', 'allow', 'require']);
  if (opts.has('gssencmode')) checkEnum('gssencmode', opts.get('gssencmode')!, ['disable', 'prefer', 'require']);
  const targetSessionAttrs = opts.get('target_session_attrs') ?? 'any';
  checkEnum('target_session_attrs', targetSessionAttrs, TARGET_SESSION_ATTRS);
  if (opts.has('load_balance_hosts')) checkEnum('load_balance_hosts', opts.get('load_balance_hosts')!, ['disable', 'random']);
  if (opts.has('sslnegotiation')) {
    const neg = opts.get('sslnegotiation')!;
    checkEnum('sslnegotiation', neg, ['postgres', 'direct']);
    if (neg === 'direct' && !['require', 'verify-ca', 'verify-full'].includes(sslmode)) {
      fail(`weak sslmode "${sslmode}" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`);
    }
  }

  // ports (libpq checks these when connecting to each host)
  const hosts: ConnHost[] = [];
  for (let i = 0; i < count; i++) {
    const hostaddr = hostaddrs[i] ?? '';
    let host = hostNames[i] ?? '';
    if (hostaddr === '' && host === '') host = DEFAULT_HOST;
    const ps = portList[i] ?? '';
    let port = DEF_PGPORT;
    if (ps !== '') {
      port = parseIntParam(ps, 'port');
      if (port < 1 || port > 65535) fail(`invalid port number: "${ps}"`);
    }
    hosts.push(hostaddr !== '' ? { host, port, hostaddr } : { host, port });
  }

  let connectTimeoutMs: number | undefined;
  const ct = opts.get('connect_timeout');
  if (ct !== undefined) {
    const secs = parseIntParam(ct, 'connect_timeout');
    connectTimeoutMs = secs > 0 ? Math.max(secs, 2) * 1000 : 0;
  }

  const other: Record<string, string> = {};
  for (const [k, v] of opts) if (!FIRST_CLASS.has(k)) other[k] = v;
  if (!other.passfile) {
    const home = homeDirectory(env);
    if (home !== undefined) other.passfile = path.join(home, process.platform === 'win32' ? 'pgpass.conf' : '.pgpass');
    else delete other.passfile;
  }

  const ci: ConnInfo = { hosts, user, dbname, sslmode: sslmode as SslMode, targetSessionAttrs: targetSessionAttrs as TargetSessionAttrs, other };
  const password = opts.get('password');
  if (password) ci.password = password;
  const appName = opts.get('application_name') || opts.get('fallback_application_name');
  if (appName) ci.applicationName = appName;
  const options = opts.get('options');
  if (options) ci.options = options;
  for (const k of ['sslrootcert', 'sslcert', 'sslkey'] as const) {
    const v = opts.get(k);
    if (v) ci[k] = v;
  }
  if (connectTimeoutMs !== undefined) ci.connectTimeoutMs = connectTimeoutMs;
  return ci;
}

// --------------------------------------------------------------- pgpass

/** One field of a .pgpass line (pwdfMatchesString): '*' matches anything, '\' escapes. Returns where the next field starts, or -1. */
function matchPgpassField(line: string, pos: number, token: string): number {
  if (line[pos] === '*' && line[pos + 1] === ':') return pos + 2;
  let i = pos;
  let j = 0;
  let bslash = false;
  while (i < line.length) {
    if (line[i] === '\\' && !bslash) {
      i++;
      bslash = true;
    }
    if (line[i] === ':' && j === token.length && !bslash) return i + 1;
    bslash = false;
    if (j === token.length) return -1;
    if (line[i] === token[j]) {
      i++;
      j++;
    } else {
      return -1;
    }
  }
  return -1;
}

export interface PgpassOptions {
  /** The password file (default: PGPASSFILE, else ~/.pgpass; %APPDATA%\postgresql\pgpass.conf on Windows). */
  passfile?: string;
  /** Called with libpq's warning when the file is ignored (default: process.emitWarning). */
  warn?: (message: string) => void;
}

/**
 * The password for host:port/db/user from the password file, per libpq's
 * passwordFromFile(): lines `hostname:port:database:username:password`,
 * `*` matching any value, `\:` and `\\` escapes, `#` comments, the first
 * matching line wins. An empty host means 'localhost'. The file is ignored
 * (with a warning) unless it is a plain file without group or world access.
 */
export function passwordFromPgpass(
  host: string,
  port: string | number,
  db: string,
  user: string,
  env: NodeJS.ProcessEnv = process.env,
  opts: PgpassOptions = {},
): string | undefined {
  if (db === '' || user === '') return undefined;
  let file = opts.passfile || env.PGPASSFILE;
  if (!file) {
    const home = homeDirectory(env);
    if (home === undefined) return undefined;
    file = path.join(home, process.platform === 'win32' ? 'pgpass.conf' : '.pgpass');
  }
  const warn = opts.warn ?? ((m: string) => process.emitWarning(m));
  const hostname = host === '' ? DEFAULT_HOST : host;
  const portStr = String(port) === '' ? String(DEF_PGPORT) : String(port);

  let st;
  try {
    st = statSync(file);
  } catch {
    return undefined;
  }
  if (process.platform !== 'win32') {
    if (!st.isFile()) {
      warn(`password file "${file}" is not a plain file`);
      return undefined;
    }
    if (st.mode & 0o077) {
      warn(`password file "${file}" has group or world access; permissions should be u=rw (0600) or less`);
      return undefined;
    }
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  for (let line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    line = line.replace(/[\r\n]+$/, '');
    if (line === '') continue;
    let t = matchPgpassField(line, 0, hostname);
    if (t >= 0) t = matchPgpassField(line, t, portStr);
    if (t >= 0) t = matchPgpassField(line, t, db);
    if (t >= 0) t = matchPgpassField(line, t, user);
    if (t < 0) continue;
    // de-escape the password, which ends at the first unescaped ':'
    let pw = '';
    for (let i = t; i < line.length && line[i] !== ':'; i++) {
      if (line[i] === '\\' && i + 1 < line.length) i++;
      pw += line[i];
    }
    return pw;
  }
  return undefined;
}

// ------------------------------------------------------ ConnectOptions

export interface ToConnectOptionsExtra {
  /**
   * The database the connection will name. Set as ConnectOptions.database
   * when given; otherwise left out (ReplicationClient sends 'replication',
   * as pg_receivewal and the walreceiver do). The password-file lookup
   * matches this name, default 'replication'.
   */
  database?: string;
  /** For HOME (~/.postgresql/root.crt, postgresql.crt, postgresql.key). Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Warnings from the password-file lookup (default: process.emitWarning). */
  warn?: (message: string) => void;
}

function isUnixSocketPath(h: string): boolean {
  return h.startsWith('/') || h.startsWith('@');
}

function readTlsFile(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new ConnInfoError(`could not read ${what} "${file}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The client certificate and key as libpq would load them (sslcert/sslkey, else ~/.postgresql/postgresql.{crt,key} if present). */
function clientCertificate(ci: ConnInfo, pgDir: string | undefined): Pick<tls.ConnectionOptions, 'cert' | 'key' | 'passphrase'> {
  if (ci.other.sslcertmode === 'disable') return {};
  const certFile = ci.sslcert ?? (pgDir === undefined ? undefined : path.join(pgDir, 'postgresql.crt'));
  if (certFile === undefined || !existsSync(certFile)) return {};
  const keyFile = ci.sslkey ?? (pgDir === undefined ? undefined : path.join(pgDir, 'postgresql.key'));
  if (keyFile === undefined || !existsSync(keyFile)) fail(`certificate present, but not private key file "${keyFile ?? ''}"`);
  if (process.platform !== 'win32') {
    const st = statSync(keyFile);
    const uid = process.getuid?.();
    if (st.isFile() && ((st.uid === uid && st.mode & 0o077) || (st.uid === 0 && st.mode & 0o037))) {
      fail(
        `private key file "${keyFile}" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root`,
      );
    }
  }
  const out: Pick<tls.ConnectionOptions, 'cert' | 'key' | 'passphrase'> = {
    cert: readTlsFile(certFile, 'certificate file'),
    key: readTlsFile(keyFile, 'private key file'),
  };
  if (ci.other.sslpassword) out.passphrase = ci.other.sslpassword;
  return out;
}

/**
 * ConnectOptions for one entry of ci.hosts: host/port (hostaddr when
 * given), user, password (else from the password file), applicationName,
 * options, connectTimeoutMs, and ssl from sslmode:
 *
 * - disable → false; allow, prefer → 'prefer' (not verified, no client certificate);
 * - require → 'require', or, like libpq, verify-ca when a root certificate
 *   file exists (sslrootcert, else ~/.postgresql/root.crt), and TLS options
 *   carrying the client certificate when there is one;
 * - verify-ca → TLS with ca = the sslrootcert file, the chain checked, not the name;
 * - verify-full → the same plus the host name (SNI = the host name);
 *   sslrootcert=system uses Node's bundled root certificates.
 *
 * Throws for what our client cannot do rather than quietly connecting with
 * less protection: Unix-domain sockets, channel_binding=require,
 * require_auth, gssencmode=require, sslcertmode=require, sslnegotiation=direct.
 */
export function toConnectOptions(ci: ConnInfo, host: ConnHost, extra: ToConnectOptionsExtra = {}): Partial<ConnectOptions> {
  const target = host.hostaddr || host.host;
  if (isUnixSocketPath(target)) throw new ConnInfoError(`unix-domain socket hosts are not supported: ${target}`);
  const unsupported = (what: string): never => {
    throw new ConnInfoError(`${what} is not supported by this client`);
  };
  if (ci.other.channel_binding === 'require') unsupported('channel_binding=require (SCRAM-SHA-256-PLUS)');
  if (ci.other.require_auth) unsupported(`require_auth=${ci.other.require_auth}`);
  if (ci.other.gssencmode === 'require') unsupported('gssencmode=require');
  if (ci.other.sslcertmode === 'require') unsupported('sslcertmode=require');
  if (ci.other.sslnegotiation === 'direct') unsupported('sslnegotiation=direct');

  const env = extra.env ?? process.env;
  const home = homeDirectory(env);
  const pgDir = home === undefined ? undefined : process.platform === 'win32' ? home : path.join(home, '.postgresql');

  const out: Partial<ConnectOptions> = { host: target, port: host.port, user: ci.user };
  if (extra.database !== undefined) out.database = extra.database;
  let password = ci.password;
  if (password === undefined && ci.other.passfile) {
    const pwOpts: PgpassOptions = { passfile: ci.other.passfile };
    if (extra.warn) pwOpts.warn = extra.warn;
    password = passwordFromPgpass(host.host || host.hostaddr || '', host.port, extra.database ?? 'replication', ci.user, env, pwOpts);
  }
  if (password) out.password = password;
  if (ci.applicationName) out.applicationName = ci.applicationName;
  if (ci.options) out.options = ci.options;
  if (ci.connectTimeoutMs !== undefined) out.connectTimeoutMs = ci.connectTimeoutMs === 0 ? 2_147_483_647 : ci.connectTimeoutMs;

  let mode = ci.sslmode;
  const rootFile = ci.sslrootcert ?? (pgDir === undefined ? undefined : path.join(pgDir, 'root.crt'));
  if (mode === 'require' && rootFile !== undefined && rootFile !== 'system' && existsSync(rootFile)) mode = 'verify-ca';

  switch (mode) {
    case 'disable':
      out.ssl = false;
      return out;
    case 'allow':
    case 'prefer':
      out.ssl = 'prefer';
      return out;
    case 'require': {
      const cert = clientCertificate(ci, pgDir);
      out.ssl = cert.cert === undefined ? 'require' : { ...tlsVersions(ci), ...cert, rejectUnauthorized: false };
      return out;
    }
    case 'verify-ca':
    case 'verify-full': {
      const opts: tls.ConnectionOptions = { ...tlsVersions(ci), ...clientCertificate(ci, pgDir), rejectUnauthorized: true };
      if (rootFile === undefined) {
        fail(
          'could not get home directory to locate root certificate file. Either provide the file, use the system\'s trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.',
        );
      }
      if (rootFile !== 'system') {
        if (!existsSync(rootFile)) {
          fail(
            `root certificate file "${rootFile}" does not exist. Either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.`,
          );
        }
        opts.ca = readTlsFile(rootFile, 'root certificate file');
      }
      const crlFile = ci.other.sslcrl ?? (pgDir === undefined ? undefined : path.join(pgDir, 'root.crl'));
      if (crlFile !== undefined && existsSync(crlFile)) opts.crl = readTlsFile(crlFile, 'SSL certificate revocation list file');
      const sni = ci.other.sslsni !== '0' && host.host !== '' && net.isIP(host.host) === 0;
      // servername '' keeps the client from sending the hostaddr (or a name when sslsni=0) as SNI
      opts.servername = sni ? host.host : '';
      if (mode === 'verify-ca') {
        opts.checkServerIdentity = () => undefined;
      } else {
        if (host.host === '') fail('host name must be specified for a verified SSL connection');
        const name = host.host;
        opts.checkServerIdentity = (_servername, cert) => tls.checkServerIdentity(name, cert);
      }
      out.ssl = opts;
      return out;
    }
  }
}

function tlsVersions(ci: ConnInfo): Pick<tls.ConnectionOptions, 'minVersion' | 'maxVersion'> {
  const out: Pick<tls.ConnectionOptions, 'minVersion' | 'maxVersion'> = {};
  const min = tlsVersionIndex(ci.other.ssl_min_protocol_version);
  const max = tlsVersionIndex(ci.other.ssl_max_protocol_version);
  if (min >= 0) out.minVersion = TLS_VERSIONS[min];
  if (max >= 0) out.maxVersion = TLS_VERSIONS[max];
  return out;
}

// ------------------------------------------------------------ redaction

/**
 * The same connection string with secrets (password, sslpassword, ...)
 * replaced by '***', for logs: key=value pairs (quoted or not), a URI's
 * user:password@, and URI query parameters. Works on strings libpq would
 * refuse too (an unterminated quote hides everything after it); a URI
 * password with an unencoded '@' or '/' is still hidden up to the last '@'.
 */
export function redactConnInfo(text: string): string {
  const prefixLen = uriPrefixLength(text);
  return prefixLen > 0 ? redactUri(text, prefixLen) : redactKeyValue(text);
}

function redactKeyValue(text: string): string {
  let out = '';
  let last = 0;
  for (const t of scanKeyValue(text, true)) {
    if (!SECRET_KEYWORDS.has(t.key.toLowerCase())) continue;
    out += text.slice(last, t.valueStart) + '***';
    last = t.valueEnd;
  }
  return out + text.slice(last);
}

function isSecretParam(rawKey: string): boolean {
  let key = rawKey;
  try {
    key = uriDecode(rawKey);
  } catch {
    // keep the raw key
  }
  return SECRET_KEYWORDS.has(key.toLowerCase());
}

function redactUri(text: string, prefixLen: number): string {
  const q = text.indexOf('?', prefixLen);
  const authEnd = q < 0 ? text.length : q;
  let head = text.slice(0, authEnd);
  const at = head.lastIndexOf('@');
  if (at >= prefixLen) {
    const creds = head.slice(prefixLen, at);
    const colon = creds.indexOf(':');
    const slash = creds.indexOf('/');
    if (colon >= 0 && colon < creds.length - 1 && (slash < 0 || colon < slash)) {
      head = head.slice(0, prefixLen + colon + 1) + '***' + head.slice(at);
    }
  }
  if (q < 0) return head;
  const params = text
    .slice(q + 1)
    .split('&')
    .map((seg) => {
      const eq = seg.indexOf('=');
      return eq >= 0 && isSecretParam(seg.slice(0, eq)) ? `${seg.slice(0, eq)}=***` : seg;
    });
  return `${head}?${params.join('&')}`;
}
