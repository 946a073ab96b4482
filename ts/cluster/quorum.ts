/**
 * commit_lsn: the end of WAL known to be flushed on a quorum of the stream's
 * members. The arithmetic is pure (`quorumCommitLsn`); `Quorum` keeps the
 * members' last known flush positions for one stream, checks what peers
 * report, and raises the stream's commit_lsn.
 *
 * Why a member's *last known* value is enough: flush_lsn only moves forward
 * on a healthy member, so an old report is a lower bound of what that member
 * holds. When the broker goes away the values stop changing and commit_lsn
 * stops with them; it never moves on a guess.
 */
import { formatLsn, type Lsn } from '../lsn.js';
import type { NodeStatus } from '../member_status.js';
import type { Logger } from '../log.js';

/** Majority of `members` (this node included). */
export function quorumSize(members: number): number {
  if (!Number.isInteger(members) || members < 1) throw new Error(`a stream has at least one member, not ${members}`);
  return Math.floor(members / 2) + 1;
}

/**
 * min(own flush, the Q-th highest flush among all members), where members
 * never heard of count as 0/0. `others` are the last known flush positions
 * of the other members; `members` counts this node too.
 */
export function quorumCommitLsn(own: Lsn, others: readonly Lsn[], members: number): Lsn {
  if (others.length > members - 1) throw new Error(`${others.length} peers reported, but the stream has ${members} members`);
  const q = quorumSize(members);
  const all = [own, ...others];
  while (all.length < members) all.push(0n);
  all.sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
  const qth = all[q - 1]!;
  return qth < own ? qth : own;
}

/**
 * How long peers keep pushing every flush after the last client waiting on
 * commit_lsn left: a client that comes straight back (pg_receivewal
 * restarting, a receiver switching back) finds commit_lsn current.
 */
export const PROMPT_GRACE_MS = 5000;

/**
 * Whether this node wants its peers' flushes the moment they happen (the
 * stream named in the peer watch's `flush`) or a status when something
 * changed, within 250 ms, does ('heartbeat').
 * Only a client served up to commit_lsn waits on the quorum; without one,
 * commit_lsn a heartbeat old is as good, and each peer is spared a write per
 * flush and this node a wake-up per peer flush — on a machine where the
 * nodes share cores with the primary, the wake-ups are what a commit
 * through the node waits behind. Pure: the caller passes the time.
 */
export class PeerDemand {
  private clients = 0;
  private leftAt = -Infinity;

  constructor(private readonly graceMs = PROMPT_GRACE_MS) {}

  /** The number of connected clients served up to commit_lsn is now `n`. */
  setClients(n: number, now: number): void {
    if (n === 0 && this.clients > 0) this.leftAt = now;
    this.clients = n;
  }

  prompt(now: number): boolean {
    return this.clients > 0 || now - this.leftAt < this.graceMs;
  }

  /** When `prompt` turns false if no client comes; null if it will not (clients here) or already has. */
  lapsesAt(now: number): number | null {
    if (this.clients > 0) return null;
    const at = this.leftAt + this.graceMs;
    return at > now ? at : null;
  }
}

/**
 * What the quorum reads and raises of a stream. `Stream` is one; the
 * simulator (sim/) gives its own, so that the same quorum code runs on
 * simulated time, network and disk.
 */
export interface QuorumStream {
  readonly name: string;
  readonly log: Logger;
  readonly systemId: bigint;
  readonly segmentSize: number;
  readonly flushLsn: Lsn;
  readonly commitLsn: Lsn;
  setCommitLsn(lsn: Lsn): void;
}

export interface MemberView {
  /** How the broker names the member (peer URL, or etcd node id). */
  key: string;
  nodeId: number | null;
  flushLsn: Lsn | null;
  commitLsn: Lsn | null;
  pgAddress: string | null;
  httpAddress: string | null;
  oldestLsn: Lsn | null;
  backupLsn: Lsn | null;
  /** When we last heard a valid status (ms, the quorum's clock). */
  heardAt: number | null;
  /** Why the last status was ignored, if it was. */
  error: string | null;
}

export class Quorum {
  private readonly members = new Map<string, MemberView>();
  /** Set when the broker knows the membership (etcd: after the first read). */
  private membershipKnown: boolean;
  private readonly log: Logger;

  constructor(
    readonly stream: QuorumStream,
    private readonly self: { nodeId: number },
    opts: { peers: readonly string[]; membershipKnown: boolean },
    private readonly now: () => number = Date.now,
  ) {
    this.log = stream.log.child({ component: 'quorum' });
    for (const k of opts.peers) this.members.set(k, emptyMember(k));
    this.membershipKnown = opts.membershipKnown;
  }

  /** Members including this node. */
  get memberCount(): number {
    return this.members.size + 1;
  }

  get size(): number {
    return quorumSize(this.memberCount);
  }

  /** Replaces the set of other members (etcd: the keys under the stream's members prefix). */
  setMembers(keys: readonly string[]): void {
    const want = new Set(keys);
    for (const k of [...this.members.keys()]) if (!want.has(k)) this.members.delete(k);
    for (const k of want) if (!this.members.has(k)) this.members.set(k, emptyMember(k));
    if (!this.membershipKnown) this.log.info({ members: this.memberCount, quorum: quorumSize(this.memberCount) }, 'membership known');
    this.membershipKnown = true;
    this.update();
  }

  list(): MemberView[] {
    return [...this.members.values()];
  }

  /**
   * The member `key`'s last status is still current (the broker heard from
   * it, with nothing new to say about this stream): it counts as heard now.
   */
  heard(key: string): void {
    const m = this.members.get(key);
    if (m && m.heardAt !== null && m.error === null) m.heardAt = this.now();
  }

  /**
   * A status reported by (or for) another member. One from another system,
   * or with LSNs that cannot be, is ignored with a logged error: it must not
   * move commit_lsn.
   */
  onStatus(s: NodeStatus): void {
    const m = this.members.get(s.nodeId);
    if (!m) return;
    if (s.nodeNumber === this.self.nodeId) {
      // A peer list given to every node names this node too: not a peer.
      this.members.delete(s.nodeId);
      this.log.info({ peer: s.nodeId }, 'a peer address is this node itself; not counted twice');
      this.update();
      return;
    }
    const why =
      s.systemId !== this.stream.systemId
        ? `reports database system ${s.systemId}, this stream's is ${this.stream.systemId}`
        : s.commitLsn !== null && s.commitLsn > s.flushLsn
          ? `reports commit_lsn ${formatLsn(s.commitLsn)} above its flush_lsn ${formatLsn(s.flushLsn)}`
          : s.segmentSize !== this.stream.segmentSize
            ? `reports segment size ${s.segmentSize}, this stream's is ${this.stream.segmentSize}`
            : null;
    if (why !== null) {
      if (m.error !== why) this.log.error({ peer: s.nodeId, peer_node_id: s.nodeNumber }, `peer status ignored: ${why}`);
      m.error = why;
      return;
    }
    if (m.error !== null) this.log.info({ peer: s.nodeId }, 'peer status accepted again');
    m.error = null;
    m.nodeId = s.nodeNumber;
    m.flushLsn = s.flushLsn;
    m.commitLsn = s.commitLsn;
    m.pgAddress = s.pgAddress;
    m.httpAddress = s.httpAddress ?? null;
    m.oldestLsn = s.oldestLsn;
    m.backupLsn = s.backupLsn;
    m.heardAt = this.now();
    this.update();
  }

  /** Recomputes commit_lsn (after this node flushed, or a peer reported). Never lowers it. */
  update(): void {
    const s = this.stream;
    if (!this.membershipKnown) return;
    const others = [...this.members.values()].map((m) => m.flushLsn ?? 0n);
    const c = quorumCommitLsn(s.flushLsn, others, this.memberCount);
    if (c > s.commitLsn) s.setCommitLsn(c);
  }
}

function emptyMember(key: string): MemberView {
  return { key, nodeId: null, flushLsn: null, commitLsn: null, pgAddress: null, httpAddress: null, oldestLsn: null, backupLsn: null, heardAt: null, error: null };
}
