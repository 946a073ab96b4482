/**
 * `walkeeper node`: run a node on a data directory — serve its streams to
 * replication clients and its state over HTTP — until SIGINT or SIGTERM.
 */
import { parseEtcdEndpoints, parsePeerUrls } from '../broker/broker.js';
import { startNode } from '../node/node.js';
import { parseSize } from '../node/retention.js';
import type { AuthMethod } from '../pgwire/server.js';
import { intOption, parse, UsageError } from './args.js';

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
  --upstream CONNINFO     follow this PostgreSQL server into --stream (libpq URI or key=value)
  --application-name NAME name towards the upstream, for synchronous_standby_names (default walkeeper_<node-id>)
  --peers URL[,URL…]      the other members' HTTP URLs (embedded broker): commit_lsn is what a
                          majority of the members has flushed
  --wal-keep-size SIZE    WAL kept behind flush_lsn whatever else says (default 1GB)
  --replica-window SECS   a departed replica's position holds WAL this long (default 600)
  --broker ENDPOINTS      etcd v3 endpoints (http://host:port,…) instead of --peers: members find
                          each other under walkeeper/<stream>/ in etcd

Clients choose a stream with options='-c stream=<name>'.
`;

function sizeOption(flag: string, text: string): bigint {
  try {
    return parseSize(text, flag);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export async function nodeCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      'data-dir': { type: 'string' },
      'listen-pg': { type: 'string' },
      'listen-http': { type: 'string' },
      'node-id': { type: 'string' },
      stream: { type: 'string' },
      auth: { type: 'string' },
      'password-file': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'availability-zone': { type: 'string' },
      upstream: { type: 'string' },
      'application-name': { type: 'string' },
      peers: { type: 'string' },
      broker: { type: 'string' },
      'wal-keep-size': { type: 'string' },
      'replica-window': { type: 'string' },
    },
    NODE_USAGE,
  );
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${NODE_USAGE}`);
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  const auth = str('auth');
  if (auth !== undefined && auth !== 'trust' && auth !== 'scram') throw new UsageError(`--auth must be trust or scram, not ${JSON.stringify(auth)}`);
  if (str('peers') !== undefined && str('broker') !== undefined) throw new UsageError('--peers and --broker exclude each other: members come from one or the other');
  const node = await startNode({
    dataDir: str('data-dir') ?? './walkeeper-data',
    listenPg: str('listen-pg'),
    listenHttp: str('listen-http'),
    nodeId: intOption('node-id', str('node-id'), 1, 2 ** 31 - 1),
    stream: str('stream'),
    auth: auth as AuthMethod | undefined,
    passwordFile: str('password-file'),
    tlsCert: str('tls-cert'),
    tlsKey: str('tls-key'),
    availabilityZone: str('availability-zone'),
    upstream: str('upstream'),
    applicationName: str('application-name'),
    peers: str('peers') === undefined ? undefined : parsePeerUrls(str('peers')!),
    broker: str('broker') === undefined ? undefined : parseEtcdEndpoints(str('broker')!),
    retention: {
      ...(str('wal-keep-size') !== undefined ? { keepBytes: sizeOption('--wal-keep-size', str('wal-keep-size')!) } : {}),
      ...(str('replica-window') !== undefined ? { replicaWindowMs: intOption('replica-window', str('replica-window'), 0, 365 * 86400)! * 1000 } : {}),
    },
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
