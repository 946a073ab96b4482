/**
 * The node's HTTP API: health, and each stream's state for operators,
 * peers and receivers (which learn the replication address from
 * `pg_address`). JSON, LSNs as `X/X`.
 */
import { open, type FileHandle } from 'node:fs/promises';
import http from 'node:http';

import { formatLsn, parseWalFileName, segnoOf, type Lsn } from '../lsn.js';
import type { Quorum } from '../cluster/quorum.js';
import type { StreamHistory } from './history.js';
import { STATUS_PAGE } from './status_page.js';
import { parseFlushParam, servePeerWatch } from './peer_watch.js';
import type { Replica } from '../stream/replica.js';
import type { Ingest } from '../ingest/ingest.js';
import type { Stream } from '../stream/stream.js';
import type { Offloader } from '../offload/offloader.js';

/** What the API reads of one stream's services (the node's StreamServices). */
export interface StreamView {
  readonly stream: Stream;
  readonly quorum: Quorum;
  readonly ingest: Ingest | null;
  readonly history: StreamHistory;
  readonly offloader: Offloader | null;
}

export interface HttpNodeView {
  nodeId: number;
  pgAddress: string;
  httpAddress: string;
  availabilityZone: string | null;
  streams: ReadonlyMap<string, StreamView>;
  metrics: { text(): Promise<string>; readonly contentType: string };
  /** Streams configured to follow an upstream that has not answered yet (they exist once it does). */
  pendingStreams(): { name: string; ingest: Ingest }[];
  /** Whether a mutating call may proceed (see WalkeeperNode.authorize). */
  authorize(authorization: string | undefined, remoteAddress: string | undefined): boolean;
  putStream(name: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }>;
  deleteStream(name: string, purge: boolean): Promise<{ status: number; body: Record<string, unknown> }>;
}

const lsn = (l: Lsn | null) => (l === null ? null : formatLsn(l));

export function replicaJson(r: Replica) {
  const f = r.feedback;
  return {
    id: r.id,
    application_name: r.info.applicationName,
    address: r.info.address,
    state: r.state,
    recovery: r.info.recovery,
    slot: r.info.slot,
    tli: r.info.tli,
    start_lsn: formatLsn(r.info.startLsn),
    sent_lsn: formatLsn(r.sentLsn),
    write_lsn: formatLsn(f.writeLsn),
    flush_lsn: formatLsn(f.flushLsn),
    apply_lsn: formatLsn(f.applyLsn),
    xmin: f.xmin === 0 ? null : f.xmin,
    catalog_xmin: f.catalogXmin === 0 ? null : f.catalogXmin,
    last_received_lsn: f.lastReceivedLsn === 0n ? null : formatLsn(f.lastReceivedLsn),
    disk_consistent_lsn: f.diskConsistentLsn === 0n ? null : formatLsn(f.diskConsistentLsn),
    remote_consistent_lsn: f.remoteConsistentLsn === 0n ? null : formatLsn(f.remoteConsistentLsn),
    connected_at: r.connectedAt.toISOString(),
    last_feedback_at: r.lastFeedbackAt?.toISOString() ?? null,
  };
}

/** `s`: the stream it fills (null while the stream waits for its upstream's first answer). */
function upstreamJson(i: Ingest | null, s: Stream | null) {
  if (!i) return null;
  const u = i.status();
  const flushed = s?.flushLsn ?? null;
  return {
    conninfo: u.conninfo,
    state: u.state,
    connected_to: u.connectedTo,
    since: u.since.toISOString(),
    received_lsn: lsn(u.receivedLsn),
    flushed_lsn: lsn(flushed),
    upstream_end_lsn: lsn(u.upstreamEndLsn),
    // How far this node's flushed WAL is behind what the upstream last said it has.
    lag_bytes: u.upstreamEndLsn === null || flushed === null ? null : Number(u.upstreamEndLsn > flushed ? u.upstreamEndLsn - flushed : 0n),
    reconnects: u.reconnects,
    last_error: u.lastError,
  };
}

/**
 * What a node tells the other members and receivers about a stream (the
 * value it puts in etcd, and the answer to a waiting status request).
 */
export function memberStatusJson(node: Pick<HttpNodeView, 'nodeId' | 'pgAddress' | 'httpAddress' | 'availabilityZone'>, s: Stream) {
  return {
    name: s.name,
    state: s.state,
    node_id: node.nodeId,
    system_id: s.systemId.toString(),
    pg_version: s.pgVersion,
    tli: s.tli,
    segment_size: s.segmentSize,
    flush_lsn: formatLsn(s.flushLsn),
    // null while not known yet after a crash (see stream/commit_lsn.ts): never less than was told before.
    commit_lsn: lsn(s.reportedCommitLsn),
    remote_consistent_lsn: lsn(s.replicas.aggregates().maxRemoteConsistentLsn),
    oldest_lsn: lsn(s.oldestLsn),
    backup_lsn: lsn(s.backupLsn),
    pg_address: node.pgAddress,
    http_address: node.httpAddress,
    availability_zone: node.availabilityZone,
    updated_at: new Date().toISOString(),
  };
}

function offloadJson(o: Offloader | null, s: Stream) {
  if (!o) return null;
  const st = o.status();
  const base = s.backupLsn ?? s.oldestLsn ?? s.commitLsn;
  return {
    location: st.location,
    offloader_node_id: st.offloader,
    active: st.active,
    healthy: st.healthy,
    last_error: st.lastError,
    backup_lsn: lsn(s.backupLsn),
    // WAL at or below commit_lsn not yet in object storage: what accumulates locally while the store is away.
    lag_bytes: Number(s.commitLsn > base ? s.commitLsn - base : 0n),
    partial_uploads: s.partialUploads.map((p) => ({ name: p.name, state: p.state })),
  };
}

function membersJson(q: Quorum, s: Stream) {
  return {
    members: q.memberCount,
    // What this node asks of its peers' statuses (each flush while a client
    // waits on commit_lsn here), and what its followers ask of it.
    follow_peers: s.followPeers,
    followed_by: { ...s.followedBy },
    quorum: q.size,
    peers: q.list().map((m) => ({
      peer: m.key,
      node_id: m.nodeId,
      flush_lsn: lsn(m.flushLsn),
      commit_lsn: lsn(m.commitLsn),
      pg_address: m.pgAddress,
      http_address: m.httpAddress,
      heard_at: m.heardAt === null ? null : new Date(m.heardAt).toISOString(),
      error: m.error,
    })),
  };
}

export function streamJson(node: HttpNodeView, sv: StreamView) {
  const s = sv.stream;
  const a = s.replicas.aggregates();
  return {
    ...memberStatusJson(node, s),
    storage_error: s.storageError,
    // Set while commit_lsn is not known yet after a crash: what a quorum must flush before it is reported again.
    commit_lsn_unknown_below: lsn(s.commitUnknownBelow),
    cluster: membersJson(sv.quorum, s),
    upstream: upstreamJson(sv.ingest, s),
    offload: offloadJson(sv.offloader, s),
    replicas: s.replicas.list().map(replicaJson),
    replica_aggregates: {
      count: a.count,
      min_write_lsn: lsn(a.minWriteLsn),
      min_flush_lsn: lsn(a.minFlushLsn),
      min_apply_lsn: lsn(a.minApplyLsn),
      min_xmin: a.minXmin === null ? null : a.minXmin.toString(),
      min_catalog_xmin: a.minCatalogXmin === null ? null : a.minCatalogXmin.toString(),
      max_remote_consistent_lsn: lsn(a.maxRemoteConsistentLsn),
    },
    slots: [...s.slots.values()].map((sl) => ({
      name: sl.name,
      restart_lsn: sl.restartLsn === 0n ? null : formatLsn(sl.restartLsn),
      tli: sl.tli,
      temporary: sl.temporary,
      active: sl.activeBy !== null,
    })),
  };
}

/** A stream that exists only as its upstream's ingest so far: its first connection creates it. */
function pendingStreamJson(node: HttpNodeView, name: string, ingest: Ingest) {
  return {
    name,
    state: 'pending',
    node_id: node.nodeId,
    system_id: null,
    tli: null,
    flush_lsn: null,
    commit_lsn: null,
    oldest_lsn: null,
    upstream: upstreamJson(ingest, null),
    cluster: null,
    offload: null,
    replicas: [],
    slots: [],
  };
}

/** Reads a JSON request body (at most 64 KiB); an empty body is {}. */
function readJson(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > 65536) {
        reject(new Error('the request body is larger than 64 KiB'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').trim();
      if (text === '') return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch (e) {
        reject(new Error(`the request body is not valid JSON: ${(e as Error).message}`));
      }
    });
    req.on('error', reject);
  });
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * `GET /v1/streams/<name>/wal/<file>`: a segment or history file under
 * PostgreSQL's name, for `walkeeper fetch` (a restore_command). Only WAL at
 * or below commit_lsn leaves the node: a segment that commit_lsn has not
 * passed yet is 404, or with `?partial=1` its bytes up to commit_lsn (the
 * reader pads them with zeros, as PostgreSQL pads a `.partial`). The
 * headers say whose WAL it is, so that the reader checks it before use.
 */
function serveWalFile(res: http.ServerResponse, s: Stream, name: string, partial: boolean): void {
  const f = parseWalFileName(name);
  if (f?.kind === 'history') {
    void s.historyFile(f.tli).then(
      (text) => {
        if (text === null) return send(res, 404, { error: `stream ${s.name} has no ${name}` });
        const body = Buffer.from(text, 'utf8');
        res.writeHead(200, { ...walHeaders(s), 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length });
        res.end(body);
      },
      (err: Error) => send(res, 500, { error: `stream ${s.name}: ${name}: ${err.message}` }),
    );
    return;
  }
  if (f?.kind !== 'segment') return send(res, 400, { error: `${JSON.stringify(name)} is not a WAL segment or timeline history file name` });
  const segno = segnoOf(f, s.segmentSize);
  if (segno === null) return send(res, 400, { error: `${name} is not a segment name for ${s.segmentSize}-byte segments` });
  const r = s.readableSegment(f.tli, segno);
  if (r === null) return send(res, 404, { error: `stream ${s.name} holds no committed WAL of ${name} here` });
  if (!r.complete && !partial) return send(res, 404, { error: `${name} is not complete below commit_lsn ${formatLsn(s.commitLsn)} (ask with ?partial=1 for what is)` });
  const length = Number(r.end - r.start);
  void openFirst(r.paths).then(
    (fh) => {
      if (fh === null) return send(res, 404, { error: `stream ${s.name}: ${name} was removed` });
      res.writeHead(200, { ...walHeaders(s), 'content-type': 'application/octet-stream', 'content-length': length, 'x-walkeeper-end-lsn': formatLsn(r.end) });
      // (read on the thread pool, the file handle kept open: retention may unlink it meanwhile)
      const rs = fh.createReadStream({ start: 0, end: length - 1 });
      rs.on('error', () => res.destroy());
      res.on('close', () => rs.destroy());
      rs.pipe(res);
    },
    (err: Error) => send(res, 500, { error: `stream ${s.name}: ${name}: ${err.message}` }),
  );
}

function walHeaders(s: Stream): Record<string, string> {
  return {
    'cache-control': 'no-store',
    'x-walkeeper-stream': s.name,
    'x-walkeeper-system-id': s.systemId.toString(),
    'x-walkeeper-pg-version': String(s.pgVersion),
    'x-walkeeper-segment-size': String(s.segmentSize),
    'x-walkeeper-commit-lsn': formatLsn(s.commitLsn),
  };
}

async function openFirst(paths: string[]): Promise<FileHandle | null> {
  for (const p of paths) {
    try {
      return await open(p, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return null;
}

export function createHttpServer(node: HttpNodeView): http.Server {
  return http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const method = req.method ?? 'GET';
    try {
      if (parts.length === 1 && parts[0] === 'healthz') {
        if (method !== 'GET') return send(res, 405, { error: `${method} not allowed` });
        return send(res, 200, { status: 'ok', node_id: node.nodeId, streams: node.streams.size });
      }
      if (parts.length === 0) {
        if (method !== 'GET') return send(res, 405, { error: `${method} not allowed` });
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(STATUS_PAGE) });
        res.end(STATUS_PAGE);
        return;
      }
      if (parts.length === 1 && parts[0] === 'metrics') {
        if (method !== 'GET') return send(res, 405, { error: `${method} not allowed` });
        void node.metrics.text().then(
          (text) => {
            res.writeHead(200, { 'content-type': node.metrics.contentType, 'cache-control': 'no-store' });
            res.end(text);
          },
          (err: Error) => send(res, 500, { error: err.message }),
        );
        return;
      }
      if (parts[0] === 'v1' && parts[1] === 'streams') {
        if (parts.length === 2) {
          if (method !== 'GET') return send(res, 405, { error: `${method} not allowed` });
          const watch = url.searchParams.get('watch');
          if (watch === 'peers') {
            return servePeerWatch(res, { streams: () => [...node.streams.values()].map((sv) => sv.stream), status: (s) => memberStatusJson(node, s) }, parseFlushParam(url.searchParams.get('flush')));
          }
          if (watch !== null) return send(res, 400, { error: `watch must be peers here, not ${JSON.stringify(watch)}` });
          return send(res, 200, [...[...node.streams.values()].map((sv) => streamJson(node, sv)), ...node.pendingStreams().map((p) => pendingStreamJson(node, p.name, p.ingest))]);
        }
        // Changes need the bearer token (or, without one configured, a loopback caller); reads stay open.
        if (method !== 'GET' && method !== 'HEAD' && !node.authorize(req.headers.authorization, req.socket.remoteAddress)) {
          res.setHeader('www-authenticate', 'Bearer realm="walkeeper"');
          return send(res, 401, { error: `${method} ${url.pathname} needs the node's bearer token (Authorization: Bearer …, see --http-token-file)` });
        }
        if (parts.length === 3 && (method === 'PUT' || method === 'DELETE')) {
          const name = parts[2]!;
          const purge = url.searchParams.get('purge');
          if (method === 'DELETE' && purge !== null && purge !== 'true' && purge !== 'false') return send(res, 400, { error: `purge must be true or false, not ${JSON.stringify(purge)}` });
          const done = method === 'PUT' ? readJson(req).then((body) => node.putStream(name, body)) : node.deleteStream(name, purge === 'true');
          void done.then(
            (r) => send(res, r.status, r.body),
            (err: Error) => send(res, /request body/.test(err.message) ? 400 : 500, { error: err.message }),
          );
          return;
        }
        const pending = node.pendingStreams().find((p) => p.name === parts[2]);
        // (404 still: a stream that waits for its upstream has no status a peer or receiver could use)
        if (pending && parts.length === 3 && method === 'GET') return send(res, 404, { error: `stream "${pending.name}" does not exist yet: it is created when its upstream first answers`, pending: pendingStreamJson(node, pending.name, pending.ingest) });
        const sv = node.streams.get(parts[2]!);
        if (!sv) return send(res, 404, { error: `stream "${parts[2]}" does not exist` });
        const s = sv.stream;
        if (parts.length === 3 && method === 'GET') {
          const watch = url.searchParams.get('watch');
          if (watch === null) return send(res, 200, streamJson(node, sv));
          if (watch !== 'flush' && watch !== 'heartbeat') return send(res, 400, { error: `watch must be flush or heartbeat, not ${JSON.stringify(watch)}` });
          // A peer (the embedded broker) following our status: one line of
          // JSON (the member status) now, then one every 250 ms as a
          // heartbeat, and with watch=flush also one the moment flush_lsn
          // moves. A held-open response saves the peer a request per flush,
          // which a synchronous commit waiting on the quorum would feel; a
          // peer with no client waiting on commit_lsn asks for the heartbeat
          // only — and a line when flush_lsn enters a new segment: the
          // offloader uploads a segment once commit_lsn passes its end, and
          // would otherwise learn of it up to a heartbeat late (a quarter
          // second of WAL behind at the end of every burst), for the cost of
          // one line per segment.
          //
          // The line is written from inside the flush notification and
          // leaves at once (uncork), so that on a node whose ingest then
          // acknowledges the flush upstream, the peers hear of it first:
          // their commit_lsn waits on it, and the 'r' to the primary would
          // otherwise wake the walsender and be preempted by it on a busy
          // machine.
          res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
          let backlogged = false;
          let heartbeat: NodeJS.Timeout | undefined;
          const push = (): void => {
            clearTimeout(heartbeat);
            if (res.destroyed || backlogged) return;
            heartbeat = setTimeout(push, 250);
            if (!res.write(`${JSON.stringify(memberStatusJson(node, s))}\n`)) {
              backlogged = true;
              res.once('drain', () => {
                backlogged = false;
                push();
              });
            }
            res.socket?.uncork();
          };
          const seg = BigInt(s.segmentSize);
          let pushedSeg = s.flushLsn / seg;
          const unlisten = s.flushWatch.listen((lsn) => {
            if (watch === 'flush') return push();
            if (lsn / seg === pushedSeg) return;
            pushedSeg = lsn / seg;
            push();
          });
          s.followedBy[watch]++;
          // A deleted stream's followers are let go; their next request gets 404.
          const deleted = () => res.end();
          s.once('deleted', deleted);
          res.on('close', () => {
            s.followedBy[watch]--;
            s.off('deleted', deleted);
            unlisten();
            clearTimeout(heartbeat);
          });
          push();
          return;
        }
        if (parts.length === 4 && method === 'GET' && parts[3] === 'history') {
          return send(res, 200, sv.history.list().map((x) => ({ ...x, flushLsn: formatLsn(x.flushLsn), commitLsn: formatLsn(x.commitLsn) })));
        }
        if (parts.length === 5 && parts[3] === 'wal') {
          if (method !== 'GET') return send(res, 405, { error: `${method} not allowed` });
          return serveWalFile(res, s, parts[4]!, url.searchParams.get('partial') === '1');
        }
        if (parts.length === 4 && method === 'POST' && parts[3] === 'suspend') {
          s.suspend('suspended over HTTP');
          return send(res, 200, streamJson(node, sv));
        }
        if (parts.length === 4 && method === 'POST' && parts[3] === 'resume') {
          s.resume();
          return send(res, 200, streamJson(node, sv));
        }
        return send(res, parts.length <= 4 ? 405 : 404, { error: `${method} ${url.pathname} is not supported` });
      }
      return send(res, 404, { error: `no such endpoint: ${url.pathname}` });
    } catch (err) {
      return send(res, 500, { error: (err as Error).message });
    }
  });
}
