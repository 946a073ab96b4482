/**
 * A walkeeper node: its streams, the replication listener and the HTTP
 * API. `startNode` is the library entry point; the `walkeeper node` command
 * is a thin shell around it.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
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
import { DEFAULT_INGEST, Ingest } from '../ingest/ingest.js';
import { createHttpServer } from '../http/api.js';
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
  /** libpq conninfo of a PostgreSQL server to follow into `stream`. */
  upstream?: string;
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

interface Conn {
  conn: ServerConnection;
  stream: Stream | null;
  session: ReplicationSession | null;
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
   * The upstream's ingest while the stream it fills does not exist yet (the
   * first connection learns its system id and creates it); the stream's
   * services own it from then on.
   */
  private bootstrapIngest: Ingest | null = null;
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
    return this.streams.get(name)?.ingest ?? (this.bootstrapIngest?.streamName === name ? this.bootstrapIngest : null);
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
    // A bad --upstream is a start-up error (one line on the CLI), not a retry loop.
    if (o.upstream !== undefined) parseConnInfo(o.upstream);
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
      await this.openStreams();
      this.pgServer = net.createServer((socket) => this.onConnection(socket));
      const pgPort = await listen(this.pgServer, pgAt.host, pgAt.port);
      this.pgAddress = formatAddress(pgAt.host, pgPort);
      this.httpServer = createHttpServer(this);
      const httpPort = await listen(this.httpServer, httpAt.host, httpAt.port);
      this.httpAddress = formatAddress(httpAt.host, httpPort);
      // Status exchange starts once our addresses are known (they are part of it).
      for (const sv of this.streams.values()) sv.attachBroker();
      if (o.upstream) this.startIngest(o.upstream);
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
    this.log.info({ pg_address: this.pgAddress, http_address: this.httpAddress, streams: [...this.streams.keys()], auth: this.auth, tls: this.tlsContext !== null, remote_storage: this.remote?.location ?? null }, 'walkeeper node started');
  }

  private async openStreams(): Promise<void> {
    const dir = path.join(this.opts.dataDir, 'streams');
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (name.startsWith('.')) continue;
      const d = path.join(dir, name);
      if (!(await stat(d)).isDirectory()) continue;
      const s = await Stream.open(d, this.log);
      this.addStream(s);
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

  private startIngest(conninfo: string): void {
    const name = this.opts.stream ?? DEFAULT_STREAM;
    const appName = this.opts.applicationName ?? `walkeeper_${this.nodeId}`;
    const ingest = new Ingest(
      {
        stream: (n) => this.streams.get(n)?.stream,
        createStream: async (n, init) => {
          const s = await Stream.create(path.join(this.opts.dataDir, 'streams', n), this.log, init);
          const services = this.addStream(s);
          if (ingest.streamName === n) {
            services.ingest = ingest;
            this.bootstrapIngest = null;
          }
          return s;
        },
        flushed: (s) => this.streams.get(s.name)?.flushed(),
        acquireWriter: (s) => this.streams.get(s.name)!.writer.acquire('ingest'),
      },
      { ...DEFAULT_INGEST, ...this.opts.ingest, conninfo, applicationName: appName, slotName: this.opts.slotName ?? `walkeeper_${this.nodeId}`, stream: name },
      this.log,
    );
    const services = this.streams.get(name);
    if (services) services.ingest = ingest;
    else this.bootstrapIngest = ingest;
    ingest.start();
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
    const entry: Conn = { conn, stream: null, session: null };
    this.conns.set(conn.pid, entry);
    const task = this.serve(entry).finally(() => {
      this.conns.delete(conn.pid);
      this.sessions.delete(task);
    });
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
        hint: this.streams.size ? `This node serves: ${[...this.streams.keys()].join(', ')}. Choose one with options='-c stream=<name>'.` : 'This node has no streams yet.',
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
   *     here on), then the broker and the object storage client;
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
      await this.bootstrapIngest?.stop();
      await Promise.all([...this.streams.values()].map((sv) => sv.stopWriters()));
      await this.broker?.close();
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

/** Starts a node: opens its streams and listens. */
export async function startNode(opts: NodeOptions): Promise<WalkeeperNode> {
  const node = new WalkeeperNode(opts);
  await node.start();
  return node;
}
