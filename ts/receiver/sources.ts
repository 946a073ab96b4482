/**
 * Where a receiver learns about candidate nodes. The embedded source polls
 * each node's HTTP status (`GET /v1/streams/<name>`, about every 250 ms);
 * with `--broker`, the etcd source (cluster/broker/etcd.ts) implements the
 * same interface.
 */
import { parseNodeStatus, type NodeStatus } from '../member_status.js';

export interface CandidateSource {
  start(onStatus: (s: NodeStatus) => void, onError: (nodeId: string, err: Error) => void): void;
  stop(): void;
}

export class HttpStatusSource implements CandidateSource {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly inFlight = new Set<string>();

  constructor(
    private readonly urls: string[],
    private readonly stream: string,
    private readonly intervalMs = 250,
  ) {}

  start(onStatus: (s: NodeStatus) => void, onError: (nodeId: string, err: Error) => void): void {
    const poll = () => {
      for (const url of this.urls) {
        if (this.inFlight.has(url)) continue;
        this.inFlight.add(url);
        const ac = new AbortController();
        const t = setTimeout(() => ac.abort(), Math.max(1000, this.intervalMs * 4));
        fetch(`${url.replace(/\/+$/, '')}/v1/streams/${encodeURIComponent(this.stream)}`, { signal: ac.signal })
          .then(async (r) => {
            if (!r.ok) throw new Error(`HTTP ${r.status}`);
            return parseNodeStatus(url, await r.json());
          })
          .then(
            (s) => !this.stopped && onStatus(s),
            (e: Error) => !this.stopped && onError(url, e),
          )
          .finally(() => {
            clearTimeout(t);
            this.inFlight.delete(url);
          });
      }
    };
    poll();
    this.timer = setInterval(poll, this.intervalMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
  }
}
