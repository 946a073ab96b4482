// A fake walkeeper node for receiver tests: the HTTP status a receiver polls
// (`GET /v1/streams/<name>`, shaped like ts/http/api.ts's streamJson) and a
// replication server (the fake upstream, harness/fakeupstream.ts) at the
// status's pg_address, serving real WAL up to a limit that plays commit_lsn.
//
//   const node = await startFakeNode({ wal: await fx.bytes(), walStart: fx.firstLsn, segmentSize: FIXTURE_SEG, systemId: fx.systemId });
//   ... point a receiver at node.httpUrl ...
//   node.setLimit(fx.firstLsn + 100_000n);          // serve (and advertise) WAL up to there
//   node.setStatus({ commit_lsn: 0x5000000n });     // or just lie in the status
//   node.setHttpFault('hang');                      // or an HTTP error, or a reset
//   node.upstream.log.status / .neon                // what the receiver reported
//   await node.close();

import http from 'node:http';
import type net from 'node:net';

import { formatLsn } from '../../ts/lsn.js';
import { startFakeUpstream, type FakeUpstream, type FakeUpstreamOptions } from './fakeupstream.js';

/** The status document, as a walkeeper node answers `GET /v1/streams/<name>` (the fields a receiver uses, and a few more). */
export interface FakeNodeStatus {
  name: string;
  state: string;
  node_id: number;
  /** Decimal string (a u64). */
  system_id: string;
  pg_version: number;
  tli: number;
  segment_size: number;
  flush_lsn: string;
  commit_lsn: string;
  oldest_lsn: string | null;
  /** 'host:port' of the replication server. */
  pg_address: string;
  http_address: string;
  availability_zone: string | null;
  updated_at: string;
  upstream: unknown;
  replicas: unknown[];
  slots: unknown[];
}

/** Put as a value in setStatus() to leave the field out of the document. */
export const FAKE_NODE_OMIT: unique symbol = Symbol('FAKE_NODE_OMIT');

/**
 * Status overrides: a value replaces the default (bigints are formatted:
 * 'X/X' for *_lsn fields, decimal otherwise), FAKE_NODE_OMIT leaves the field
 * out, undefined goes back to the default. Unknown keys are added as they are.
 */
export type FakeNodeStatusPatch = {
  [K in keyof FakeNodeStatus]?: FakeNodeStatus[K] | bigint | typeof FAKE_NODE_OMIT | undefined;
} & Record<string, unknown>;

/** What the HTTP side does instead of answering: an HTTP error (body: JSON, or text if a string), a TCP reset, or no answer at all. */
export type FakeNodeHttpFault = { status: number; body?: unknown } | 'reset' | 'hang';

/** The upstream options a fake node takes (limit is the node's own: see FakeNodeOptions.limit). */
export type FakeNodeUpstreamOptions = Omit<FakeUpstreamOptions, 'limit'>;

export interface FakeNodeOptions extends FakeNodeUpstreamOptions {
  /** The stream served at /v1/streams/<stream>. Default 'main'. */
  stream?: string;
  /** Default 1. */
  nodeId?: number;
  /** Default null. */
  availabilityZone?: string | null;
  /** WAL is served up to this LSN (and commit_lsn says so unless overridden); null: all of `wal`. Default null. See setLimit(). */
  limit?: bigint | null;
  /** Initial status overrides (see setStatus()). */
  status?: FakeNodeStatusPatch;
}

export interface FakeNode {
  /** 'http://127.0.0.1:N' (no trailing slash). */
  httpUrl: string;
  /** '127.0.0.1:N' of the HTTP server. */
  httpAddress: string;
  /** '127.0.0.1:N' of the replication server (the default pg_address). */
  pgAddress: string;
  /** The stream name. */
  stream: string;
  /**
   * The replication server: its log (commands, 'r' status, 'h' and 'z'
   * feedback, startups), slots, disconnectAll(), setOptions(). Move the
   * limit with setLimit(), not with upstream.setOptions({ limit }) (that
   * would cut the tie between the status and what is served).
   */
  upstream: FakeUpstream;
  /** Every HTTP request, as 'METHOD /path', in order. */
  requests: string[];
  /** The status document as GET answers it now. */
  status(): Record<string, unknown>;
  /** Overrides status fields from now on (see FakeNodeStatusPatch); keeps earlier overrides of other fields. */
  setStatus(p: FakeNodeStatusPatch): void;
  /** Moves the limit (running streams notice within ~20 ms); null: all of the WAL. */
  setLimit(lsn: bigint | null): void;
  /** The end of WAL served now: min(limit, end of wal). */
  readonly servedEnd: bigint;
  /** Changes upstream options (for new replication connections) and the status fields derived from them (flush_lsn, system_id, tli, ...). */
  setOptions(p: Partial<FakeNodeUpstreamOptions>): void;
  /** Makes every HTTP request fail this way from now on; null: answer normally. */
  setHttpFault(f: FakeNodeHttpFault | null): void;
  /** Stops both servers and drops every connection. Idempotent. */
  close(): Promise<void>;
}

function pgMajor(serverVersion: string): number {
  return Number(/^(\d+)/.exec(serverVersion)?.[1] ?? 0);
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

export async function startFakeNode(opts: FakeNodeOptions): Promise<FakeNode> {
  const { stream = 'main', nodeId = 1, availabilityZone = null, limit: initialLimit = null, status: initialStatus, ...upstreamOpts } = opts;
  let cur: FakeNodeUpstreamOptions = { neonFeedback: true, ...upstreamOpts };
  let limit: bigint | null = initialLimit;
  const overrides = new Map<string, unknown>();
  const requests: string[] = [];
  let fault: FakeNodeHttpFault | null = null;

  const walEnd = (): bigint => cur.walStart + BigInt(cur.wal.length);
  const servedEnd = (): bigint => {
    const end = walEnd();
    return limit !== null && limit < end ? limit : end;
  };

  const upstream = await startFakeUpstream({ ...cur, limit: servedEnd });
  const pgAddress = `${upstream.host}:${upstream.port}`;
  let httpAddress = '';

  const status = (): Record<string, unknown> => {
    const doc: Record<string, unknown> = {
      name: stream,
      state: 'active',
      node_id: nodeId,
      system_id: cur.systemId.toString(),
      pg_version: pgMajor(cur.serverVersion ?? '15.4'),
      tli: cur.tli ?? 1,
      segment_size: cur.segmentSize,
      flush_lsn: formatLsn(walEnd()),
      commit_lsn: formatLsn(servedEnd()),
      oldest_lsn: formatLsn(cur.walStart),
      pg_address: pgAddress,
      http_address: httpAddress,
      availability_zone: availabilityZone,
      updated_at: new Date().toISOString(),
      upstream: null,
      replicas: [],
      slots: [],
    } satisfies FakeNodeStatus;
    for (const [k, v] of overrides) {
      if (v === FAKE_NODE_OMIT) delete doc[k];
      else if (typeof v === 'bigint') doc[k] = k.endsWith('_lsn') ? formatLsn(v) : v.toString();
      else doc[k] = v;
    }
    return doc;
  };

  const setStatus = (p: FakeNodeStatusPatch): void => {
    for (const [k, v] of Object.entries(p)) {
      if (v === undefined) overrides.delete(k);
      else overrides.set(k, v);
    }
  };
  if (initialStatus) setStatus(initialStatus);

  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'http://localhost');
    requests.push(`${method} ${url.pathname}`);
    const f = fault;
    if (f === 'hang') return; // closeAllConnections() in close() ends it
    if (f === 'reset') {
      req.socket.resetAndDestroy();
      return;
    }
    if (f !== null) return sendJson(res, f.status, f.body ?? { error: `injected HTTP ${f.status}` });
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    if (method !== 'GET') return sendJson(res, 405, { error: `${method} not allowed` });
    if (parts.length === 1 && parts[0] === 'healthz') return sendJson(res, 200, { status: 'ok', node_id: nodeId, streams: 1 });
    if (parts[0] === 'v1' && parts[1] === 'streams') {
      if (parts.length === 2) return sendJson(res, 200, [status()]);
      if (parts.length === 3) {
        if (parts[2] !== stream) return sendJson(res, 404, { error: `stream "${parts[2]}" does not exist` });
        return sendJson(res, 200, status());
      }
    }
    return sendJson(res, 404, { error: `no such endpoint: ${url.pathname}` });
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  try {
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', fail);
        ok();
      });
    });
  } catch (e) {
    await upstream.close();
    throw e;
  }
  const httpPort = (server.address() as net.AddressInfo).port;
  httpAddress = `127.0.0.1:${httpPort}`;

  let closed: Promise<void> | null = null;
  return {
    httpUrl: `http://${httpAddress}`,
    httpAddress,
    pgAddress,
    stream,
    upstream,
    requests,
    status,
    setStatus,
    setLimit(lsn) {
      limit = lsn;
    },
    get servedEnd() {
      return servedEnd();
    },
    setOptions(p) {
      const { limit: _ignored, ...rest } = p as Partial<FakeUpstreamOptions>;
      cur = { ...cur, ...rest };
      upstream.setOptions(rest);
    },
    setHttpFault(f) {
      fault = f;
    },
    close() {
      closed ??= (async () => {
        const stopped = new Promise<void>((ok) => server.close(() => ok()));
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
        await Promise.all([stopped, upstream.close()]);
      })();
      return closed;
    },
  };
}
