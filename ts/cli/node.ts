/**
 * `walkeeper node`: run a node on a data directory — serve its streams to
 * replication clients and its state over HTTP — until SIGINT or SIGTERM.
 */
import { parseEtcdEndpoints, parsePeerUrls } from '../cluster/broker/broker.js';
import { createLogger } from '../log.js';
import { parseHostPort, startNode } from '../node/node.js';
import { parseSize } from '../cluster/retention.js';
import type { AuthMethod } from '../server/connection.js';
import { parseRemoteStorageUrl } from '../remote/remote_storage.js';
import { parse, UsageError } from './args.js';
import { parseStreamSpecs } from '../node/stream_specs.js';
import { DEFAULT_STREAM } from '../defaults.js';
import { resolveSettings, SettingsReader, type SettingDef } from './settings.js';

export const NODE_USAGE = `Usage: walkeeper node [options]

Serves the streams in the data directory over the PostgreSQL replication
protocol (to pg_receivewal, standbys and walkeeper receivers) and over HTTP.

  --data-dir DIR          data directory (default ./walkeeper-data)
  --listen-pg HOST:PORT   replication connections (default 127.0.0.1:5454)
  --listen-http HOST:PORT HTTP API (default 127.0.0.1:7676)
  --node-id N             this node's id (default 1)
  --stream NAME           the stream served to clients that do not choose one (default main)
  --auth METHOD           trust | scram (default: trust from loopback, SCRAM from elsewhere)
  --password-file FILE    user:password or user:SCRAM-SHA-256$… lines, for SCRAM
  --tls-cert FILE         PEM certificate: answer SSLRequest with TLS
  --tls-key FILE          PEM private key for --tls-cert
  --availability-zone AZ  reported to receivers, which prefer their own zone
  --upstream CONNINFO     follow this PostgreSQL server into --stream (libpq URI or key=value);
                          for several streams, "streams" in walkeeper.json or PUT /v1/streams/<name>
  --application-name NAME name towards the upstream, for synchronous_standby_names (default walkeeper_<node-id>)
  --http-token-file FILE  the bearer token that changes over HTTP (PUT, DELETE, POST) must present;
                          without it they are taken from loopback only
  --peers URL[,URL…]      the other members' HTTP URLs (embedded broker): commit_lsn is what a
                          majority of the members has flushed
  --wal-keep-size SIZE    WAL kept behind flush_lsn whatever else says (default 1GB)
  --replica-window SECS   a departed replica's position holds WAL this long (default 600)
  --broker ENDPOINTS      etcd v3 endpoints (http://host:port,…) instead of --peers: members find
                          each other under walkeeper/<stream>/ in etcd
  --remote-storage URL    offload every committed segment, zstd-compressed, to s3://bucket/prefix
                          or file:///dir (credentials and region: the AWS SDK's default chain);
                          local WAL is never removed before it is there
  --remote-endpoint URL   an S3-compatible server (MinIO, Ceph RGW, R2): http(s)://host:port,
                          path-style (default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS)
  --offload-partial-after SECS
                          quiet time after which the unfinished segment goes up as a partial
                          object (default 900; 0: never)

  --log-level LEVEL       trace | debug | info | warn | error (default info)
  --config FILE           settings file (default ./walkeeper.json when present)

Every setting can also come from walkeeper.json (keys named like the flags,
e.g. {"node-id": 2, "peers": ["http://10.0.0.2:7676"]}) or from a variable
WALKEEPER_<NAME> (e.g. WALKEEPER_NODE_ID=2). Flags win over variables, which
win over the file, which wins over the defaults.

Many streams, each following its own primary, go in walkeeper.json (or
WALKEEPER_STREAMS as JSON):
  {"streams": {"orders": {"upstream": "host=db1 user=rep"},
               "billing": {"upstream": "host=db2 user=rep", "application-name": "wk1", "slot-name": "wk1"}}}
They are applied at every start; streams created or changed over HTTP
(PUT/DELETE /v1/streams/<name>) are kept in the data directory's streams.json.

Clients choose a stream with options='-c stream=<name>'.
`;

/** The node's settings: each is a flag, a key of walkeeper.json and a WALKEEPER_* variable. */
export const NODE_SETTINGS: SettingDef[] = [
  'data-dir', 'listen-pg', 'listen-http', 'node-id', 'stream', 'auth', 'password-file', 'tls-cert', 'tls-key',
  'availability-zone', 'upstream', 'application-name', 'peers', 'broker', 'wal-keep-size', 'replica-window', 'log-level',
  'remote-storage', 'remote-endpoint', 'offload-partial-after', 'http-token-file',
].map((name): SettingDef => ({ name })).concat([{ name: 'streams', kind: 'json' }]);

export async function nodeCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { config: { type: 'string' }, ...Object.fromEntries(NODE_SETTINGS.filter((d) => d.kind !== 'json').map((d) => [d.name, { type: 'string' as const }])) },
    NODE_USAGE,
  );
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${NODE_USAGE}`);
  const config = typeof values.config === 'string' ? values.config : (process.env.WALKEEPER_CONFIG ?? null);
  const r = new SettingsReader(resolveSettings(NODE_SETTINGS, values, process.env, config));
  const auth = r.oneOf('auth', ['trust', 'scram'] as const);
  if (r.str('peers') !== undefined && r.str('broker') !== undefined) {
    throw new UsageError(`${r.where('peers')} and ${r.where('broker')} exclude each other: members come from one or the other`);
  }
  const listenPg = r.str('listen-pg');
  const listenHttp = r.str('listen-http');
  r.parsed('listen-pg', (v) => parseHostPort(v, 'it'));
  r.parsed('listen-http', (v) => parseHostPort(v, 'it'));
  const logLevel = r.oneOf('log-level', ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const);
  const keepBytes = r.parsed('wal-keep-size', (v) => parseSize(v, 'it'));
  const windowS = r.int('replica-window', 0, 365 * 86400);
  const partialS = r.int('offload-partial-after', 0, 365 * 86400);
  if (r.str('remote-endpoint') !== undefined && r.str('remote-storage') === undefined) {
    throw new UsageError(`${r.where('remote-endpoint')} needs --remote-storage s3://bucket/prefix`);
  }
  r.parsed('remote-storage', (v) => parseRemoteStorageUrl(v, r.str('remote-endpoint') ?? null));
  const streams = r.parsed('streams', (v) => parseStreamSpecs(JSON.parse(v), 'it'));
  if (streams && r.str('upstream') !== undefined && streams.has(r.str('stream') ?? DEFAULT_STREAM)) {
    throw new UsageError(`${r.where('upstream')} follows a primary into stream ${r.str('stream') ?? DEFAULT_STREAM}, which ${r.where('streams')} declares too: use one or the other`);
  }
  const node = await startNode({
    dataDir: r.str('data-dir') ?? './walkeeper-data',
    listenPg,
    listenHttp,
    nodeId: r.int('node-id', 1, 2 ** 31 - 1),
    stream: r.str('stream'),
    auth: auth as AuthMethod | undefined,
    passwordFile: r.str('password-file'),
    tlsCert: r.str('tls-cert'),
    tlsKey: r.str('tls-key'),
    availabilityZone: r.str('availability-zone'),
    upstream: r.str('upstream'),
    applicationName: r.str('application-name'),
    httpTokenFile: r.str('http-token-file'),
    ...(streams ? { streams: Object.fromEntries([...streams].map(([n, s]) => [n, { upstream: s.upstream, applicationName: s.applicationName, slotName: s.slotName }])) } : {}),
    peers: r.parsed('peers', parsePeerUrls),
    broker: r.parsed('broker', parseEtcdEndpoints),
    retention: {
      ...(keepBytes !== undefined ? { keepBytes } : {}),
      ...(windowS !== undefined ? { replicaWindowMs: windowS * 1000 } : {}),
    },
    remoteStorage: r.str('remote-storage'),
    remoteEndpoint: r.str('remote-endpoint'),
    ...(partialS !== undefined ? { offload: { partialAfterMs: partialS * 1000 } } : {}),
    ...(logLevel !== undefined ? { logger: createLogger({ level: logLevel }) } : {}),
    // Comparison switches for benchmarks, not settings: the JavaScript paths the pumps replace.
    ingest: { pump: process.env.WALKEEPER_INGEST_PUMP !== '0' },
    sender: { sendPump: process.env.WALKEEPER_SEND_PUMP !== '0' },
  });
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      node.log.info({ signal: sig }, 'shutting down');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  await node.stop();
  return 0;
}
