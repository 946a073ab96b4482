/**
 * The etcd broker (`--broker http://host:port,…`), on etcd v3 through the
 * `etcd3` client.
 *
 *   walkeeper/<stream>/members/<node-id>  written once, no lease: the
 *       stream's membership. A member that dies keeps counting towards the
 *       quorum size, so losing nodes can never shrink the majority needed.
 *   walkeeper/<stream>/nodes/<node-id>    the node's status (the JSON of its
 *       HTTP member fields) under a 10 s lease, put on every change (one put
 *       in flight at a time, so bursts coalesce) and at least every second.
 *
 * Nodes and receivers watch the stream's prefix. While etcd is away the last
 * values stay as they were (commit_lsn stops, the node keeps serving); when
 * it returns, the lease is re-granted, the status re-put and the prefix
 * re-read, without a restart.
 */
import { Etcd3, type Lease, type Watcher } from 'etcd3';
import { noop } from 'cockatiel';

import { parseNodeStatus, type NodeStatus } from '../../member_status.js';
import type { CandidateSource } from '../../receiver/sources.js';
import type { Logger } from '../../log.js';
import type { Broker, BrokerListener, BrokerStream } from './broker.js';

export const LEASE_TTL_S = 10;
export const PUBLISH_INTERVAL_MS = 1000;
const CALL_TIMEOUT_MS = 2000;
const RESYNC_MS = 1000;

export const streamPrefix = (stream: string): string => `walkeeper/${stream}/`;
const memberKey = (stream: string, id: number): string => `${streamPrefix(stream)}members/${id}`;
const statusKey = (stream: string, id: number): string => `${streamPrefix(stream)}nodes/${id}`;

/** A client that fails fast (our loops retry), and whose watches come back within a second. */
export function etcdClient(hosts: string[]): Etcd3 {
  return new Etcd3({
    hosts,
    dialTimeout: CALL_TIMEOUT_MS,
    defaultCallOptions: () => ({ deadline: Date.now() + CALL_TIMEOUT_MS }),
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

export class EtcdBroker implements Broker {
  readonly kind = 'etcd';
  readonly initialMembers = null;
  private readonly client: Etcd3;
  private readonly streams = new Map<string, { dirty: boolean; kick: () => void }>();
  /** Status puts done (all streams): for the broker benchmark and metrics. */
  puts = 0;
  /** Watches being cancelled: the client is closed only after them (a watch left open reconnects forever). */
  private readonly cancels = new Set<Promise<unknown>>();

  constructor(
    hosts: string[],
    private readonly nodeId: number,
    private readonly log: Logger,
  ) {
    this.client = etcdClient(hosts);
  }

  attach(stream: BrokerStream, listener: BrokerListener): () => void {
    const log = this.log.child({ stream: stream.name, component: 'broker' });
    const prefix = streamPrefix(stream.name);
    let stopped = false;
    let lease: Lease | null = null;
    let registered = false;
    let watcher: Watcher | null = null;
    let putting = false;
    let failing: string | null = null;
    const state = { dirty: true, kick: () => void publish() };
    this.streams.set(stream.name, state);
    const fail = (what: string, e: unknown): void => {
      const msg = `${what}: ${(e as Error).message ?? String(e)}`;
      if (failing === null) log.warn({ err: msg }, 'etcd unreachable; commit_lsn stays where the last known member status puts it');
      failing = msg;
    };
    const recovered = (): void => {
      if (failing !== null) log.info('etcd reachable again');
      failing = null;
    };

    const publish = async (): Promise<void> => {
      if (stopped || putting) return;
      putting = true;
      try {
        while (state.dirty && !stopped) {
          state.dirty = false;
          if (!registered) {
            await this.client.put(memberKey(stream.name, this.nodeId)).value(JSON.stringify({ node_id: this.nodeId }));
            registered = true;
          }
          if (lease === null) {
            const l = this.client.lease(LEASE_TTL_S, { autoKeepAlive: true });
            l.on('lost', () => {
              if (lease === l) lease = null;
              state.dirty = true;
            });
            await l.grant();
            lease = l;
          }
          await lease.put(statusKey(stream.name, this.nodeId)).value(JSON.stringify(stream.status()));
          this.puts++;
          recovered();
        }
      } catch (e) {
        state.dirty = true;
        if (lease !== null) {
          const l = lease;
          lease = null;
          l.release();
        }
        fail('publish', e);
      } finally {
        putting = false;
      }
    };

    const apply = (key: string, value: string): void => {
      const rest = key.slice(prefix.length);
      if (rest.startsWith('nodes/')) {
        const id = rest.slice('nodes/'.length);
        if (id === String(this.nodeId)) return;
        try {
          listener.status({ ...statusFromValue(`node ${id}`, value), nodeId: id });
        } catch (e) {
          log.error({ key, err: (e as Error).message }, 'ignoring a malformed status in etcd');
        }
      }
    };
    const resync = async (): Promise<void> => {
      if (stopped) return;
      try {
        const all = await this.client.getAll().prefix(prefix).strings();
        const members = Object.keys(all)
          .filter((k) => k.startsWith(`${prefix}members/`))
          .map((k) => k.slice(`${prefix}members/`.length))
          .filter((id) => id !== String(this.nodeId));
        listener.members(members);
        for (const [k, v] of Object.entries(all)) apply(k, v);
        if (watcher === null) {
          const w = await this.client.watch().prefix(prefix).create();
          if (stopped) {
            this.cancels.add(w.cancel().catch(() => undefined));
            return;
          }
          watcher = w;
          w.on('put', (kv) => {
            const k = kv.key.toString();
            if (k.startsWith(`${prefix}members/`)) void resync();
            else apply(k, kv.value.toString());
          });
          w.on('error', () => undefined);
          w.on('disconnected', (e) => fail('watch', e));
          // After a reconnect the watch resumes from its revision; re-read anyway (membership may have changed).
          w.on('connected', () => void resync());
          // A member that registered between the read above and the watch's
          // start is in neither: read once more now that the watch runs.
          void resync();
        }
        recovered();
      } catch (e) {
        fail('read', e);
      }
    };

    void publish();
    void resync();
    const timer = setInterval(() => {
      state.dirty = true;
      void publish();
      // Until the first read and the watch succeed, keep trying.
      if (watcher === null || failing !== null) void resync();
    }, Math.min(PUBLISH_INTERVAL_MS, RESYNC_MS));
    return () => {
      stopped = true;
      clearInterval(timer);
      this.streams.delete(stream.name);
      const w = watcher;
      watcher = null;
      if (w) this.cancels.add(w.cancel().catch(() => undefined));
      // Revoke: the status disappears at once rather than after the TTL.
      if (lease) this.cancels.add(lease.revoke().catch(() => undefined));
    };
  }

  /** Every put is watched anyway: nothing to ask differently. */
  demandChanged(): void {}

  changed(stream: string): void {
    const s = this.streams.get(stream);
    if (!s) return;
    s.dirty = true;
    s.kick();
  }

  async close(): Promise<void> {
    await Promise.race([Promise.all([...this.cancels]), new Promise((r) => setTimeout(r, 3000).unref())]);
    this.client.close();
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
    // A status is handed on when it changed (nodes re-put theirs every
    // second with a new updated_at): a dead node's key, which lingers until
    // its lease expires, then goes silent and the policy forgets it.
    const last = new Map<string, string>();
    const apply = (key: string, value: string): void => {
      if (last.get(key) === value) return;
      last.set(key, value);
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
