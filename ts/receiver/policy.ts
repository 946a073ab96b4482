/**
 * The receiver's connection manager, pure: which node to stream WAL from and
 * when to switch. No I/O, no timers, no clock: every method that depends on
 * time takes `now` (ms). The I/O shell (receiver.ts) feeds it candidate
 * status, the events of its one connection, asks `decide(now)` and sleeps
 * until `nextDecisionAt(now)`.
 *
 * The rules are those of Neon's pageserver walreceiver
 * (`connection_manager.rs`: next_connection_candidate,
 * select_connection_candidate, drop_old_connection), with its known bugs kept
 * fixed:
 *
 * - the current node's commit LSN comes only from its own messages, and a
 *   walEnd of 0/0 is ignored (a 0/0 keepalive made Neon switch away with
 *   `LaggingWal { current_commit_lsn: 0/0 }`); LaggingWal and
 *   SwitchAvailabilityZone are skipped while it is unknown;
 * - no sleep before a connection: cooldown is a property of a candidate
 *   (`nextRetryAt`), checked when choosing one, and only nodes that already
 *   failed have one;
 * - NoKeepAlives counts from the latest of connection start, establishment
 *   and last message, so a fresh connection is never dropped at once;
 * - candidates are never filtered by an attempt counter.
 *
 * Where this differs from Neon on purpose:
 * - thresholds fire at exactly the threshold (Neon: strictly after, for
 *   NoKeepAlives and NoWalTimeout);
 * - NoKeepAlives with no other eligible candidate reconnects to the current
 *   node (once its own cooldown allows); Neon then does nothing at all and
 *   waits for the dead connection to end by itself;
 * - SwitchAvailabilityZone considers the best candidate *in our zone*, not
 *   only the overall best one (Neon switches only when the overall best,
 *   an arbitrary one among equals, happens to be in our zone);
 * - ties are broken deterministically (our zone, the node we are/were on,
 *   node id) where Neon takes whatever its HashMap yields.
 */
import { formatLsn, type Lsn } from '../lsn.js';

export interface PolicyConfig {
  /** Neon wal_connect_timeout: the longest silence (no message) on a connection. */
  connectTimeoutMs: number;
  /** Neon lagging_wal_timeout: no WAL for this long while another node has more → switch; also forgets silent candidates. */
  laggingWalTimeoutMs: number;
  /** Neon max_lsn_wal_lag: a candidate this far ahead of the current node's commit LSN → switch at once. */
  maxLsnWalLag: bigint;
  retryMinMs: number;
  retryMaxMs: number;
  retryMultiplier: number;
  /** Our availability zone; candidates in it are preferred. */
  availabilityZone: string | null;
}

export const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  connectTimeoutMs: 10_000,
  laggingWalTimeoutMs: 10_000,
  maxLsnWalLag: 1n << 30n,
  retryMinMs: 100,
  retryMaxMs: 15_000,
  retryMultiplier: 1.5,
  availabilityZone: null,
});

export interface CandidateStatus {
  nodeId: string;
  commitLsn: Lsn;
  pgAddress: string;
  availabilityZone: string | null;
}

/**
 * Why the policy asks for a (re)connection; Neon's ReconnectReason. The
 * optional `candidateNodeId` (always filled in by the policy) names the node
 * to connect to, for describeReason.
 */
export type SwitchReason =
  | { kind: 'NoExistingConnection'; candidateNodeId?: string }
  | { kind: 'NoKeepAlives'; lastKeepAlive: number | null; checkTime: number; threshold: number; candidateNodeId?: string }
  | { kind: 'LaggingWal'; currentCommitLsn: Lsn; newCommitLsn: Lsn; threshold: bigint; candidateNodeId?: string }
  | { kind: 'SwitchAvailabilityZone'; candidateNodeId?: string; availabilityZone?: string }
  | {
      kind: 'NoWalTimeout';
      currentLsn: Lsn;
      currentCommitLsn: Lsn;
      candidateCommitLsn: Lsn;
      lastWalInteraction: number | null;
      checkTime: number;
      threshold: number;
      candidateNodeId?: string;
    };

export type Decision = { action: 'none' } | { action: 'connect'; candidate: CandidateStatus; reason: SwitchReason };

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  const neg = ms < 0;
  const a = Math.abs(ms);
  let s: string;
  if (a < 1000) s = `${Math.round(a * 1000) / 1000} ms`;
  else s = `${Math.round(a) / 1000} s`;
  return neg ? `-${s}` : s;
}

export function formatBytes(n: bigint): string {
  const units: [bigint, string][] = [
    [1n << 40n, 'TiB'],
    [1n << 30n, 'GiB'],
    [1n << 20n, 'MiB'],
    [1n << 10n, 'KiB'],
  ];
  for (const [size, name] of units) {
    if (n >= size) {
      if (n % size === 0n) return `${n / size} ${name}`;
      // Two decimals are plenty for a threshold in a log line.
      const hundredths = (n * 100n) / size;
      const text = `${hundredths / 100n}.${(hundredths % 100n).toString().padStart(2, '0')}`.replace(/\.?0+$/, '');
      return `${text} ${name}`;
    }
  }
  return `${n} bytes`;
}

const nodeName = (id: string | undefined): string => (id === undefined ? 'the candidate' : `node ${id}`);

/** One readable line: LSNs as X/X, durations in ms or s, sizes in KiB/MiB/GiB. */
export function describeReason(r: SwitchReason): string {
  switch (r.kind) {
    case 'NoExistingConnection':
      return `NoExistingConnection: not connected, connecting to ${nodeName(r.candidateNodeId)}`;
    case 'NoKeepAlives': {
      const silence =
        r.lastKeepAlive === null
          ? 'no message received on the current connection'
          : `last message ${formatDuration(r.checkTime - r.lastKeepAlive)} ago`;
      return `NoKeepAlives: ${silence}, threshold ${formatDuration(r.threshold)}; switching to ${nodeName(r.candidateNodeId)}`;
    }
    case 'LaggingWal':
      return (
        `LaggingWal: current node at ${formatLsn(r.currentCommitLsn)}, ${nodeName(r.candidateNodeId)} at ${formatLsn(r.newCommitLsn)}, ` +
        `threshold ${formatBytes(r.threshold)}`
      );
    case 'SwitchAvailabilityZone':
      return (
        `SwitchAvailabilityZone: ${nodeName(r.candidateNodeId)} is in our availability zone` +
        `${r.availabilityZone === undefined ? '' : ` ${r.availabilityZone}`} and has all the WAL the current node has`
      );
    case 'NoWalTimeout': {
      const quiet =
        r.lastWalInteraction === null
          ? 'no WAL received on the current connection'
          : `no WAL for ${formatDuration(r.checkTime - r.lastWalInteraction)}`;
      return (
        `NoWalTimeout: received up to ${formatLsn(r.currentLsn)}, current node at ${formatLsn(r.currentCommitLsn)}, ` +
        `${nodeName(r.candidateNodeId)} at ${formatLsn(r.candidateCommitLsn)}, ${quiet}, threshold ${formatDuration(r.threshold)}`
      );
    }
  }
}

interface CandidateEntry extends CandidateStatus {
  updatedAt: number;
}

interface RetryInfo {
  /** Not eligible before this time (null: never failed since the entry was made). */
  nextRetryAt: number | null;
  /** The cooldown the next failure gets (fractional ms; nextRetryAt truncates, as Neon does). */
  durationMs: number;
}

interface Connection {
  nodeId: string;
  startedAt: number;
  establishedAt: number | null;
  lastMessageAt: number | null;
  lastWalAt: number | null;
  /** The node's commit LSN as its own messages report it; null until a non-zero one arrived. */
  commitLsn: Lsn | null;
  /** lastReceivedLsn when the connection started (refreshed when established): progress is measured against it. */
  startLsn: Lsn;
  availabilityZone: string | null;
  /** Neon's discovered_new_wal: another node has WAL up to `lsn` that the current one had not, noticed at `at`. */
  discovered: { lsn: Lsn; at: number } | null;
}

export interface ConnectionInfo {
  nodeId: string;
  startedAt: number;
  establishedAt: number | null;
  lastMessageAt: number | null;
  lastWalAt: number | null;
  commitLsn: Lsn | null;
  startLsn: Lsn;
  availabilityZone: string | null;
  /** When another node was first seen to have WAL the current one lacks (NoWalTimeout counts from here at the earliest). */
  newWalDiscoveredAt: number | null;
}

export type CandidateInfo = CandidateStatus & { updatedAt: number; nextRetryAt: number | null; retryDurationMs: number | null };

/** Numeric ids in numeric order, others as strings; deterministic either way. */
function compareNodeIds(a: string, b: string): number {
  const da = /^\d+$/.test(a);
  const db = /^\d+$/.test(b);
  if (da && db) {
    const x = BigInt(a);
    const y = BigInt(b);
    if (x !== y) return x < y ? -1 : 1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

export class ConnectionPolicy {
  readonly config: PolicyConfig;
  /** The receiver's own position (last WAL byte received + 1); set at start, advanced by walReceived. */
  lastReceivedLsn: Lsn = 0n;

  private readonly cands = new Map<string, CandidateEntry>();
  private readonly retries = new Map<string, RetryInfo>();
  private conn: Connection | null = null;
  /** The node of the last connection, preferred among equals when reconnecting. */
  private lastNodeId: string | null = null;

  constructor(cfg?: Partial<PolicyConfig>) {
    const c: PolicyConfig = { ...DEFAULT_POLICY };
    for (const [k, v] of Object.entries(cfg ?? {})) if (v !== undefined) (c as unknown as Record<string, unknown>)[k] = v;
    if (!(c.retryMinMs >= 0) || !(c.retryMaxMs >= c.retryMinMs) || !(c.retryMultiplier >= 1))
      throw new RangeError(`bad retry settings: min ${c.retryMinMs} ms, max ${c.retryMaxMs} ms, multiplier ${c.retryMultiplier}`);
    if (!(c.connectTimeoutMs > 0) || !(c.laggingWalTimeoutMs > 0)) throw new RangeError('timeouts must be positive');
    if (c.maxLsnWalLag <= 0n) throw new RangeError('maxLsnWalLag must be positive');
    this.config = Object.freeze(c);
  }

  // ---------------------------------------------------------------- candidates

  /** A status poll/broker update; remembers `now` as the candidate's updatedAt. commitLsn 0 is kept but never chosen. */
  updateCandidate(s: CandidateStatus, now: number): void {
    this.cands.set(s.nodeId, {
      nodeId: s.nodeId,
      commitLsn: s.commitLsn,
      pgAddress: s.pgAddress,
      availabilityZone: s.availabilityZone,
      updatedAt: now,
    });
    if (this.conn && this.conn.nodeId === s.nodeId) this.conn.availabilityZone = s.availabilityZone;
  }

  /** Forgets a candidate and its retry info (the current connection, if to it, is left alone). */
  removeCandidate(nodeId: string): void {
    this.cands.delete(nodeId);
    this.retries.delete(nodeId);
  }

  // ---------------------------------------------------------------- the connection

  /** Begins a connection attempt to nodeId; it becomes the current one (a previous one still current is ended first). */
  connectionStarted(nodeId: string, now: number): void {
    if (this.conn) this.connectionEnded(now);
    this.conn = {
      nodeId,
      startedAt: now,
      establishedAt: null,
      lastMessageAt: null,
      lastWalAt: null,
      commitLsn: null,
      startLsn: this.lastReceivedLsn,
      availabilityZone: this.cands.get(nodeId)?.availabilityZone ?? null,
      discovered: null,
    };
    this.lastNodeId = nodeId;
  }

  /** The copy started. The receiver sets lastReceivedLsn to the streaming start first; progress counts from there. */
  connectionEstablished(now: number): void {
    const c = this.conn;
    if (!c || c.establishedAt !== null) return;
    c.establishedAt = now;
    c.startLsn = this.lastReceivedLsn;
  }

  /**
   * XLogData with data: `endLsn` = end of the received data, `walEnd` = the
   * message's walEnd (the node's commit_lsn). An empty XLogData is a
   * keepalive for the policy (call keepaliveReceived).
   */
  walReceived(endLsn: Lsn, walEnd: Lsn, now: number): void {
    if (endLsn > this.lastReceivedLsn) this.lastReceivedLsn = endLsn;
    const c = this.conn;
    if (!c) return;
    c.lastMessageAt = now;
    c.lastWalAt = now;
    // The node has at least what it just sent; walEnd 0/0 says nothing.
    const known = walEnd !== 0n ? walEnd : (c.commitLsn ?? 0n);
    const commit = known > endLsn ? known : endLsn;
    if (commit !== 0n) c.commitLsn = commit;
  }

  keepaliveReceived(walEnd: Lsn, now: number): void {
    const c = this.conn;
    if (!c) return;
    c.lastMessageAt = now;
    // A 0/0 keepalive (a sender that had not loaded its position yet) must not make the node look empty.
    if (walEnd !== 0n) c.commitLsn = walEnd;
  }

  /**
   * The current connection is over (any reason). Retry bookkeeping for its
   * node, as Neon's drop_old_connection: nextRetryAt = connection start +
   * duration, then duration = clamp(duration × multiplier); when the
   * connection advanced lastReceivedLsn the node's entry is removed instead.
   * No-op without a current connection.
   */
  connectionEnded(_now: number): void {
    const c = this.conn;
    if (!c) return;
    this.conn = null;
    if (this.lastReceivedLsn > c.startLsn) this.retries.delete(c.nodeId);
    else this.scheduleRetry(c.nodeId, c.startedAt);
  }

  /**
   * The node misbehaved (bad WAL, other system id, ...): end the connection if
   * it is the current one, and put the node on cooldown like a failed
   * connection without the progress reset. The cooldown counts from `now`,
   * not from the connection start: the misbehaviour is seen now, and a
   * long-lived connection would otherwise get no cooldown at all.
   */
  markBad(nodeId: string, now: number): void {
    if (this.conn && this.conn.nodeId === nodeId) this.conn = null;
    this.scheduleRetry(nodeId, now);
  }

  private scheduleRetry(nodeId: string, from: number): void {
    const { retryMinMs, retryMaxMs, retryMultiplier } = this.config;
    let r = this.retries.get(nodeId);
    if (!r) {
      r = { nextRetryAt: null, durationMs: retryMinMs };
      this.retries.set(nodeId, r);
    }
    r.nextRetryAt = from + Math.trunc(r.durationMs);
    r.durationMs = Math.max(retryMinMs, Math.min(retryMaxMs, r.durationMs * retryMultiplier));
  }

  // ---------------------------------------------------------------- the decision

  private forgetSilent(now: number): void {
    for (const [id, c] of this.cands) {
      if (now - c.updatedAt >= this.config.laggingWalTimeoutMs) {
        this.cands.delete(id);
        this.retries.delete(id);
      }
    }
  }

  private eligible(c: CandidateEntry, now: number): boolean {
    if (c.commitLsn === 0n || c.pgAddress === '') return false;
    const at = this.retries.get(c.nodeId)?.nextRetryAt ?? null;
    return at === null || at <= now;
  }

  /** -1 when a ranks before b: more WAL, our zone, the preferred node, node id. */
  private rank(a: CandidateEntry, b: CandidateEntry, prefer: string | null): number {
    if (a.commitLsn !== b.commitLsn) return a.commitLsn > b.commitLsn ? -1 : 1;
    const az = this.config.availabilityZone;
    if (az !== null) {
      const ia = a.availabilityZone === az;
      const ib = b.availabilityZone === az;
      if (ia !== ib) return ia ? -1 : 1;
    }
    if (prefer !== null && (a.nodeId === prefer) !== (b.nodeId === prefer)) return a.nodeId === prefer ? -1 : 1;
    return compareNodeIds(a.nodeId, b.nodeId);
  }

  private best(now: number, filter: (c: CandidateEntry) => boolean, prefer: string | null): CandidateEntry | null {
    let best: CandidateEntry | null = null;
    for (const c of this.cands.values()) {
      if (!this.eligible(c, now) || !filter(c)) continue;
      if (best === null || this.rank(c, best, prefer) < 0) best = c;
    }
    return best;
  }

  /** The latest of connection start, establishment and last message: NoKeepAlives counts from here. */
  private lastActivity(c: Connection): number {
    return Math.max(c.startedAt, c.establishedAt ?? -Infinity, c.lastMessageAt ?? -Infinity);
  }

  /** The cooldown the current node would get from connectionEnded now (no progress), as a time. */
  private retryAfterEnd(c: Connection): number {
    if (this.lastReceivedLsn > c.startLsn) return -Infinity;
    return c.startedAt + Math.trunc(this.retries.get(c.nodeId)?.durationMs ?? this.config.retryMinMs);
  }

  /**
   * Since when NoWalTimeout counts (null: it cannot fire): the last WAL (or
   * establishment) when the current node itself reports more than we have,
   * else the later of that and when another node was seen with more WAL.
   */
  private noWalSince(c: Connection, currentCommit: Lsn, discovered: { at: number } | null): number | null {
    const lastWal = c.lastWalAt ?? c.establishedAt ?? c.startedAt;
    if (this.lastReceivedLsn < currentCommit) return lastWal;
    if (discovered) return Math.max(discovered.at, lastWal);
    return null;
  }

  private connect(candidate: CandidateEntry, reason: SwitchReason): Decision {
    const { nodeId, commitLsn, pgAddress, availabilityZone } = candidate;
    return { action: 'connect', candidate: { nodeId, commitLsn, pgAddress, availabilityZone }, reason: { ...reason, candidateNodeId: nodeId } };
  }

  /** What to do now. Never decides on an unknown or 0/0 commit LSN of the current node. */
  decide(now: number): Decision {
    this.forgetSilent(now);
    const cfg = this.config;
    const c = this.conn;

    // 1. Not connected: the best eligible candidate, at once.
    if (!c) {
      const b = this.best(now, () => true, this.lastNodeId);
      return b ? this.connect(b, { kind: 'NoExistingConnection' }) : { action: 'none' };
    }

    const other = this.best(now, (x) => x.nodeId !== c.nodeId, null);

    // 2. Silent connection (no message, counting from start/establishment/last message).
    if (now - this.lastActivity(c) >= cfg.connectTimeoutMs) {
      let target = other;
      if (!target) {
        // Nobody else: reconnect to the same node, once the cooldown it gets from this end allows.
        const self = this.cands.get(c.nodeId);
        if (self && self.commitLsn !== 0n && self.pgAddress !== '' && this.retryAfterEnd(c) <= now) target = self;
      }
      if (target)
        return this.connect(target, {
          kind: 'NoKeepAlives',
          lastKeepAlive: c.lastMessageAt,
          checkTime: now,
          threshold: cfg.connectTimeoutMs,
        });
      return { action: 'none' };
    }

    // 3. Not yet streaming: wait (rule 2 bounds the wait).
    if (c.establishedAt === null) return { action: 'none' };

    // The remaining rules compare the current node with another one.
    if (!other) return { action: 'none' };

    // 4. and 5. need the current node's commit LSN from its own messages.
    if (c.commitLsn !== null) {
      const current = c.commitLsn;
      if (other.commitLsn >= current && other.commitLsn - current >= cfg.maxLsnWalLag)
        return this.connect(other, {
          kind: 'LaggingWal',
          currentCommitLsn: current,
          newCommitLsn: other.commitLsn,
          threshold: cfg.maxLsnWalLag,
        });
      const az = cfg.availabilityZone;
      if (az !== null && c.availabilityZone !== az) {
        const inZone = this.best(now, (x) => x.nodeId !== c.nodeId && x.availabilityZone === az, null);
        if (inZone && inZone.commitLsn >= current)
          return this.connect(inZone, { kind: 'SwitchAvailabilityZone', availabilityZone: az });
      }
    }

    // 6. Another node has WAL we lack, and the current one sent none for laggingWalTimeout.
    const currentLsn = this.lastReceivedLsn;
    const currentCommit = c.commitLsn ?? currentLsn; // unknown: what we have (Neon), never 0/0
    let discovered = c.discovered && c.discovered.lsn > currentCommit ? c.discovered : null;
    if (!discovered && other.commitLsn > currentCommit) discovered = { lsn: other.commitLsn, at: now };
    c.discovered = discovered;
    const since = this.noWalSince(c, currentCommit, discovered);
    if (
      since !== null &&
      other.commitLsn > currentCommit &&
      other.commitLsn > currentLsn &&
      now - since >= cfg.laggingWalTimeoutMs
    )
      return this.connect(other, {
        kind: 'NoWalTimeout',
        currentLsn,
        currentCommitLsn: currentCommit,
        candidateCommitLsn: other.commitLsn,
        lastWalInteraction: c.lastWalAt,
        checkTime: now,
        threshold: cfg.laggingWalTimeoutMs,
      });

    return { action: 'none' };
  }

  /**
   * The earliest time after `now` at which decide() could answer differently
   * by the passage of time alone (a cooldown ending, a timeout expiring, a
   * silent candidate being forgotten); null when only new input can change
   * it. Call decide(now) first: deadlines already due are not repeated, so an
   * I/O shell can sleep exactly until this time without spinning.
   */
  nextDecisionAt(now: number): number | null {
    const cfg = this.config;
    let next = Infinity;
    const consider = (t: number) => {
      if (t > now && t < next) next = t;
    };
    for (const cand of this.cands.values()) {
      consider(cand.updatedAt + cfg.laggingWalTimeoutMs);
      const r = this.retries.get(cand.nodeId);
      if (r?.nextRetryAt != null) consider(r.nextRetryAt);
    }
    const c = this.conn;
    if (c) {
      const silentAt = this.lastActivity(c) + cfg.connectTimeoutMs;
      consider(silentAt);
      // NoKeepAlives due but held back by the current node's own cooldown (no other candidate).
      if (silentAt <= now) consider(this.retryAfterEnd(c));
      if (c.establishedAt !== null) {
        const currentCommit = c.commitLsn ?? this.lastReceivedLsn;
        const discovered = c.discovered && c.discovered.lsn > currentCommit ? c.discovered : null;
        const since = this.noWalSince(c, currentCommit, discovered);
        if (since !== null) consider(since + cfg.laggingWalTimeoutMs);
      }
    }
    return next === Infinity ? null : next;
  }

  // ---------------------------------------------------------------- introspection

  current(): ConnectionInfo | null {
    const c = this.conn;
    if (!c) return null;
    return {
      nodeId: c.nodeId,
      startedAt: c.startedAt,
      establishedAt: c.establishedAt,
      lastMessageAt: c.lastMessageAt,
      lastWalAt: c.lastWalAt,
      commitLsn: c.commitLsn,
      startLsn: c.startLsn,
      availabilityZone: c.availabilityZone,
      newWalDiscoveredAt: c.discovered?.at ?? null,
    };
  }

  /** Known candidates in node id order, with their cooldown (nextRetryAt may lie in the past: eligible). */
  candidates(): CandidateInfo[] {
    return [...this.cands.values()]
      .sort((a, b) => compareNodeIds(a.nodeId, b.nodeId))
      .map((c) => {
        const r = this.retries.get(c.nodeId);
        return {
          nodeId: c.nodeId,
          commitLsn: c.commitLsn,
          pgAddress: c.pgAddress,
          availabilityZone: c.availabilityZone,
          updatedAt: c.updatedAt,
          nextRetryAt: r?.nextRetryAt ?? null,
          retryDurationMs: r ? r.durationMs : null,
        };
      });
  }

  /** The earliest future time a known candidate leaves its cooldown (null: none is cooling down). */
  nextEligibleAt(now: number): number | null {
    let next: number | null = null;
    for (const cand of this.cands.values()) {
      const at = this.retries.get(cand.nodeId)?.nextRetryAt ?? null;
      if (at !== null && at > now && (next === null || at < next)) next = at;
    }
    return next;
  }
}
