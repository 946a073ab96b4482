/**
 * The embedded broker: peers given by HTTP URL (`--peers`). Each node serves
 * its own status over HTTP and asks each peer for theirs in a loop; the
 * request carries the peer's last seen flush_lsn and the peer answers as
 * soon as it has flushed more (or after STATUS_WAIT_MS), so commit_lsn
 * follows a quorum flush within one round trip.
 */
import http from 'node:http';

import { formatLsn, type Lsn } from '../lsn.js';
import { parseNodeStatus } from '../receiver/sources.js';
import type { Logger } from '../node/log.js';
import { PEER_RETRY_MS, STATUS_WAIT_MS, type Broker, type BrokerListener, type BrokerStream } from './broker.js';

export class EmbeddedBroker implements Broker {
  readonly kind = 'embedded';
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  private readonly stops = new Set<() => void>();

  constructor(
    private readonly peers: readonly string[],
    private readonly log: Logger,
  ) {}

  get initialMembers(): readonly string[] {
    return this.peers;
  }

  attach(stream: BrokerStream, listener: BrokerListener): () => void {
    let stopped = false;
    const inflight = new Set<http.ClientRequest>();
    const timers = new Set<NodeJS.Timeout>();
    const log = this.log.child({ stream: stream.name, component: 'broker' });
    const loop = (peer: string, seen: Lsn | null, failing: string | null): void => {
      if (stopped) return;
      const sentAt = Date.now();
      const q = seen === null ? '' : `?wait_flush_above=${formatLsn(seen)}&timeout_ms=${STATUS_WAIT_MS}`;
      const req = http.get(`${peer}/v1/streams/${encodeURIComponent(stream.name)}${q}`, { agent: this.agent, timeout: STATUS_WAIT_MS + 5000 }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () => {
          inflight.delete(req);
          if (stopped) return;
          let next = seen;
          let err: string | null = null;
          try {
            if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}`);
            const s = parseNodeStatus(peer, JSON.parse(Buffer.concat(parts).toString('utf8')));
            next = s.flushLsn;
            if (failing !== null) log.info({ peer }, 'peer answers again');
            listener.status(s);
          } catch (e) {
            err = (e as Error).message;
          }
          if (err !== null) return retry(peer, seen, failing, err);
          // A peer that answered at once without news did not wait (not a
          // walkeeper node, or an old one): do not ask it in a tight loop.
          const early = next === seen && Date.now() - sentAt < STATUS_WAIT_MS / 2;
          if (!early) return loop(peer, next, null);
          const t = setTimeout(() => {
            timers.delete(t);
            loop(peer, next, null);
          }, STATUS_WAIT_MS);
          timers.add(t);
        });
        res.on('error', () => undefined);
      });
      inflight.add(req);
      req.on('timeout', () => req.destroy(new Error('no answer')));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (!inflight.delete(req) || stopped) return;
        retry(peer, seen, failing, e.code ?? e.message);
      });
    };
    const retry = (peer: string, seen: Lsn | null, failing: string | null, err: string): void => {
      // One line when a peer starts failing (or fails differently), not one per attempt.
      if (failing !== err) log.warn({ peer, err }, 'cannot get peer status');
      const t = setTimeout(() => {
        timers.delete(t);
        loop(peer, seen, err);
      }, PEER_RETRY_MS);
      timers.add(t);
    };
    for (const p of this.peers) loop(p, null, null);
    const stop = (): void => {
      stopped = true;
      for (const r of inflight) r.destroy();
      for (const t of timers) clearTimeout(t);
      this.stops.delete(stop);
    };
    this.stops.add(stop);
    return stop;
  }

  /** Peers ask us; nothing to push. */
  changed(): void {}

  async close(): Promise<void> {
    for (const s of [...this.stops]) s();
    this.agent.destroy();
  }
}
