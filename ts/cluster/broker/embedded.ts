/**
 * The embedded broker: peers given by HTTP URL (`--peers`). Each node serves
 * its own status over HTTP and follows each peer's with a held-open
 * `GET /v1/streams/<name>?watch=flush`: a line of JSON per flush_lsn move
 * (and a heartbeat every 250 ms), so commit_lsn follows a quorum flush
 * within a one-way trip. While no client waits on commit_lsn here, it asks
 * for `?watch=heartbeat` instead: a line every 250 ms. A peer that fails or
 * falls silent is asked again every PEER_RETRY_MS; its last known status
 * stays what the quorum counts.
 */
import http from 'node:http';

import { parseNodeStatus, type NodeStatus } from '../../member_status.js';
import type { Logger } from '../../log.js';
import { PEER_RETRY_MS, type Broker, type BrokerListener, type BrokerStream } from './broker.js';

export class EmbeddedBroker implements Broker {
  readonly kind = 'embedded';
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  private readonly stops = new Set<() => void>();
  /** Per attached stream: ask the peers again where the watch wanted changed. */
  private readonly attached = new Map<string, () => void>();

  constructor(
    private readonly peers: readonly string[],
    private readonly log: Logger,
  ) {}

  get initialMembers(): readonly string[] {
    return this.peers;
  }

  attach(stream: BrokerStream, listener: BrokerListener): () => void {
    let stopped = false;
    /** The held-open request to each peer, and the watch it asked for. */
    const inflight = new Map<http.ClientRequest, 'flush' | 'heartbeat'>();
    /** Requests ended to ask again with the other watch (at once, not after PEER_RETRY_MS). */
    const switching = new Set<http.ClientRequest>();
    const timers = new Set<NodeJS.Timeout>();
    const log = this.log.child({ stream: stream.name, component: 'broker' });
    const follow = (peer: string, failing: string | null): void => {
      if (stopped) return;
      const mode = stream.follow;
      let buf = '';
      let heard = false;
      let heardAt = Date.now();
      let error: Error | null = null;
      // Kept here, and destroy() called without it: once a response is under
      // way, an error given to destroy() is emitted on the socket, where
      // nothing listens, and would take the process down.
      const fail = (e: Error): void => {
        error ??= e;
        req.destroy();
      };
      // Heartbeats come every 250 ms: a peer silent for much longer is gone.
      // (A timestamp checked once a second, not a timer re-armed per line: a
      // line comes with every flush.)
      const silence = setInterval(() => {
        if (Date.now() - heardAt > 3000) fail(new Error('no status for 3 s'));
      }, 1000);
      const req = http.get(`${peer}/v1/streams/${encodeURIComponent(stream.name)}?watch=${mode}`, { agent: this.agent }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          fail(new Error(`HTTP ${res.statusCode}`));
          return;
        }
        // A node streams one JSON line per status (x-ndjson); anything else
        // (a peer that does not know the watch) answers one document, which
        // may span lines, is read whole and asked again after PEER_RETRY_MS.
        const lines = /^application\/x-ndjson\b/.test(res.headers['content-type'] ?? '');
        res.setEncoding('utf8');
        const take = (text: string): boolean => {
          let st: NodeStatus;
          try {
            st = parseNodeStatus(peer, JSON.parse(text));
          } catch (e) {
            fail(e as Error);
            return false;
          }
          if (!heard && failing !== null) log.info({ peer }, 'peer answers again');
          heard = true;
          listener.status(st);
          return true;
        };
        res.on('data', (chunk: string) => {
          heardAt = Date.now();
          buf += chunk;
          if (!lines) return;
          for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line.trim() !== '' && !take(line)) return;
          }
        });
        res.on('end', () => {
          if (buf.trim() === '' || take(buf)) req.destroy();
        });
        res.on('error', () => undefined);
      });
      inflight.set(req, mode);
      req.on('error', (e: Error) => (error ??= e));
      req.on('close', () => {
        clearInterval(silence);
        inflight.delete(req);
        if (stopped) return;
        if (switching.delete(req)) {
          follow(peer, failing);
          return;
        }
        const msg = error ? ((error as NodeJS.ErrnoException).code ?? error.message) : null;
        // One line when a peer starts failing (or fails differently), not one per attempt.
        const now = heard ? null : failing;
        if (msg !== null && now !== msg) log.warn({ peer, err: msg }, 'cannot get peer status');
        const t = setTimeout(() => {
          timers.delete(t);
          follow(peer, msg ?? (heard ? null : failing));
        }, PEER_RETRY_MS);
        timers.add(t);
      });
    };
    for (const p of this.peers) follow(p, null);
    const refollow = (): void => {
      // (a peer waiting out PEER_RETRY_MS is asked with the new watch when it is asked again)
      for (const [req, mode] of inflight) {
        if (mode === stream.follow) continue;
        switching.add(req);
        req.destroy();
      }
    };
    const stop = (): void => {
      stopped = true;
      for (const r of inflight.keys()) r.destroy();
      for (const t of timers) clearTimeout(t);
      this.attached.delete(stream.name);
      this.stops.delete(stop);
    };
    this.attached.set(stream.name, refollow);
    this.stops.add(stop);
    return stop;
  }

  /** Peers ask us; nothing to push. */
  changed(): void {}

  demandChanged(stream: string): void {
    this.attached.get(stream)?.();
  }

  async close(): Promise<void> {
    for (const s of [...this.stops]) s();
    this.agent.destroy();
  }
}
