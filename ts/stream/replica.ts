/**
 * Replicas: the consumers connected to a stream and what they report. Each
 * sender registers one when it starts and removes it on every exit path (a
 * `try/finally` around the connection, as Neon's guard object does), so the
 * aggregates below never count a client that is gone.
 */
import type { Lsn } from '../lsn.js';

export type ReplicaState = 'catchup' | 'streaming' | 'stopping';

export interface ReplicaFeedback {
  /** From 'r' standby status updates. */
  writeLsn: Lsn;
  flushLsn: Lsn;
  applyLsn: Lsn;
  replyTime: bigint | null;
  /** From 'h' hot standby feedback (0 = not set). */
  xmin: number;
  xminEpoch: number;
  catalogXmin: number;
  catalogXminEpoch: number;
  /** From Neon-style 'z' feedback. */
  lastReceivedLsn: Lsn;
  diskConsistentLsn: Lsn;
  remoteConsistentLsn: Lsn;
  currentTimelineSize: bigint;
}

export interface ReplicaInfo {
  applicationName: string;
  address: string;
  recovery: boolean;
  slot: string | null;
  tli: number;
  startLsn: Lsn;
}

export class Replica {
  readonly id: number;
  readonly info: ReplicaInfo;
  readonly connectedAt = new Date();
  state: ReplicaState = 'catchup';
  sentLsn: Lsn;
  lastFeedbackAt: Date | null = null;
  lastMessageAt = Date.now();
  feedback: ReplicaFeedback = {
    writeLsn: 0n,
    flushLsn: 0n,
    applyLsn: 0n,
    replyTime: null,
    xmin: 0,
    xminEpoch: 0,
    catalogXmin: 0,
    catalogXminEpoch: 0,
    lastReceivedLsn: 0n,
    diskConsistentLsn: 0n,
    remoteConsistentLsn: 0n,
    currentTimelineSize: 0n,
  };

  constructor(id: number, info: ReplicaInfo) {
    this.id = id;
    this.info = info;
    this.sentLsn = info.startLsn;
  }

  /** "app@address", how logs and errors name this client. */
  get name(): string {
    return `${this.info.applicationName || 'unnamed'}@${this.info.address}`;
  }
}

export interface ReplicaAggregates {
  count: number;
  /** Lowest valid write/flush/apply among replicas that reported one. */
  minWriteLsn: Lsn | null;
  minFlushLsn: Lsn | null;
  minApplyLsn: Lsn | null;
  /** Oldest valid xmin / catalog_xmin as full transaction ids (epoch << 32 | xid). */
  minXmin: bigint | null;
  minCatalogXmin: bigint | null;
  maxRemoteConsistentLsn: Lsn | null;
}

const clientName = (r: Replica): string => `${r.info.applicationName || 'unnamed'}@${r.info.address.replace(/:\d+$/, '')}`;

const fullXid = (epoch: number, xid: number) => (BigInt(epoch) << 32n) | BigInt(xid);

/** What a departed replica last reported, kept so that WAL it will ask for again is retained for a while. */
export interface DepartedReplica {
  name: string;
  /** Its last reported flush (or where it started, if it never reported one). */
  lsn: Lsn;
  leftAt: number;
}

/** The position a replica still needs: its reported flush, or where it started before it reported one. */
export function neededLsn(r: Replica): Lsn {
  return r.feedback.flushLsn !== 0n ? r.feedback.flushLsn : r.info.startLsn;
}

export class ReplicaRegistry {
  private next = 1;
  private readonly replicas = new Map<number, Replica>();
  /** By client name (application_name@host): a reconnect comes from another port. */
  private readonly departed = new Map<string, DepartedReplica>();

  private readonly listeners = new Set<() => void>();

  register(info: ReplicaInfo): Replica {
    const r = new Replica(this.next++, info);
    this.replicas.set(r.id, r);
    for (const fn of this.listeners) fn();
    return r;
  }

  unregister(r: Replica, now = Date.now()): void {
    if (!this.replicas.delete(r.id)) return;
    const name = clientName(r);
    this.departed.set(name, { name, lsn: neededLsn(r), leftAt: now });
    for (const fn of this.listeners) fn();
  }

  /** Calls `fn` after every register and unregister; returns the function that stops it. */
  listen(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Connected clients that are served up to commit_lsn (all but recovery clients). */
  get regular(): number {
    let n = 0;
    for (const r of this.replicas.values()) if (!r.info.recovery) n++;
    return n;
  }

  /**
   * Positions WAL must be kept for: every connected replica's, and those of
   * replicas that left within `windowMs` (forgotten after that).
   */
  retention(now: number, windowMs: number): { name: string; lsn: Lsn }[] {
    const out: { name: string; lsn: Lsn }[] = [];
    const live = new Set<string>();
    for (const r of this.replicas.values()) {
      live.add(clientName(r));
      out.push({ name: clientName(r), lsn: neededLsn(r) });
    }
    for (const [k, d] of this.departed) {
      if (now - d.leftAt > windowMs) this.departed.delete(k);
      else if (!live.has(k)) out.push({ name: d.name, lsn: d.lsn });
    }
    return out;
  }

  get size(): number {
    return this.replicas.size;
  }

  list(): Replica[] {
    return [...this.replicas.values()];
  }

  aggregates(): ReplicaAggregates {
    const a: ReplicaAggregates = {
      count: this.replicas.size,
      minWriteLsn: null,
      minFlushLsn: null,
      minApplyLsn: null,
      minXmin: null,
      minCatalogXmin: null,
      maxRemoteConsistentLsn: null,
    };
    const min = (cur: bigint | null, v: bigint) => (cur === null || v < cur ? v : cur);
    for (const r of this.replicas.values()) {
      const f = r.feedback;
      if (f.writeLsn !== 0n) a.minWriteLsn = min(a.minWriteLsn, f.writeLsn);
      if (f.flushLsn !== 0n) a.minFlushLsn = min(a.minFlushLsn, f.flushLsn);
      if (f.applyLsn !== 0n) a.minApplyLsn = min(a.minApplyLsn, f.applyLsn);
      if (f.xmin !== 0) a.minXmin = min(a.minXmin, fullXid(f.xminEpoch, f.xmin));
      if (f.catalogXmin !== 0) a.minCatalogXmin = min(a.minCatalogXmin, fullXid(f.catalogXminEpoch, f.catalogXmin));
      if (f.remoteConsistentLsn !== 0n && (a.maxRemoteConsistentLsn === null || f.remoteConsistentLsn > a.maxRemoteConsistentLsn)) {
        a.maxRemoteConsistentLsn = f.remoteConsistentLsn;
      }
    }
    return a;
  }
}
