/**
 * How the nodes of a stream learn each other's status (flush_lsn above all,
 * which commit_lsn is computed from). Two kinds behind one interface:
 *
 *   embedded (default, `--peers <http-url,…>`): each node follows each
 *     peer's HTTP `GET /v1/streams?watch=peers`, one held-open stream of
 *     status lines for all streams (http/peer_watch.ts): a line per flush
 *     for the streams where a client waits on commit_lsn, so a flush reaches
 *     the other members in one one-way trip, not a polling period; a line
 *     when something changed for the others; nothing for an idle stream.
 *   etcd (`--broker <endpoints>`): each node puts its status under
 *     `walkeeper/<stream>/nodes/<node-id>` with a 10 s lease and watches the
 *     prefix; membership is `walkeeper/<stream>/members/<node-id>`, written
 *     without a lease, so a member that dies still counts towards the
 *     quorum size.
 */
import type { Lsn } from '../../lsn.js';
import type { NodeStatus } from '../../member_status.js';

export interface BrokerStream {
  readonly name: string;
  readonly flushLsn: Lsn;
  /** What this node wants of its peers' statuses: every flush, or a heartbeat (see PeerDemand in node/quorum.ts). */
  readonly follow: 'flush' | 'heartbeat';
  /** This node's status as published (the HTTP member fields). */
  status(): Record<string, unknown>;
}

export interface BrokerListener {
  /** The other members of the stream (keys), when the broker learns them. */
  members(keys: string[]): void;
  /** A status heard for another member (parsed, not yet checked against the stream). */
  status(s: NodeStatus): void;
  /** The member `key` is live and its last status for this stream still holds (nothing changed to report). */
  heard?(key: string): void;
}

export interface Broker {
  readonly kind: 'embedded' | 'etcd';
  /** The other members known before anything is heard (embedded: the peer URLs), or null when the broker must tell. */
  readonly initialMembers: readonly string[] | null;
  /** Starts exchanging status for `stream`; returns the function that stops it. */
  attach(stream: BrokerStream, listener: BrokerListener): () => void;
  /** This node's status for `stream` changed: publish it soon (coalesced). */
  changed(stream: string): void;
  /** `stream.follow` changed (embedded: the peers are asked again with the new watch; etcd: every put is watched anyway). */
  demandChanged(stream: string): void;
  close(): Promise<void>;
}

export const PEER_RETRY_MS = 250;

/** `--broker`: etcd endpoints, comma-separated (a missing scheme means http://). */
export function parseEtcdEndpoints(text: string): string[] {
  const hosts = text
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean)
    .map((h) => (/^[a-z]+:\/\//i.test(h) ? h : `http://${h}`));
  if (hosts.length === 0) throw new Error('--broker needs at least one etcd endpoint (http://host:port)');
  for (const h of hosts) {
    let u: URL;
    try {
      u = new URL(h);
    } catch {
      throw new Error(`--broker: ${JSON.stringify(h)} is not an etcd endpoint (expected http://host:port)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`--broker: ${JSON.stringify(h)} must be http:// or https://`);
  }
  return hosts;
}

/** `--peers`: the other members' HTTP URLs, comma-separated. */
export function parsePeerUrls(text: string): string[] {
  const urls = text
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  for (const u of urls) {
    let url: URL;
    try {
      url = new URL(u);
    } catch {
      throw new Error(`--peers: ${JSON.stringify(u)} is not a URL (expected http://host:port)`);
    }
    if (url.protocol !== 'http:') throw new Error(`--peers: ${JSON.stringify(u)} is not an http:// URL`);
  }
  return [...new Set(urls.map((u) => u.replace(/\/+$/, '')))];
}
