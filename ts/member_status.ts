/**
 * The status document a node publishes for each stream (`GET
 * /v1/streams/<name>`, a peer's `?watch=` lines, the value under
 * `walkeeper/<stream>/nodes/<id>` in etcd), as the other members and the
 * receivers read it. Written by the HTTP room (memberStatusJson); read here,
 * strictly, because a node that reports nonsense must not move anyone's
 * commit_lsn or become a receiver's candidate.
 */
import { isLsn, parseLsn, type Lsn } from './lsn.js';

export interface NodeStatus {
  /** How the receiver names the node: the URL it was given. */
  nodeId: string;
  /** The node's own id, for messages. */
  nodeNumber: number | null;
  /** null: the node does not know it yet after a restart (it reports none rather than less than before). */
  commitLsn: Lsn | null;
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
  /** Oldest WAL the node holds locally (null: none, or not reported). */
  oldestLsn: Lsn | null;
  /** End of the WAL the node knows is in object storage (null: nothing, or no remote storage). */
  backupLsn: Lsn | null;
}

/** Parses a node's `/v1/streams/<name>` JSON; throws on anything that does not fit. */
export function parseNodeStatus(nodeId: string, j: unknown): NodeStatus {
  const o = j as Record<string, unknown>;
  const lsn = (k: string): Lsn => {
    const v = o[k];
    if (typeof v !== 'string' || !isLsn(v)) throw new Error(`${k} is not an LSN`);
    return parseLsn(v);
  };
  /** Absent or null is null; anything else must be an LSN (a peer's backup_lsn moves what others may remove). */
  const optLsn = (k: string): Lsn | null => (o[k] === undefined || o[k] === null ? null : lsn(k));
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
    commitLsn: optLsn('commit_lsn'),
    flushLsn: lsn('flush_lsn'),
    pgAddress: o.pg_address,
    availabilityZone: typeof o.availability_zone === 'string' ? o.availability_zone : null,
    systemId: BigInt(o.system_id),
    tli: int('tli'),
    segmentSize: int('segment_size'),
    pgVersion: int('pg_version'),
    httpAddress: typeof o.http_address === 'string' ? o.http_address : null,
    remoteConsistentLsn: optLsn('remote_consistent_lsn'),
    oldestLsn: optLsn('oldest_lsn'),
    backupLsn: optLsn('backup_lsn'),
  };
}
