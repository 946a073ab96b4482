/**
 * `GET /v1/streams?watch=peers[&flush=a,b|*]`: the one held-open response
 * through which a peer (the embedded broker) follows this node's status for
 * every stream, one JSON line per status, each naming its stream.
 *
 * A node holds many streams, most of them idle. One request per stream and
 * peer, each with a line every 250 ms, costs a thousand idle streams four
 * thousand lines a second per peer; here an idle stream costs nothing:
 *
 *  - every stream's status once when the watch opens, and a stream created
 *    later as soon as it appears;
 *  - streams the peer names in `flush` (a client waits on commit_lsn
 *    there): a line the moment their flush_lsn moves, written from inside
 *    the flush notification and uncorked, so that the peers hear of a flush
 *    before the upstream hears our 'r' (see the per-stream watch in api.ts);
 *  - any other stream: a line at the next tick (250 ms) when something a
 *    member reads changed, and at once when flush_lsn enters a new segment
 *    (the offloader uploads a segment once commit_lsn passes its end);
 *  - `{"alive": <ms>}` every tick when nothing else was written: the peer
 *    knows the connection, and so every stream's last status, is current.
 */
import type http from 'node:http';

import type { Stream } from '../stream/stream.js';

export const PEER_TICK_MS = 250;

export interface PeerWatchSource {
  /** The streams this node holds now. */
  streams(): Iterable<Stream>;
  /** A stream's member status as published (memberStatusJson). */
  status(s: Stream): Record<string, unknown>;
}

/** What a member reads of a stream, cheaply: a line goes out when this changes. */
function fingerprint(s: Stream): string {
  const a = s.replicas.aggregates();
  return `${s.state}|${s.tli}|${s.flushLsn}|${s.reportedCommitLsn}|${s.oldestLsn}|${s.backupLsn}|${a.maxRemoteConsistentLsn}`;
}

/**
 * When one stream's status goes to one watching peer, pure (the simulator
 * runs it too): at every flush if the peer asked for them (`prompt`),
 * otherwise when flush_lsn enters a new segment; and at a tick, when what a
 * member reads (the fingerprint) differs from what was last written.
 */
export class PeerPushRule {
  private pushedSeg: bigint;
  private sent: string | null = null;

  constructor(
    readonly prompt: boolean,
    flushLsn: bigint,
    private readonly segmentSize: bigint,
  ) {
    this.pushedSeg = flushLsn / segmentSize;
  }

  /** flush_lsn moved to `lsn`: write the status now? */
  onFlush(lsn: bigint): boolean {
    if (this.prompt) return true;
    const seg = lsn / this.segmentSize;
    if (seg === this.pushedSeg) return false;
    this.pushedSeg = seg;
    return true;
  }

  /** At a tick: has what a member reads changed since the last status written? */
  changed(fingerprint: string): boolean {
    return this.sent !== fingerprint;
  }

  /** A status with this fingerprint was written. */
  wrote(fingerprint: string): void {
    this.sent = fingerprint;
  }
}

/** `flush`: the streams whose every flush the peer wants ('*': all). */
export function servePeerWatch(res: http.ServerResponse, src: PeerWatchSource, flush: ReadonlySet<string> | '*'): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  const rules = new Map<Stream, PeerPushRule>();
  const unlisten = new Map<Stream, () => void>();
  let backlogged = false;
  let wroteSinceTick = false;
  const write = (obj: unknown): void => {
    if (res.destroyed) return;
    wroteSinceTick = true;
    if (!res.write(`${JSON.stringify(obj)}\n`) && !backlogged) {
      backlogged = true;
      // A slow peer gets the latest of each stream once it drains, not every line in between.
      res.once('drain', () => {
        backlogged = false;
        tick();
      });
    }
  };
  const push = (s: Stream): void => {
    // (while backlogged, not marked as sent: the tick after the drain sends the latest)
    if (backlogged) return;
    rules.get(s)?.wrote(fingerprint(s));
    write(src.status(s));
    res.socket?.uncork();
  };
  const follow = (s: Stream): void => {
    const prompt = flush === '*' || flush.has(s.name);
    const rule = new PeerPushRule(prompt, s.flushLsn, BigInt(s.segmentSize));
    rules.set(s, rule);
    const off = s.flushWatch.listen((lsn) => {
      if (rule.onFlush(lsn)) push(s);
    });
    // (the status page and the tests show who follows each stream, and how)
    const how = prompt ? 'flush' : 'heartbeat';
    s.followedBy[how]++;
    unlisten.set(s, () => {
      off();
      s.followedBy[how]--;
    });
    push(s);
  };
  const tick = (): void => {
    if (res.destroyed || backlogged) return;
    const now = new Set<Stream>();
    for (const s of src.streams()) {
      now.add(s);
      if (!unlisten.has(s)) follow(s);
      else if (rules.get(s)!.changed(fingerprint(s))) push(s);
    }
    for (const [s, off] of unlisten) {
      if (now.has(s)) continue;
      off();
      unlisten.delete(s);
      rules.delete(s);
    }
    if (!wroteSinceTick) write({ alive: Date.now() });
    wroteSinceTick = false;
    res.socket?.uncork();
  };
  for (const s of src.streams()) follow(s);
  const timer = setInterval(tick, PEER_TICK_MS);
  res.on('close', () => {
    clearInterval(timer);
    for (const off of unlisten.values()) off();
    unlisten.clear();
  });
}

/** The `flush` parameter: a comma-separated list of stream names, or '*'. */
export function parseFlushParam(v: string | null): ReadonlySet<string> | '*' {
  if (v === null || v === '') return new Set();
  if (v === '*') return '*';
  return new Set(v.split(','));
}
