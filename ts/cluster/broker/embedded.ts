/**
 * The embedded broker: peers given by HTTP URL (`--peers`). Each node serves
 * its own status over HTTP and follows each peer's for every stream on one
 * held-open `GET /v1/streams?watch=peers&flush=…` (see http/peer_watch.ts):
 * one connection per peer however many streams, a line per status naming
 * its stream. Streams where a client waits on commit_lsn here are named in
 * `flush`, and get a line per flush_lsn move, so that commit_lsn follows a
 * quorum flush within a one-way trip; the others get a line when something
 * changed, and an idle stream costs nothing. A peer that fails or falls
 * silent is asked again every PEER_RETRY_MS; its last known status for each
 * stream stays what the quorum counts.
 */
import http from 'node:http';

import { parseNodeStatus, type NodeStatus } from '../../member_status.js';
import type { Logger } from '../../log.js';
import { PEER_RETRY_MS, type Broker, type BrokerListener, type BrokerStream } from './broker.js';

/** A `flush` list longer than this asks for every stream's flushes instead (`*`): a URL stays short. */
const MAX_FLUSH_PARAM = 4000;
/** A peer silent this long (its watch writes every 250 ms) is gone. */
export const SILENCE_MS = 3000;
/** How often a live connection tells the quorum that each stream's last status is current. */
const HEARD_EVERY_MS = 1000;

interface Attached {
  stream: BrokerStream;
  listener: BrokerListener;
}

export class EmbeddedBroker implements Broker {
  readonly kind = 'embedded';
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  private readonly attached = new Map<string, Attached>();
  private readonly links: PeerLink[];

  constructor(
    private readonly peers: readonly string[],
    log: Logger,
  ) {
    this.links = peers.map((p) => new PeerLink(p, this.agent, this.attached, log.child({ component: 'broker', peer: p })));
  }

  get initialMembers(): readonly string[] {
    return this.peers;
  }

  attach(stream: BrokerStream, listener: BrokerListener): () => void {
    const a = { stream, listener };
    this.attached.set(stream.name, a);
    for (const l of this.links) l.attachedStream(stream.name);
    return () => {
      if (this.attached.get(stream.name) === a) this.attached.delete(stream.name);
    };
  }

  /** Peers ask us; nothing to push. */
  changed(): void {}

  demandChanged(): void {
    for (const l of this.links) l.demandChanged();
  }

  async close(): Promise<void> {
    for (const l of this.links) l.close();
    this.agent.destroy();
  }
}

/** The one watch on one peer, for every stream. */
class PeerLink {
  private req: http.ClientRequest | null = null;
  /** The `flush` value the open request asked with. */
  private asked = '';
  private switching = false;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  /** The peer's last status of each stream it reported, attached here or not (yet). */
  private readonly last = new Map<string, NodeStatus>();
  /** One warning per stream and error, not one per line. */
  private readonly badLines = new Map<string, string>();
  private failing: string | null = null;

  constructor(
    private readonly peer: string,
    private readonly agent: http.Agent,
    private readonly attached: ReadonlyMap<string, Attached>,
    private readonly log: Logger,
  ) {
    // (started on the first attach: a node with no stream asks nothing)
  }

  /** A stream was attached: its peer status is known already if the watch heard it. */
  attachedStream(name: string): void {
    if (!this.req && this.retry === undefined && !this.closed) {
      this.follow();
      return;
    }
    const st = this.last.get(name);
    if (st) this.attached.get(name)?.listener.status(st);
    this.demandChanged();
  }

  /** The streams whose every flush we want changed: ask again if the open watch asked otherwise. */
  demandChanged(): void {
    if (!this.req || this.flushParam() === this.asked) return;
    this.switching = true;
    this.req.destroy();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.req?.destroy();
  }

  private flushParam(): string {
    const names = [...this.attached.values()].filter((a) => a.stream.follow === 'flush').map((a) => encodeURIComponent(a.stream.name)).sort();
    const v = names.join(',');
    return v.length > MAX_FLUSH_PARAM ? '*' : v;
  }

  private follow(): void {
    if (this.closed) return;
    this.retry = undefined;
    const flush = (this.asked = this.flushParam());
    let buf = '';
    let heard = false;
    let heardAt = Date.now();
    let toldAt = 0;
    let error: Error | null = null;
    // Kept here, and destroy() called without it: once a response is under
    // way, an error given to destroy() is emitted on the socket, where
    // nothing listens, and would take the process down.
    const fail = (e: Error): void => {
      error ??= e;
      req.destroy();
    };
    const silence = setInterval(() => {
      if (Date.now() - heardAt > SILENCE_MS) fail(new Error(`no status for ${SILENCE_MS / 1000} s`));
    }, 1000);
    const take = (line: string): void => {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(line) as Record<string, unknown>;
      } catch (e) {
        fail(new Error(`not a JSON line: ${(e as Error).message}`));
        return;
      }
      if (!heard && this.failing !== null) this.log.info('peer answers again');
      heard = true;
      this.failing = null;
      const now = Date.now();
      if (typeof j.name === 'string') {
        let st: NodeStatus;
        try {
          st = parseNodeStatus(this.peer, j);
        } catch (e) {
          const why = (e as Error).message;
          if (this.badLines.get(j.name) !== why) this.log.warn({ stream: j.name, err: why }, 'peer status ignored');
          this.badLines.set(j.name, why);
          return;
        }
        this.badLines.delete(j.name);
        this.last.set(j.name, st);
        this.attached.get(j.name)?.listener.status(st);
      }
      // Every line says the connection is live, and with it every stream's last status.
      if (now - toldAt >= HEARD_EVERY_MS) {
        toldAt = now;
        for (const [name, a] of this.attached) if (this.last.has(name)) a.listener.heard?.(this.peer);
      }
    };
    const req = http.get(`${this.peer}/v1/streams?watch=peers&flush=${flush}`, { agent: this.agent }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        fail(new Error(`HTTP ${res.statusCode}`));
        return;
      }
      // A node streams one JSON line per status (x-ndjson); anything else (a
      // peer that does not know the watch) answers one document, which may
      // span lines, is read whole and asked again after PEER_RETRY_MS.
      const lines = /^application\/x-ndjson\b/.test(res.headers['content-type'] ?? '');
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        heardAt = Date.now();
        buf += chunk;
        if (!lines) return;
        for (let nl = buf.indexOf('\n'); nl >= 0 && !req.destroyed; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim() !== '') take(line);
        }
      });
      res.on('end', () => {
        if (buf.trim() !== '') take(buf.replace(/\n/g, ' '));
        req.destroy();
      });
      res.on('error', () => undefined);
    });
    this.req = req;
    req.on('error', (e: Error) => (error ??= e));
    req.on('close', () => {
      clearInterval(silence);
      if (this.req === req) this.req = null;
      if (this.closed) return;
      if (this.switching) {
        this.switching = false;
        this.follow();
        return;
      }
      // (a peer that answered and ended, e.g. with one document, is simply asked again)
      const msg = error ? ((error as NodeJS.ErrnoException).code ?? error.message) : heard ? null : 'the peer ended the watch';
      // One line when a peer starts failing (or fails differently), not one per attempt.
      if (msg !== null && msg !== this.failing) this.log.warn({ err: msg }, 'cannot get peer status');
      this.failing = msg;
      this.retry = setTimeout(() => this.follow(), PEER_RETRY_MS);
    });
  }
}
