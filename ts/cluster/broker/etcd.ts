/**
 * The etcd broker (`--broker http://host:port,…`), on etcd v3 through the
 * `etcd3` client.
 *
 *   walkeeper/<stream>/members/<node-id>  written once, no lease: the
 *       stream's membership. A member that dies keeps counting towards the
 *       quorum size, so losing nodes can never shrink the majority needed.
 *   walkeeper/<stream>/nodes/<node-id>    the node's status (the JSON of its
 *       HTTP member fields) under the node's one lease (10 s TTL, kept
 *       alive by the client), put when it changed.
 *
 * A node holds many streams, most of them idle: an idle stream costs
 * nothing beyond the node's one lease keep-alive. Statuses are put only when
 * something a member reads changed, and the changes of all streams go to
 * etcd together, in transactions of up to TXN_OPS puts, one in flight at a
 * time, so a burst on many streams is a few requests. A key existing under
 * a live lease is what says its node is alive (it vanishes with the lease);
 * the members' `heard` is refreshed from that, locally.
 *
 * Nodes and receivers watch each stream's prefix. While etcd is away the
 * last values stay as they were (commit_lsn stops, the node keeps serving);
 * when it returns, the lease is re-granted, every status re-put and the
 * prefixes re-read, without a restart.
 */
import { Etcd3, type Lease, type Watcher } from 'etcd3';
import { noop } from 'cockatiel';

import { parseNodeStatus, type NodeStatus } from '../../member_status.js';
import type { CandidateSource } from '../../receiver/sources.js';
import type { Logger } from '../../log.js';
import type { Broker, BrokerListener, BrokerStream } from './broker.js';

export const LEASE_TTL_S = 10;
const CALL_TIMEOUT_MS = 2000;
/** Retries, re-reads and the members' liveness, once a second. */
const TICK_MS = 1000;
/** Puts per transaction at most (etcd's --max-txn-ops defaults to 128). */
const TXN_OPS = 100;

export const streamPrefix = (stream: string): string => `walkeeper/${stream}/`;
const memberKey = (stream: string, id: number): string => `${streamPrefix(stream)}members/${id}`;
const statusKey = (stream: string, id: number): string => `${streamPrefix(stream)}nodes/${id}`;

/** A client that fails fast (our loops retry), and whose watches come back within a second. */
export function etcdClient(hosts: string[]): Etcd3 {
  return new Etcd3({
    hosts,
    dialTimeout: CALL_TIMEOUT_MS,
    // Calls fail fast; streams (watches, lease keep-alives) live as long as
    // they are useful — with a deadline, every watch died and came back every
    // two seconds, a thousand at a time on a node with a thousand streams.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
    faultHandling: {
      host: () => noop,
      global: noop,
      // Re-establish a lost watch every 250 ms (the default backs off to 30 s).
      watchBackoff: { duration: 250, next() { return this; } },
    },
  });
}

/** Parses a status value read from etcd; `key` names it in errors. */
function statusFromValue(key: string, value: string): NodeStatus {
  const j = JSON.parse(value) as { http_address?: unknown };
  // Receivers and logs name a node by its HTTP URL, as with --nodes.
  const name = typeof j.http_address === 'string' ? `http://${j.http_address}` : key;
  return parseNodeStatus(name, j);
}

/** One attached stream's side of the broker. */
interface Attached {
  stream: BrokerStream;
  listener: BrokerListener;
  log: Logger;
  registered: boolean;
  /** The status last put (without its time), under the current lease; null: none. */
  lastPut: string | null;
  watcher: Watcher | null;
  /** The other members whose status key exists now (they are alive). */
  live: Set<string>;
  failing: string | null;
  resync(): Promise<void>;
}

export class EtcdBroker implements Broker {
  readonly kind = 'etcd';
  readonly initialMembers = null;
  private readonly client: Etcd3;
  private readonly attached = new Map<string, Attached>();
  /** Streams whose status may have changed since it was last put. */
  private readonly dirty = new Set<string>();
  private publishing = false;
  private lease: Lease | null = null;
  private leaseId: string | null = null;
  private failing: string | null = null;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  /** Status puts done (all streams), and the transactions that carried them: for the benchmarks. */
  puts = 0;
  txns = 0;
  /** Watches being cancelled: the client is closed only after them (a watch left open reconnects forever). */
  private readonly cancels = new Set<Promise<unknown>>();
  /** Every watch created and not yet known to be cancelled (see close()). */
  private readonly watchers = new Set<Watcher>();
  /** Reads and watch creations in flight: close() waits for them, so that no watch is created after it. */
  private readonly inflight = new Set<Promise<void>>();

  constructor(
    hosts: string[],
    private readonly nodeId: number,
    private readonly log: Logger,
  ) {
    this.client = etcdClient(hosts);
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  attach(stream: BrokerStream, listener: BrokerListener): () => void {
    const prefix = streamPrefix(stream.name);
    const log = this.log.child({ stream: stream.name, component: 'broker' });
    const a: Attached = {
      stream,
      listener,
      log,
      registered: false,
      lastPut: null,
      watcher: null,
      live: new Set(),
      failing: null,
      resync: () => this.track(async () => {
        if (this.closed || this.attached.get(stream.name) !== a) return;
        try {
          const all = await this.client.getAll().prefix(prefix).strings();
          const members = Object.keys(all)
            .filter((k) => k.startsWith(`${prefix}members/`))
            .map((k) => k.slice(`${prefix}members/`.length))
            .filter((id) => id !== String(this.nodeId));
          listener.members(members);
          a.live = new Set(Object.keys(all).filter((k) => k.startsWith(`${prefix}nodes/`)).map((k) => k.slice(`${prefix}nodes/`.length)));
          for (const [k, v] of Object.entries(all)) apply(k, v);
          if (a.watcher === null) {
            const w = await this.client.watch().prefix(prefix).create();
            this.watchers.add(w);
            if (this.attached.get(stream.name) !== a) {
              this.cancels.add(w.cancel().catch(() => undefined));
              return;
            }
            a.watcher = w;
            w.on('put', (kv) => {
              const k = kv.key.toString();
              if (k.startsWith(`${prefix}members/`)) void a.resync();
              else apply(k, kv.value.toString());
            });
            w.on('delete', (kv) => {
              const k = kv.key.toString();
              if (k.startsWith(`${prefix}nodes/`)) a.live.delete(k.slice(`${prefix}nodes/`.length));
            });
            w.on('error', () => undefined);
            w.on('disconnected', (e) => this.fail(a, 'watch', e));
            // After a reconnect the watch resumes from its revision; re-read anyway (membership may have changed).
            w.on('connected', () => void a.resync());
            // A member that registered between the read above and the watch's
            // start is in neither: read once more now that the watch runs.
            void a.resync();
          }
          this.recovered(a);
        } catch (e) {
          this.fail(a, 'read', e);
        }
      }),
    };
    const apply = (key: string, value: string): void => {
      const rest = key.slice(prefix.length);
      if (!rest.startsWith('nodes/')) return;
      const id = rest.slice('nodes/'.length);
      if (id === String(this.nodeId)) return;
      a.live.add(id);
      try {
        listener.status({ ...statusFromValue(`node ${id}`, value), nodeId: id });
      } catch (e) {
        log.error({ key, err: (e as Error).message }, 'ignoring a malformed status in etcd');
      }
    };
    this.attached.set(stream.name, a);
    this.dirty.add(stream.name);
    void this.publish();
    void a.resync();
    return () => {
      if (this.attached.get(stream.name) !== a) return;
      this.attached.delete(stream.name);
      this.dirty.delete(stream.name);
      const w = a.watcher;
      a.watcher = null;
      if (w) this.cancels.add(w.cancel().catch(() => undefined));
      // The status goes at once rather than with the node's lease.
      if (a.lastPut !== null) this.cancels.add(this.client.delete().key(statusKey(stream.name, this.nodeId)).catch(() => undefined));
    };
  }

  /** Every put is watched anyway: nothing to ask differently. */
  demandChanged(): void {}

  changed(stream: string): void {
    if (!this.attached.has(stream)) return;
    this.dirty.add(stream);
    // (a burst of changes on many streams in one tick of the event loop goes out together)
    if (!this.publishing) setImmediate(() => void this.publish());
  }

  private fail(a: Attached | null, what: string, e: unknown): void {
    const msg = `${what}: ${(e as Error).message ?? String(e)}`;
    const was = a ? a.failing : this.failing;
    if (was === null) (a?.log ?? this.log).warn({ err: msg }, 'etcd unreachable; commit_lsn stays where the last known member status puts it');
    if (a) a.failing = msg;
    else this.failing = msg;
  }

  private recovered(a: Attached | null): void {
    const was = a ? a.failing : this.failing;
    if (was !== null) (a?.log ?? this.log).info('etcd reachable again');
    if (a) a.failing = null;
    else this.failing = null;
  }

  /**
   * The node's lease, granted when there is none (all status keys live
   * under it). Held in `lease` from the moment it is asked for, so that
   * close() revokes one still being granted: a lease granted after the
   * close would keep its keep-alive timers, and the process, alive.
   */
  private async ensureLease(): Promise<string> {
    if (this.lease !== null && this.leaseId !== null) return this.leaseId;
    if (this.lease === null) {
      const l = this.client.lease(LEASE_TTL_S, { autoKeepAlive: true });
      l.on('lost', () => {
        if (this.lease !== l) return;
        // Every status key went with it: put them all again.
        this.lease = null;
        this.leaseId = null;
        for (const [name, a] of this.attached) {
          a.lastPut = null;
          this.dirty.add(name);
        }
      });
      this.lease = l;
    }
    const l = this.lease;
    const id = await l.grant();
    if (this.closed || this.lease !== l) throw new Error('the broker closed');
    this.leaseId = id;
    return id;
  }

  /** Puts what changed, all streams together, one transaction in flight at a time. */
  private async publish(): Promise<void> {
    if (this.publishing || this.closed) return;
    this.publishing = true;
    try {
      while (this.dirty.size > 0 && !this.closed) {
        const leaseId = await this.ensureLease();
        const names: string[] = [];
        const ops: { request_put: { key: Buffer; value: Buffer; lease?: string } }[] = [];
        const done: { a: Attached; value: string }[] = [];
        for (const name of this.dirty) {
          // (a stream not yet registered takes two puts)
          if (ops.length + 2 > TXN_OPS) break;
          names.push(name);
          this.dirty.delete(name);
          const a = this.attached.get(name);
          if (!a) continue;
          if (!a.registered) ops.push({ request_put: { key: Buffer.from(memberKey(name, this.nodeId)), value: Buffer.from(JSON.stringify({ node_id: this.nodeId })) } });
          const st = a.stream.status();
          const { updated_at: _at, ...rest } = st;
          const value = JSON.stringify(rest);
          if (value === a.lastPut && a.registered) continue;
          ops.push({ request_put: { key: Buffer.from(statusKey(name, this.nodeId)), value: Buffer.from(JSON.stringify(st)), lease: leaseId } });
          done.push({ a, value });
        }
        if (ops.length === 0) continue;
        try {
          await this.client.kv.txn({ success: ops });
        } catch (e) {
          for (const n of names) if (this.attached.has(n)) this.dirty.add(n);
          throw e;
        }
        this.txns++;
        for (const d of done) {
          d.a.registered = true;
          d.a.lastPut = d.value;
          this.puts++;
        }
        this.recovered(null);
      }
    } catch (e) {
      if (this.lease !== null) {
        const l = this.lease;
        this.lease = null;
        this.leaseId = null;
        l.release();
        for (const [name, a] of this.attached) {
          a.lastPut = null;
          this.dirty.add(name);
        }
      }
      this.fail(null, 'publish', e);
    } finally {
      this.publishing = false;
    }
  }

  /**
   * Once a second: retry what failed (a publish, a stream's first read or
   * watch), and tell each stream's quorum that the members whose status
   * key exists are alive (an idle member puts nothing).
   */
  private tick(): void {
    if (this.closed) return;
    if (this.dirty.size > 0 || this.failing !== null) void this.publish();
    for (const a of this.attached.values()) {
      if (a.watcher === null || a.failing !== null) void a.resync();
      else for (const id of a.live) a.listener.heard?.(id);
    }
  }

  private track(fn: () => Promise<void>): Promise<void> {
    const p = fn();
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
    return p;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    const bounded = (ps: Iterable<Promise<unknown>>) => Promise.race([Promise.allSettled([...ps]), new Promise((r) => setTimeout(r, 3000).unref())]);
    // (a watch still being created must exist before it can be cancelled)
    await bounded(this.inflight);
    for (const [name, a] of this.attached) {
      if (a.watcher) this.cancels.add(a.watcher.cancel().catch(() => undefined));
      this.attached.delete(name);
    }
    // Revoke: the statuses disappear at once rather than after the TTL.
    if (this.lease) this.cancels.add(this.lease.revoke().catch(() => undefined));
    await bounded(this.cancels);
    this.client.close();
    // A watch whose cancellation did not come back in time is still in the
    // client's list, and its watch manager would try to reconnect it every
    // 250 ms for ever (keeping the process alive). With the client closed the
    // manager is idle, and a cancel there just drops the watch.
    // (a cancel can also wait for ever, for an event a closed client never sends: each round is bounded)
    for (let round = 0; round < 20 && this.watchers.size > 0; round++) {
      await new Promise((r) => setTimeout(r, 50));
      await Promise.race([Promise.allSettled([...this.watchers].map((w) => w.cancel().then(() => this.watchers.delete(w)))), new Promise((r) => setTimeout(r, 200))]);
    }
  }
}

/** Candidate nodes for `walkeeper receive --broker`: the status keys under the stream's prefix. */
export class EtcdCandidateSource implements CandidateSource {
  private client: Etcd3 | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private watch: Promise<Watcher | null> = Promise.resolve(null);

  constructor(
    private readonly hosts: string[],
    private readonly stream: string,
    private readonly intervalMs = 250,
  ) {}

  start(onStatus: (s: NodeStatus) => void, onError: (nodeId: string, err: Error) => void): void {
    const client = etcdClient(this.hosts);
    this.client = client;
    const prefix = `${streamPrefix(this.stream)}nodes/`;
    // Every status read is handed on, changed or not: a node puts its status
    // only when it changes, so the key's existence (under the node's lease)
    // is what says the node is alive; a dead node's key goes with its lease
    // and the policy then forgets it.
    const apply = (key: string, value: string): void => {
      try {
        onStatus(statusFromValue(`node ${key.slice(prefix.length)}`, value));
      } catch (e) {
        onError(`etcd ${key}`, e as Error);
      }
    };
    // Watch for changes as they happen; re-read the prefix on a timer too,
    // so a candidate's status keeps arriving (the policy forgets silent
    // candidates) and a lost watch is covered.
    const read = (): void => {
      client
        .getAll()
        .prefix(prefix)
        .strings()
        .then(
          (all) => {
            if (!this.stopped) for (const [k, v] of Object.entries(all)) apply(k, v);
          },
          (e: Error) => !this.stopped && onError(`etcd ${this.hosts.join(',')}`, e),
        );
    };
    read();
    this.timer = setInterval(read, this.intervalMs);
    this.watch = client
      .watch()
      .prefix(prefix)
      .create()
      .then((w) => {
        w.on('put', (kv) => !this.stopped && apply(kv.key.toString(), kv.value.toString()));
        w.on('error', () => undefined);
        return w;
      })
      .catch(() => null);
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const client = this.client;
    // Cancel the watch before closing: a watch left open reconnects forever
    // and keeps the process alive.
    void this.watch
      .then((w) => w?.cancel())
      .catch(() => undefined)
      .finally(() => client?.close());
  }
}
