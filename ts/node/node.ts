/**
 * A walkeeper node: its streams, the replication listener and the HTTP
 * API. `startNode` is the library entry point; the `walkeeper node` command
 * is a thin shell around it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type http from 'node:http';

import { parseConnInfo } from '../client/conninfo.js';
import { PgError, SQLSTATE } from '../protocol/errors.js';
import { makeVerifier, parseVerifier, type ScramVerifier } from '../protocol/scram.js';
import { parseStartupOptions, ServerConnection, type AuthMethod, type StartupInfo } from '../server/connection.js';
import { walsenderParameters } from '../server/walsender.js';
import { ReplicationSession } from '../sender/session.js';
import { connectUpstream, DEFAULT_INGEST, Ingest } from '../ingest/ingest.js';
import { redactConnInfo } from '../client/conninfo.js';
import { checkStreamName, parseStreamSpec, readSpecsFile, sameSpec, SpecError, specJson, writeSpecsFile, type StreamSpec } from './stream_specs.js';
import { createHttpServer } from '../http/api.js';
import { noStreamsHint } from '../http/status_page.js';
import { lockDataDir } from '../wal/lockfile.js';
import { createLogger, type Logger } from '../log.js';
import { DEFAULT_SENDER_CONFIG, type SenderConfig, type WalSender } from '../sender/send_wal.js';
import { Stream } from '../stream/stream.js';
import { PROMPT_GRACE_MS } from '../cluster/quorum.js';
import type { Broker } from '../cluster/broker/broker.js';
import { EmbeddedBroker } from '../cluster/broker/embedded.js';
import { memberStatusJson } from '../http/api.js';
import { DEFAULT_RETENTION, type RetentionConfig } from '../cluster/retention.js';
import { DEFAULT_STREAM } from '../defaults.js';
import { DEFAULT_RECOVERY, type RecoveryConfig } from '../cluster/recovery.js';
import { NodeMetrics } from '../http/metrics.js';
import { StreamServices } from './stream_services.js';
import { DEFAULT_OFFLOAD, type OffloadConfig } from '../offload/offloader.js';
import { openRemoteStorage } from '../remote/open.js';
import { parseRemoteStorageUrl, type RemoteStorage } from '../remote/remote_storage.js';

const require = createRequire(import.meta.url);
export const VERSION = (require('../../package.json') as { version: string }).version;

export interface NodeOptions {
  dataDir: string;
  /** host:port for replication connections; port 0 picks a free one. Default 127.0.0.1:5454. */
  listenPg?: string;
  /** host:port for HTTP. Default 127.0.0.1:7676. */
  listenHttp?: string;
  nodeId?: number;
  /** The stream this node ingests (later issues) and serves by default. */
  stream?: string;
  auth?: AuthMethod;
  passwordFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  availabilityZone?: string;
  /** libpq conninfo of a PostgreSQL server to follow into `stream` (the one-stream shorthand of `streams`). */
  upstream?: string;
  /**
   * Streams and what each follows: name → { upstream, applicationName,
   * slotName } (an upstream-less entry is an imported stream, or one fed by
   * peers). Applied at every start, over what was set over HTTP.
   */
  streams?: Record<string, { upstream?: string | null; applicationName?: string | null; slotName?: string | null }>;
  /**
   * A file holding the bearer token that mutating HTTP calls (PUT, DELETE,
   * POST) must present. Without one, those calls are taken from loopback
   * addresses only.
   */
  httpTokenFile?: string;
  /** application_name towards the upstream (default walkeeper_<node-id>): what synchronous_standby_names lists. */
  applicationName?: string;
  /** The physical slot on the upstream (default walkeeper_<node-id>). */
  slotName?: string;
  logger?: Logger;
  sender?: Partial<SenderConfig>;
  ingest?: Partial<typeof DEFAULT_INGEST>;
  /** The other members' HTTP URLs (embedded broker). */
  peers?: string[];
  /** etcd v3 endpoints (http://host:port) instead of peers. */
  broker?: string[];
  /** When local WAL may be removed (keep size, replica window, how often). */
  retention?: Partial<RetentionConfig>;
  /** When to pull WAL from peers while the upstream is away. */
  recovery?: Partial<RecoveryConfig>;
  /** Object storage the streams' WAL is offloaded to: s3://bucket/prefix or file:///dir. */
  remoteStorage?: string;
  /** An S3-compatible server's endpoint (http://host:port), addressed path-style. */
  remoteEndpoint?: string;
  /** Offload timing (quiet period before a partial upload, per-object timeout). */
  offload?: Partial<OffloadConfig>;
  /** How long peers keep pushing every flush after the last client waiting on commit_lsn left (ms; default 5000). */
  promptGraceMs?: number;
}

export function parseHostPort(text: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${what} must be host:port, not ${JSON.stringify(text)}`);
  return { host: m[1] ?? m[2] ?? '', port };
}

function formatAddress(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * Reads a password file: `user:password` or `user:SCRAM-SHA-256$…` (a
 * verifier as pg_authid stores it) per line; `#` comments and blank lines
 * are skipped.
 */
export async function readPasswordFile(file: string): Promise<Map<string, ScramVerifier>> {
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read password file ${file}: ${e.code ?? e.message}`);
  });
  const users = new Map<string, ScramVerifier>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`password file ${file} line ${i + 1}: expected user:password`);
    const user = line.slice(0, colon);
    const secret = line.slice(colon + 1);
    users.set(user, secret.startsWith('SCRAM-SHA-256$') ? parseVerifier(secret) : makeVerifier(secret));
  });
  return users;
}

function safeOptions(text: string): Record<string, string> {
  try {
    return parseStartupOptions(text);
  } catch {
    return {};
  }
}

/** A random secret kept in the data directory, the same across restarts. */
async function readOrCreateSecret(file: string): Promise<Buffer> {
  const have = await readFile(file).catch(() => null);
  if (have && have.length >= 32) return have;
  const secret = randomBytes(32);
  await writeFile(file, secret, { mode: 0o600 });
  return secret;
}

function listen(server: net.Server | http.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** Streams opened at once at start-up (see openStreams). */
const OPEN_AT_ONCE = 8;

interface Conn {
  conn: ServerConnection;
  stream: Stream | null;
  session: ReplicationSession | null;
  /** Settles when the connection is done with. */
  done: Promise<void>;
}

/** What a stream-management call answers: an HTTP status and a JSON body. */
export interface ManageResult {
  status: number;
  body: Record<string, unknown>;
}

export class WalkeeperNode {
  readonly nodeId: number;
  /** Each stream with the services it owns (see stream_services.ts). */
  readonly streams = new Map<string, StreamServices>();
  readonly log: Logger;
  pgAddress = '';
  httpAddress = '';
  readonly availabilityZone: string | null;
  private pgServer: net.Server | null = null;
  private httpServer: http.Server | null = null;
  private readonly conns = new Map<number, Conn>();
  private readonly sessions = new Set<Promise<void>>();
  private releaseLock: (() => Promise<void>) | null = null;
  private stopping: Promise<void> | null = null;
  private readonly senderConfig: SenderConfig;
  private tlsContext: tls.SecureContext | null = null;
  private users = new Map<string, ScramVerifier>();
  /**
   * Upstreams' ingests while the stream each fills does not exist yet (the
   * first connection learns its system id and creates it); the stream's
   * services own it from then on.
   */
  private readonly pendingIngests = new Map<string, Ingest>();
  /** What each stream follows (see stream_specs.ts): the settings' and the HTTP API's, merged. */
  readonly specs = new Map<string, StreamSpec>();
  /** Of `specs`, those made over HTTP (persisted in streams.json). */
  private httpSpecs = new Map<string, StreamSpec>();
  /** Of `specs`, those the settings declare (applied at every start). */
  private declaredSpecs = new Map<string, StreamSpec>();
  /** Database systems claimed by a stream whose ingest has seen its upstream: system id → stream. */
  private readonly systems = new Map<string, string>();
  /** One stream-management call at a time: each reads, changes and persists `specs` as a whole. */
  private managing: Promise<unknown> = Promise.resolve();
  private httpToken: Buffer | null = null;
  private broker: Broker | null = null;
  private remote: RemoteStorage | null = null;
  readonly retention: RetentionConfig;
  readonly metrics: NodeMetrics;
  private historyTimer: NodeJS.Timeout | null = null;
  private retentionTimer: NodeJS.Timeout | null = null;
  private retaining: Promise<void> = Promise.resolve();
  private mockSecret: Buffer = randomBytes(32);

  constructor(readonly opts: NodeOptions) {
    this.nodeId = opts.nodeId ?? 1;
    this.log = (opts.logger ?? createLogger()).child({ node_id: this.nodeId });
    this.availabilityZone = opts.availabilityZone ?? null;
    this.senderConfig = { ...DEFAULT_SENDER_CONFIG, ...opts.sender };
    this.retention = { ...DEFAULT_RETENTION, ...opts.retention };
    this.metrics = new NodeMetrics(this);
  }

  /** The senders streaming right now (for tests and diagnostics). */
  activeSenders(): WalSender[] {
    return [...this.streams.values()].flatMap((sv) => [...sv.senders]);
  }

  /** The ingest that follows the upstream into `name` (null: the node follows no upstream into it). */
  ingest(name = this.defaultStreamName()): Ingest | null {
    return this.streams.get(name)?.ingest ?? this.pendingIngests.get(name) ?? null;
  }

  /** Streams configured to follow an upstream whose first connection has not created them yet. */
  pendingStreams(): { name: string; ingest: Ingest }[] {
    return [...this.pendingIngests].map(([name, ingest]) => ({ name, ingest }));
  }

  get auth(): AuthMethod {
    return this.opts.auth ?? 'loopback-trust';
  }

  /** The stream a client gets without `-c stream=`: the only one, else the node's `--stream`. */
  defaultStreamName(): string {
    if (this.streams.size === 1) return [...this.streams.keys()][0]!;
    return this.opts.stream ?? DEFAULT_STREAM;
  }

  stream(name = this.defaultStreamName()): Stream {
    const sv = this.streams.get(name);
    if (!sv) throw new Error(`stream "${name}" does not exist on node ${this.nodeId}`);
    return sv.stream;
  }

  async start(): Promise<void> {
    const o = this.opts;
    if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new Error('--tls-cert and --tls-key go together');
    if (o.tlsCert && o.tlsKey) {
      const [cert, key] = await Promise.all([readFile(o.tlsCert), readFile(o.tlsKey)]).catch((e: NodeJS.ErrnoException) => {
        throw new Error(`cannot read TLS certificate or key: ${e.message}`);
      });
      this.tlsContext = tls.createSecureContext({ cert, key });
    }
    if (o.passwordFile) this.users = await readPasswordFile(o.passwordFile);
    else if (this.auth === 'scram') throw new Error('--auth scram needs --password-file');
    if (o.httpTokenFile !== undefined) this.httpToken = await readTokenFile(o.httpTokenFile);
    // A bad --upstream is a start-up error (one line on the CLI), not a retry loop.
    if (o.upstream !== undefined) parseConnInfo(o.upstream);
    this.declaredSpecs = declaredSpecs(o);
    if (o.remoteEndpoint !== undefined && o.remoteStorage === undefined) throw new Error('--remote-endpoint needs --remote-storage');
    const remoteAt = o.remoteStorage !== undefined ? parseRemoteStorageUrl(o.remoteStorage, o.remoteEndpoint ?? null) : null;
    if (o.peers?.length && o.broker?.length) throw new Error('--peers and --broker exclude each other');
    this.broker = o.broker?.length ? new (await import('../cluster/broker/etcd.js')).EtcdBroker(o.broker, this.nodeId, this.log) : new EmbeddedBroker(o.peers ?? [], this.log);
    const pgAt = parseHostPort(o.listenPg ?? '127.0.0.1:5454', '--listen-pg');
    const httpAt = parseHostPort(o.listenHttp ?? '127.0.0.1:7676', '--listen-http');

    this.releaseLock = await lockDataDir(o.dataDir);
    try {
      this.mockSecret = await readOrCreateSecret(path.join(o.dataDir, 'walkeeper.auth_secret'));
      if (remoteAt) this.remote = await openRemoteStorage(remoteAt);
      this.httpSpecs = await readSpecsFile(o.dataDir);
      for (const [name, spec] of this.httpSpecs) this.specs.set(name, spec);
      for (const [name, spec] of this.declaredSpecs) {
        const was = this.httpSpecs.get(name);
        if (was && !sameSpec(was, spec)) this.log.warn({ stream: name, http: specJson(was), settings: specJson(spec) }, 'the settings declare this stream differently from its last change over HTTP: the settings win');
        this.specs.set(name, spec);
      }
      await this.openStreams();
      this.pgServer = net.createServer((socket) => this.onConnection(socket));
      const pgPort = await listen(this.pgServer, pgAt.host, pgAt.port);
      this.pgAddress = formatAddress(pgAt.host, pgPort);
      this.httpServer = createHttpServer(this);
      const httpPort = await listen(this.httpServer, httpAt.host, httpAt.port);
      this.httpAddress = formatAddress(httpAt.host, httpPort);
      // Status exchange starts once our addresses are known (they are part of it).
      for (const sv of this.streams.values()) sv.attachBroker();
      for (const [name, spec] of this.specs) if (spec.upstream !== null) this.startIngest(name, spec);
      this.retentionTimer = setInterval(() => void this.removeOldWal(), this.retention.intervalMs);
      this.historyTimer = setInterval(() => {
        for (const sv of this.streams.values()) sv.history.sample();
      }, 1000);
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (this.auth === 'loopback-trust' && this.users.size === 0 && !['127.0.0.1', 'localhost', '::1'].includes(pgAt.host)) {
      this.log.warn('listening beyond loopback without --password-file: remote clients cannot authenticate');
    }
    if (this.httpToken === null && !['127.0.0.1', 'localhost', '::1'].includes(httpAt.host)) {
      this.log.warn('HTTP listens beyond loopback without --http-token-file: changes (PUT, DELETE, POST) are taken from loopback only');
    }
    const names = [...new Set([...this.streams.keys(), ...this.pendingIngests.keys()])].sort();
    this.log.info({ pg_address: this.pgAddress, http_address: this.httpAddress, streams: names, auth: this.auth, tls: this.tlsContext !== null, remote_storage: this.remote?.location ?? null }, 'walkeeper node started');
    if (names.length === 0) {
      // (the same line as the status page's and `walkeeper status`'s)
      this.log.info(noStreamsHint(`http://${this.httpAddress}`));
    }
  }

  /**
   * Opens every stream in the data directory. Each open reads its control
   * file and scans its WAL tail on the thread pool; a node with a thousand
   * streams opens OPEN_AT_ONCE at a time, so that their scans overlap
   * instead of following one another.
   */
  private async openStreams(): Promise<void> {
    const dir = path.join(this.opts.dataDir, 'streams');
    const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => !n.startsWith('.')).sort();
    const opened = new Map<string, Stream>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < names.length) {
        const d = path.join(dir, names[next++]!);
        if (!(await stat(d)).isDirectory()) continue;
        opened.set(d, await Stream.open(d, this.log));
      }
    };
    await Promise.all(Array.from({ length: Math.min(OPEN_AT_ONCE, names.length) }, worker));
    for (const name of names) {
      const s = opened.get(path.join(dir, name));
      if (s) this.addStream(s);
    }
  }

  private addStream(s: Stream): StreamServices {
    const services = new StreamServices(s, {
      nodeId: this.nodeId,
      broker: this.broker!,
      metrics: this.metrics,
      recovery: { ...DEFAULT_RECOVERY, ...this.opts.recovery },
      remote: this.remote,
      offload: { ...DEFAULT_OFFLOAD, ...this.opts.offload },
      promptGraceMs: this.opts.promptGraceMs ?? PROMPT_GRACE_MS,
      memberStatus: (st) => memberStatusJson(this, st),
    });
    this.streams.set(s.name, services);
    services.start();
    if (this.httpAddress !== '') services.attachBroker();
    return services;
  }

  private appName(spec: StreamSpec): string {
    return spec.applicationName ?? `walkeeper_${this.nodeId}`;
  }

  private slotName(spec: StreamSpec): string {
    return spec.slotName ?? `walkeeper_${this.nodeId}`;
  }

  /** Follows `spec.upstream` into stream `name` (created by the first connection if it does not exist). */
  private startIngest(name: string, spec: StreamSpec): void {
    const ingest = new Ingest(
      {
        stream: (n) => this.streams.get(n)?.stream,
        createStream: async (n, init) => {
          const s = await Stream.create(path.join(this.opts.dataDir, 'streams', n), this.log, init);
          const services = this.addStream(s);
          if (ingest.streamName === n) {
            services.ingest = ingest;
            this.pendingIngests.delete(n);
          }
          return s;
        },
        flushed: (s) => this.streams.get(s.name)?.flushed(),
        acquireWriter: (s) => this.streams.get(s.name)!.writer.acquire('ingest'),
        systemTaken: (n, systemId) => this.claimSystem(n, systemId),
      },
      { ...DEFAULT_INGEST, ...this.opts.ingest, conninfo: spec.upstream!, applicationName: this.appName(spec), slotName: this.slotName(spec), stream: name },
      this.log,
    );
    const services = this.streams.get(name);
    if (services) services.ingest = ingest;
    else this.pendingIngests.set(name, ingest);
    ingest.start();
  }

  /** Stops the ingest that follows an upstream into `name`, if any. */
  private async stopIngest(name: string): Promise<void> {
    const sv = this.streams.get(name);
    const ingest = sv?.ingest ?? this.pendingIngests.get(name) ?? null;
    if (!ingest) return;
    await ingest.stop();
    if (sv?.ingest === ingest) sv.ingest = null;
    this.pendingIngests.delete(name);
  }

  /** Why stream `name` may not take WAL of database system `systemId` here (another stream holds or follows it), or null. */
  private systemConflict(name: string, systemId: bigint): string | null {
    for (const sv of this.streams.values()) {
      if (sv.name !== name && sv.stream.systemId === systemId) return `stream ${sv.name} on this node already holds WAL of database system ${systemId}; stream ${name} cannot follow the same system`;
    }
    const holder = this.systems.get(systemId.toString());
    if (holder !== undefined && holder !== name && this.specs.has(holder)) return `stream ${holder} on this node already follows database system ${systemId}; stream ${name} cannot follow the same system`;
    return null;
  }

  /** See IngestHost.systemTaken: one stream per database system on a node. */
  private claimSystem(name: string, systemId: bigint): string | null {
    const conflict = this.systemConflict(name, systemId);
    if (conflict === null) this.systems.set(systemId.toString(), name);
    return conflict;
  }

  /** Whether an HTTP call may change the node: the bearer token, or without one configured, a loopback caller. */
  authorize(authorization: string | undefined, remoteAddress: string | undefined): boolean {
    if (this.httpToken === null) return remoteAddress === '127.0.0.1' || remoteAddress === '::1' || remoteAddress === '::ffff:127.0.0.1';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) return false;
    // (hashes, so that the comparison takes the same time whatever the length given)
    const digest = (b: Buffer) => createHash('sha256').update(b).digest();
    return timingSafeEqual(digest(Buffer.from(m[1]!, 'utf8')), digest(this.httpToken));
  }

  /** Serialises stream-management calls (each changes `specs` and persists it whole). */
  private manage<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.managing.then(fn, fn);
    this.managing = run.catch(() => undefined);
    return run;
  }

  /**
   * `PUT /v1/streams/<name>`: creates a stream that follows an upstream, or
   * changes what an existing one follows (`upstream: null` stops
   * following). An upstream that answers within a few seconds is asked who
   * it is first, so that a second stream of one database system is refused
   * before anything changes; one that does not answer is followed anyway
   * (a primary may be down while it is configured) and checked on connect.
   */
  putStream(name: string, body: unknown): Promise<ManageResult> {
    return this.manage(async () => {
      if (this.stopping) return { status: 503, body: { error: 'the node is shutting down' } };
      const bad = checkStreamName(name);
      if (bad) return { status: 400, body: { error: bad } };
      let spec: StreamSpec;
      try {
        spec = parseStreamSpec(body, 'http', 'the request body');
      } catch (e) {
        if (e instanceof SpecError) return { status: 400, body: { error: e.message } };
        throw e;
      }
      const exists = this.streams.has(name);
      const was = this.specs.get(name) ?? null;
      if (!exists && !was && spec.upstream === null) {
        return { status: 400, body: { error: `stream "${name}" does not exist: a new stream needs "upstream" (or import its WAL with walkeeper import)` } };
      }
      if (was && sameSpec(was, spec)) return { status: 200, body: { stream: name, changed: false, ...specJson(spec) } };
      if (spec.upstream !== null) {
        const conflict = await this.probeSystem(name, spec);
        if (conflict !== null) return { status: 409, body: { error: conflict } };
      }
      const next = new Map(this.httpSpecs).set(name, spec);
      await writeSpecsFile(this.opts.dataDir, next);
      this.httpSpecs = next;
      this.specs.set(name, spec);
      await this.stopIngest(name);
      this.releaseSystem(name);
      if (spec.upstream !== null) this.startIngest(name, spec);
      const log = this.log.child({ stream: name });
      log.info({ upstream: spec.upstream === null ? null : redactConnInfo(spec.upstream) }, was || exists ? 'stream changed over HTTP' : 'stream created over HTTP');
      return { status: was || exists ? 200 : 201, body: { stream: name, changed: true, ...specJson({ ...spec, upstream: spec.upstream === null ? null : redactConnInfo(spec.upstream) }) } };
    });
  }

  private releaseSystem(name: string): void {
    for (const [id, holder] of this.systems) if (holder === name) this.systems.delete(id);
  }

  /** Asks the upstream who it is (IDENTIFY_SYSTEM, 5 s at most): why `name` may not follow it, or null (also when it does not answer). */
  private async probeSystem(name: string, spec: StreamSpec): Promise<string | null> {
    let client: Awaited<ReturnType<typeof connectUpstream>>['client'] | null = null;
    let over = false;
    const timeout = new Promise<null>((r) => setTimeout(() => r(null), 5000).unref());
    try {
      const answer = await Promise.race([
        (async () => {
          const c = (await connectUpstream(spec.upstream!, this.appName(spec))).client;
          // (connected after the time was up: nobody closes it but us)
          if (over) {
            void c.close().catch(() => undefined);
            return null;
          }
          client = c;
          return (await c.identifySystem()).systemId;
        })(),
        timeout,
      ]);
      if (answer === null) return null;
      const own = this.streams.get(name)?.stream;
      if (own && own.systemId !== answer) return `stream ${name} holds WAL of database system ${own.systemId}; ${redactConnInfo(spec.upstream!)} is system ${answer}`;
      return this.systemConflict(name, answer);
    } catch (err) {
      this.log.info({ stream: name, err: (err as Error).message }, 'the new upstream did not answer; following it anyway');
      return null;
    } finally {
      over = true;
      void (client as { close(): Promise<void> } | null)?.close().catch(() => undefined);
    }
  }

  /**
   * `DELETE /v1/streams/<name>[?purge=true]`: stops the stream's services,
   * refuses new clients, ends current ones with SQLSTATE 00000 ("ending
   * streaming to …"), and once that completed, drops its slot on the
   * upstream and moves its directory aside (`streams.deleted/`), or with
   * `purge` removes it. A slot that cannot be dropped (upstream away) is
   * named in the answer and the log.
   */
  deleteStream(name: string, purge: boolean): Promise<ManageResult> {
    return this.manage(async () => {
      if (this.stopping) return { status: 503, body: { error: 'the node is shutting down' } };
      const sv = this.streams.get(name);
      const spec = this.specs.get(name) ?? null;
      if (!sv && !spec) return { status: 404, body: { error: `stream "${name}" does not exist` } };
      const log = this.log.child({ stream: name });
      if (this.httpSpecs.has(name)) {
        const next = new Map(this.httpSpecs);
        next.delete(name);
        await writeSpecsFile(this.opts.dataDir, next);
        this.httpSpecs = next;
      }
      this.specs.delete(name);
      this.releaseSystem(name);
      await this.stopIngest(name);
      const body: Record<string, unknown> = { stream: name, deleted: true, purged: purge };
      if (sv) {
        // No new clients from here on ("does not exist"), nothing new written or uploaded.
        this.streams.delete(name);
        await this.retaining;
        await sv.stopWriters();
        const s = sv.stream;
        s.suspend(`stream ${name} was deleted`);
        s.emit('deleted');
        const theirs = [...this.conns.values()].filter((e) => e.stream === s);
        const deadline = new Promise((r) => setTimeout(r, 10_000).unref());
        await Promise.race([Promise.allSettled(theirs.map((e) => e.done)), deadline]);
        for (const e of theirs) e.conn.close();
        await Promise.allSettled(theirs.map((e) => e.done));
        await sv.close();
        if (purge) {
          await rm(s.dir, { recursive: true, force: true });
          log.info({ dir: s.dir }, 'stream deleted, its WAL removed');
        } else {
          const aside = path.join(this.opts.dataDir, 'streams.deleted', `${name}.${new Date().toISOString().replace(/[:.]/g, '-')}`);
          await mkdir(path.dirname(aside), { recursive: true });
          await rename(s.dir, aside);
          body.kept_at = aside;
          log.info({ kept_at: aside }, 'stream deleted, its WAL kept aside (DELETE …?purge=true removes it)');
        }
      }
      if (spec?.upstream) {
        const slot = this.slotName(spec);
        try {
          await this.dropSlot(spec, slot);
          body.slot_dropped = slot;
          log.info({ slot }, 'dropped the replication slot on the upstream');
        } catch (err) {
          body.slot_remains = { upstream: redactConnInfo(spec.upstream), slot, error: (err as Error).message };
          log.warn({ slot, upstream: redactConnInfo(spec.upstream), err: (err as Error).message }, `the replication slot ${slot} remains on the upstream and holds its WAL back: drop it there with SELECT pg_drop_replication_slot('${slot}')`);
        }
      }
      if (this.declaredSpecs.has(name)) body.note = `the settings declare stream ${name}: it comes back at the next start unless it is removed there`;
      return { status: 200, body };
    });
  }

  private async dropSlot(spec: StreamSpec, slot: string): Promise<void> {
    const { client } = await connectUpstream(spec.upstream!, this.appName(spec));
    try {
      // WAIT: our walsender on the upstream may still be exiting after the ingest stopped.
      const drop = client.query(`DROP_REPLICATION_SLOT "${slot}" WAIT`);
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the slot stayed active for 10 s')), 10_000).unref());
      await Promise.race([drop, timeout]);
    } catch (err) {
      // Already gone is what we wanted.
      if (!(err instanceof PgError && err.code === '42704')) throw err;
    } finally {
      await client.close().catch(() => undefined);
    }
  }

  /**
   * Removes each stream's segments that every horizon has passed (see
   * retention.ts). One pass at a time; a failure is logged and retried on
   * the next tick.
   */
  removeOldWal(): Promise<void> {
    this.retaining = this.retaining.then(async () => {
      for (const sv of this.streams.values()) await sv.removeOldWal(this.retention);
    });
    return this.retaining;
  }

  private onConnection(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const conn = new ServerConnection(socket, {
      tls: this.tlsContext,
      auth: { method: this.auth, users: this.users },
      mockSecret: this.mockSecret,
      accept: (startup) => this.accept(entry, startup),
      cancel: (pid, key) => this.cancel(pid, key),
    });
    const entry: Conn = { conn, stream: null, session: null, done: Promise.resolve() };
    this.conns.set(conn.pid, entry);
    const task = this.serve(entry).finally(() => {
      this.conns.delete(conn.pid);
      this.sessions.delete(task);
    });
    entry.done = task;
    this.sessions.add(task);
  }

  private async serve(entry: Conn): Promise<void> {
    const { conn } = entry;
    const startup = await conn.handshake();
    if (!startup || !entry.stream) {
      if (conn.refusal) {
        const p = conn.startupParams;
        const streamName = p ? (safeOptions(p.options ?? '').stream ?? this.defaultStreamName()) : undefined;
        this.log.warn(
          { stream: streamName, client: `${p?.application_name || 'unnamed'}@${conn.remoteAddress}`, user: p?.user, code: conn.refusal.code },
          `connection refused: ${conn.refusal.message}`,
        );
      }
      return;
    }
    const log = entry.stream.log.child({ client: `${startup.applicationName || 'unnamed'}@${startup.address}` });
    log.debug('connection authorized');
    entry.session = new ReplicationSession(
      conn,
      startup,
      entry.stream,
      `${entry.stream.pgVersion}.0 (walkeeper ${VERSION})`,
      this.senderConfig,
      {
        senderStarted: (s) => this.streams.get(entry.stream!.name)?.senders.add(s),
        senderEnded: (s) => this.streams.get(entry.stream!.name)?.senders.delete(s),
      },
      log,
    );
    try {
      await entry.session.run();
    } catch (err) {
      log.error({ err: (err as Error).stack ?? String(err) }, 'session failed');
      conn.fatal(new PgError(SQLSTATE.INTERNAL_ERROR, (err as Error).message));
    } finally {
      conn.close();
    }
  }

  private accept(entry: Conn, startup: StartupInfo): Record<string, string> {
    const repl = (startup.params.replication ?? '').toLowerCase();
    if (repl === 'database') {
      throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'walkeeper serves physical replication only; logical replication connections are not supported', { severity: 'FATAL' });
    }
    if (!['true', 'on', 'yes', '1'].includes(repl)) {
      throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'walkeeper accepts only physical replication connections', {
        severity: 'FATAL',
        hint: 'Connect with replication=true (as pg_receivewal and standbys do).',
      });
    }
    const name = startup.options.stream ?? this.defaultStreamName();
    const stream = this.streams.get(name)?.stream;
    if (!stream) {
      throw new PgError(SQLSTATE.INVALID_CATALOG_NAME, `stream "${name}" does not exist`, {
        severity: 'FATAL',
        hint: this.streams.size ? `This node serves: ${[...this.streams.keys()].join(', ')}. Choose one with options='-c stream=<name>'.` : noStreamsHint(`http://${this.httpAddress}`),
      });
    }
    if (stream.state !== 'active') throw new PgError(SQLSTATE.CANNOT_CONNECT_NOW, `stream "${name}" is ${stream.state}`, { severity: 'FATAL' });
    entry.stream = stream;
    return walsenderParameters(`${stream.pgVersion}.0 (walkeeper ${VERSION})`, startup.user, startup.applicationName);
  }

  private cancel(pid: number, key: number): void {
    const e = this.conns.get(pid);
    if (!e || e.conn.key !== key) return;
    e.session?.currentSender?.cancel();
  }

  /**
   * Stops like PostgreSQL's smart shutdown of walsenders: no new
   * connections; senders send what is left, wait for their clients to
   * confirm it and end with `COPY 0`; control files are persisted.
   *
   * The order, in one place:
   *  1. timers (retention, history), and the retention pass in flight;
   *  2. each stream's writers — ingest, then peer recovery — its offloader
   *     and its broker attachment (nothing new is flushed or uploaded from
   *     here on), then the broker and the object storage client; the
   *     last commit_lsn write completes (it is published only once durable);
   *  3. the listeners (replication and HTTP): no new clients;
   *  4. every sender ends its copy once its client confirmed what was sent;
   *     sessions get 10 s to finish, then their connections are closed;
   *  5. each stream's control file is persisted; the data directory lock goes.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.retentionTimer) clearInterval(this.retentionTimer);
      if (this.historyTimer) clearInterval(this.historyTimer);
      await this.retaining;
      await this.managing;
      await Promise.all([...this.pendingIngests.values()].map((i) => i.stop()));
      this.log.info({ streams: this.streams.size }, 'stopping: writers');
      await Promise.all([...this.streams.values()].map((sv) => sv.stopWriters()));
      this.log.info('stopping: broker');
      await this.broker?.close();
      this.log.info('stopping: listeners and senders');
      this.remote?.close();
      this.pgServer?.close();
      this.httpServer?.close();
      this.httpServer?.closeAllConnections();
      for (const sender of this.activeSenders()) sender.shutdown();
      const deadline = new Promise((r) => setTimeout(r, 10_000).unref());
      await Promise.race([Promise.allSettled([...this.sessions]), deadline]);
      for (const e of this.conns.values()) e.conn.close();
      for (const sv of this.streams.values()) await sv.close();
      await this.releaseLock?.();
      this.log.info('walkeeper node stopped');
    })();
    return this.stopping;
  }
}

/** The streams the node's options declare: `streams`, and the `upstream`/`stream` shorthand. */
function declaredSpecs(o: NodeOptions): Map<string, StreamSpec> {
  const out = new Map<string, StreamSpec>();
  for (const [name, v] of Object.entries(o.streams ?? {})) {
    const bad = checkStreamName(name);
    if (bad) throw new Error(bad);
    out.set(name, parseStreamSpec({ upstream: v.upstream ?? null, application_name: v.applicationName ?? null, slot_name: v.slotName ?? null }, 'http', `stream ${name}`));
  }
  if (o.upstream !== undefined) {
    const name = o.stream ?? DEFAULT_STREAM;
    if (out.has(name)) throw new Error(`--upstream follows a primary into stream ${name}, which "streams" declares too: use one or the other`);
    out.set(name, parseStreamSpec({ upstream: o.upstream, application_name: o.applicationName ?? null, slot_name: o.slotName ?? null }, 'http', '--upstream'));
  }
  return out;
}

/** The bearer token for mutating HTTP calls: the file's content, trimmed. */
async function readTokenFile(file: string): Promise<Buffer> {
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read --http-token-file ${file}: ${e.code ?? e.message}`);
  });
  const token = text.trim();
  if (token.length < 16 || /\s/.test(token)) throw new Error(`--http-token-file ${file} must hold one token of at least 16 characters without spaces`);
  return Buffer.from(token, 'utf8');
}

/** Starts a node: opens its streams and listens. */
export async function startNode(opts: NodeOptions): Promise<WalkeeperNode> {
  const node = new WalkeeperNode(opts);
  await node.start();
  return node;
}
