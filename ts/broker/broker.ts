/**
 * How the nodes of a stream learn each other's status (flush_lsn above all,
 * which commit_lsn is computed from). Two kinds behind one interface:
 *
 *   embedded (default, `--peers <http-url,…>`): each node asks its peers'
 *     HTTP `GET /v1/streams/<name>`; the request waits (up to 250 ms) for the
 *     peer's flush_lsn to pass what was last seen, so a flush reaches the
 *     other members in one loopback round trip instead of a polling period.
 *   etcd (`--broker <endpoints>`): each node puts its status under
 *     `walkeeper/<stream>/nodes/<node-id>` with a 10 s lease and watches the
 *     prefix; membership is `walkeeper/<stream>/members/<node-id>`, written
 *     without a lease, so a member that dies still counts towards the
 *     quorum size.
 */
import type { Lsn } from '../lsn.js';
import type { NodeStatus } from '../receiver/sources.js';

export interface BrokerStream {
  readonly name: string;
  readonly flushLsn: Lsn;
  /** This node's status as published (the HTTP member fields). */
  status(): Record<string, unknown>;
}

export interface BrokerListener {
  /** The other members of the stream (keys), when the broker learns them. */
  members(keys: string[]): void;
  /** A status heard for another member (parsed, not yet checked against the stream). */
  status(s: NodeStatus): void;
}

export interface Broker {
  readonly kind: 'embedded' | 'etcd';
  /** The other members known before anything is heard (embedded: the peer URLs), or null when the broker must tell. */
  readonly initialMembers: readonly string[] | null;
  /** Starts exchanging status for `stream`; returns the function that stops it. */
  attach(stream: BrokerStream, listener: BrokerListener): () => void;
  /** This node's status for `stream` changed: publish it soon (coalesced). */
  changed(stream: string): void;
  close(): Promise<void>;
}

export const STATUS_WAIT_MS = 250;
export const PEER_RETRY_MS = 250;
