/**
 * The simulation's other actors: the upstream primary, and one walkeeper
 * receiver (the product's ConnectionPolicy and WalHandout) handing WAL to a
 * consumer that checks every byte it is given.
 */
import { formatLsn, type Lsn } from '../ts/lsn.js';
import { ConnectionPolicy } from '../ts/receiver/policy.js';
import { WalHandout } from '../ts/receiver/handout.js';
import type { Msg, PeerReport, Truth } from './node.js';
import type { Conn, Net, Side, World } from './world.js';

/** The upstream: writes WAL at a varying rate and streams it to whoever STARTs. */
export class Primary {
  readonly host = 'pg';
  end: Lsn;
  up = false;
  private sessions = new Set<{ conn: Conn<Msg>; sent: Lsn }>();

  constructor(
    private readonly net: Net,
    start: Lsn,
  ) {
    this.end = start;
  }

  start(): void {
    this.up = true;
    this.sessions.clear();
    this.net.listen(this.host, (c) => {
      const conn = c as Conn<Msg>;
      let x: { conn: Conn<Msg>; sent: Lsn } | null = null;
      return {
        message: (m: Msg) => {
          if (!this.up || m.t !== 'start' || x) return;
          if (m.start > this.end) {
            conn.send(1, { t: 'error', message: `requested starting point ${formatLsn(m.start)} is ahead of the WAL flush position of this server` });
            conn.close(1, 'error');
            return;
          }
          x = { conn, sent: m.start };
          this.sessions.add(x);
          this.push(x);
        },
        closed: () => {
          if (x) this.sessions.delete(x);
        },
      };
    });
  }

  crash(): void {
    this.up = false;
    this.sessions.clear();
    this.net.crash(this.host);
  }

  /** Writes `len` more bytes of WAL (flushed locally first, as a PostgreSQL primary does before sending). */
  write(len: number): void {
    this.end += BigInt(len);
    if (!this.up) return;
    for (const x of this.sessions) this.push(x);
  }

  private push(x: { conn: Conn<Msg>; sent: Lsn }): void {
    while (x.sent < this.end) {
      const to = x.sent + 16384n < this.end ? x.sent + 16384n : this.end;
      x.conn.send(1, { t: 'wal', start: x.sent, len: Number(to - x.sent), origin: x.sent, walEnd: this.end });
      x.sent = to;
    }
  }
}

/**
 * A WalReceiver following the nodes (receiver.ts's loop, around the same
 * ConnectionPolicy and WalHandout). The consumer checks that WAL comes
 * contiguous, never twice, with the upstream's bytes, and never past a
 * commit_lsn some node published.
 */
export class Receiver {
  readonly host = 'rx';
  readonly policy: ConnectionPolicy;
  readonly handout: WalHandout;
  /** End of what the consumer was handed. */
  delivered: Lsn;
  private conn: Conn<Msg> | null = null;
  private connNode: string | null = null;
  private readonly statuses = new Map<string, PeerReport>();
  private readonly http = new Map<string, Conn<Msg> | null>();
  switches = 0;
  /** Per node: when this receiver's last session on it began, and ended (null: streaming now). */
  readonly lastOn = new Map<string, { since: number; ended: number | null }>();

  constructor(
    private readonly world: World,
    private readonly net: Net,
    private readonly truth: Truth,
    private readonly nodes: string[],
    start: Lsn,
    private readonly segmentSize: bigint,
  ) {
    this.policy = new ConnectionPolicy({ maxLsnWalLag: 256n * 1024n });
    this.handout = new WalHandout(start);
    this.delivered = start;
  }

  start(): void {
    for (const n of this.nodes) this.poll(n);
    this.loop();
  }

  /** Status of each node, every 250 ms over a kept-alive HTTP connection (sources.ts). */
  private poll(node: string): void {
    const w = this.world;
    let conn = this.http.get(node) ?? null;
    if (!conn || !conn.open) {
      conn = this.net.connect<Msg>(this.host, node, 'http', {
        opened: () => undefined,
        message: (m) => {
          if (m.t !== 'status') return;
          this.statuses.set(node, m.s);
          this.policy.updateCandidate({ nodeId: node, commitLsn: m.s.commitLsn ?? 0n, pgAddress: `${node}:5432`, availabilityZone: null }, w.now);
          this.loop();
        },
        closed: () => this.http.set(node, null),
      });
      this.http.set(node, conn);
    }
    conn.send(0, { t: 'get' });
    w.after(250, `rx poll ${node}`, () => this.poll(node));
  }

  private loopTimer: { cancel(): void } | null = null;

  private loop(): void {
    const w = this.world;
    const d = this.policy.decide(w.now);
    if (d.action === 'connect') this.switchTo(d.candidate.nodeId, d.reason.kind);
    const at = this.policy.nextDecisionAt(w.now);
    const wait = Math.max(10, Math.min(250, at === null ? 250 : at - w.now));
    this.loopTimer?.cancel();
    this.loopTimer = w.after(wait, 'rx decide', () => this.loop());
  }

  private switchTo(node: string, reason: string): void {
    const w = this.world;
    if (this.conn) {
      const old = this.conn;
      this.conn = null;
      old.close(0, 'switching to another node');
      this.policy.connectionEnded(w.now);
      if (this.connNode) this.ended(this.connNode);
    }
    this.switches++;
    w.note(`rx switch to ${node} (${reason}) at ${formatLsn(this.handout.next ?? 0n)}`);
    this.policy.connectionStarted(node, w.now);
    const status = this.statuses.get(node);
    let bad = false;
    const side: Side<Msg> & { opened(): void } = {
      opened: () => {
        if (this.conn !== conn) return;
        // IDENTIFY_SYSTEM's xlogpos for a regular client is the node's commit_lsn.
        const start = this.handout.startOn(status?.commitLsn ?? 0n, Number(this.segmentSize));
        this.policy.connectionEstablished(w.now);
        conn.send(0, { t: 'start', start, recovery: false, client: this.host });
      },
      message: (m) => {
        if (this.conn !== conn || bad) return;
        // Streaming from this node (its START was accepted): a replica it keeps WAL for.
        if (m.t !== 'error' && this.lastOn.get(node)?.ended !== null) this.lastOn.set(node, { since: w.now, ended: null });
        if (m.t === 'wal') {
          const why = this.handout.accept(m.start, m.len, m.walEnd);
          if (why) {
            bad = true;
            this.policy.markBad(node, w.now);
            this.drop(conn, node);
            return;
          }
          this.consume(m.start, m.len, m.origin, node);
          this.policy.walReceived(m.start + BigInt(m.len), m.walEnd, w.now);
          conn.send(0, { t: 'feedback', flush: this.delivered });
        } else if (m.t === 'keepalive') {
          this.policy.keepaliveReceived(m.walEnd, w.now);
        } else if (m.t === 'error') {
          this.drop(conn, node);
          this.policy.connectionEnded(w.now);
        }
      },
      closed: () => {
        if (this.conn !== conn) return;
        this.conn = null;
        this.ended(node);
        if (!bad) this.policy.connectionEnded(w.now);
        this.loop();
      },
    };
    const conn = this.net.connect<Msg>(this.host, node, 'replication', side);
    this.conn = conn;
    this.connNode = node;
  }

  private ended(node: string): void {
    const e = this.lastOn.get(node);
    if (e && e.ended === null) e.ended = this.world.now;
  }

  private drop(conn: Conn<Msg>, node: string): void {
    if (this.conn !== conn) return;
    this.conn = null;
    this.ended(node);
    conn.close(0, 'dropped');
  }

  /** The consumer: what it is given must be exactly the next bytes, and committed. */
  private consume(start: Lsn, len: number, origin: Lsn, node: string): void {
    const w = this.world;
    const end = start + BigInt(len);
    if (start !== this.delivered) w.fail(`receiver handed out WAL at ${formatLsn(start)} from ${node}, but its consumer had WAL up to ${formatLsn(this.delivered)} (${start > this.delivered ? 'a gap' : 'twice'})`);
    else if (origin !== start) w.fail(`receiver handed out bytes of ${formatLsn(origin)} as ${formatLsn(start)} (from ${node})`);
    else if (end > this.truth.maxReportedCommit) w.fail(`receiver handed out WAL up to ${formatLsn(end)} from ${node}, past every commit_lsn any node published (${formatLsn(this.truth.maxReportedCommit)})`);
    this.delivered = end;
  }
}
