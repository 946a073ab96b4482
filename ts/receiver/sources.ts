/**
 * Where a receiver learns about candidate nodes. The embedded source polls
 * each node's HTTP status (`GET /v1/streams/<name>`, about every 250 ms);
 * the broker issue adds etcd behind the same interface.
 */
import { isLsn, parseLsn, type Lsn } from '../lsn.js';

export interface NodeStatus {
  /** How the receiver names the node: the URL it was given. */
  nodeId: string;
  /** The node's own id, for messages. */
  nodeNumber: number | null;
  commitLsn: Lsn;
  flushLsn: Lsn;
  pgAddress: string;
  availabilityZone: string | null;
  systemId: bigint;
  tli: number;
  segmentSize: number;
  pgVersion: number;
  /** The node's HTTP address (host:port), when it reports one. */
  httpAddress: string | null;
  /** What the node's consumers report as durable downstream, when known. */
  remoteConsistentLsn: Lsn | null;
}

export interface CandidateSource {
  start(onStatus: (s: NodeStatus) => void, onError: (nodeId: string, err: Error) => void): void;
  stop(): void;
}

/** Parses a node's `/v1/streams/<name>` JSON; throws on anything that does not fit. */
export function parseNodeStatus(nodeId: string, j: unknown): NodeStatus {
  const o = j as Record<string, unknown>;
  const lsn = (k: string): Lsn => {
    const v = o[k];
    if (typeof v !== 'string' || !isLsn(v)) throw new Error(`${k} is not an LSN`);
    return parseLsn(v);
  };
  const int = (k: string): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new Error(`${k} is not a non-negative integer`);
    return v;
  };
  if (o === null || typeof o !== 'object') throw new Error('status is not an object');
  if (typeof o.pg_address !== 'string' || !/^(\[[^\]]+\]|[^:]+):\d+$/.test(o.pg_address)) throw new Error('pg_address is not host:port');
  if (typeof o.system_id !== 'string' || !/^\d{1,20}$/.test(o.system_id)) throw new Error('system_id is not a number');
  return {
    nodeId,
    nodeNumber: typeof o.node_id === 'number' ? o.node_id : null,
    commitLsn: lsn('commit_lsn'),
    flushLsn: lsn('flush_lsn'),
    pgAddress: o.pg_address,
    availabilityZone: typeof o.availability_zone === 'string' ? o.availability_zone : null,
    systemId: BigInt(o.system_id),
    tli: int('tli'),
    segmentSize: int('segment_size'),
    pgVersion: int('pg_version'),
    httpAddress: typeof o.http_address === 'string' ? o.http_address : null,
    remoteConsistentLsn: typeof o.remote_consistent_lsn === 'string' && isLsn(o.remote_consistent_lsn) ? parseLsn(o.remote_consistent_lsn) : null,
  };
}

export class HttpStatusSource implements CandidateSource {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly inFlight = new Set<string>();

  constructor(
    private readonly urls: string[],
    private readonly stream: string,
    private readonly intervalMs = 250,
  ) {}

  start(onStatus: (s: NodeStatus) => void, onError: (nodeId: string, err: Error) => void): void {
    const poll = () => {
      for (const url of this.urls) {
        if (this.inFlight.has(url)) continue;
        this.inFlight.add(url);
        const ac = new AbortController();
        const t = setTimeout(() => ac.abort(), Math.max(1000, this.intervalMs * 4));
        fetch(`${url.replace(/\/+$/, '')}/v1/streams/${encodeURIComponent(this.stream)}`, { signal: ac.signal })
          .then(async (r) => {
            if (!r.ok) throw new Error(`HTTP ${r.status}`);
            return parseNodeStatus(url, await r.json());
          })
          .then(
            (s) => !this.stopped && onStatus(s),
            (e: Error) => !this.stopped && onError(url, e),
          )
          .finally(() => {
            clearTimeout(t);
            this.inFlight.delete(url);
          });
      }
    };
    poll();
    this.timer = setInterval(poll, this.intervalMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
  }
}
