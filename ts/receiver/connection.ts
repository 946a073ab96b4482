/**
 * One replication connection of a receiver to one node: IDENTIFY_SYSTEM
 * (the system id must be the one this receiver holds), START_REPLICATION at
 * the next needed position, XLogData checked and handed on, 'r' and 'z'
 * feedback out, timeline switches followed on the same connection. A node
 * that sends WAL which cannot be right — not contiguous, of another system,
 * beyond the walEnd it announces in the same message, malformed — ends the
 * connection with a BadNode error, so the receiver puts it on cooldown and
 * goes on with the others; nothing of that WAL is handed on.
 */
import { WalHandout } from './handout.js';
import { formatLsn, type Lsn } from '../lsn.js';
import { ReplicationClient, type CopyBoth } from '../client/client.js';
import { PgError, ProtocolError } from '../protocol/errors.js';
import { neonFeedback, pgNow } from '../protocol/replication.js';
import { PageHeaderCheck } from '../wal/page_check.js';
import type { ReceivePump, WalStore } from '../wal/wal_storage.js';
import type { PumpReport } from '../wal/wal_storage.js';
import type { NodeStatus } from '../member_status.js';

/** The node did something a correct node never does. */
export class BadNode extends Error {}

export interface ConnectionParams {
  stream: string;
  /** First byte needed; null: start at the segment start of the node's position (a fresh directory). */
  startLsn: Lsn | null;
  tli: number | null;
  systemId: bigint | null;
  user: string;
  password?: string;
  applicationName: string;
  connectTimeoutMs: number;
  /** Write WAL into this store from the Rust pump (see WalReceiverOptions.sink). */
  sink?: { store: WalStore; synchronous: boolean; endLsn?: Lsn };
}

export interface ConnectionHandlers {
  established(startLsn: Lsn, tli: number, systemId: bigint): void;
  /** Valid WAL, contiguous with everything handed on before. */
  data(start: Lsn, data: Buffer, walEnd: Lsn, tli: number): void;
  keepalive(walEnd: Lsn): void;
  /** The node's timeline `tli` ended at `start`; `history` is the next timeline's history file. */
  timeline(tli: number, start: Lsn, history: string): void;
  /** Sink mode: what the pump received, appended and fsynced. */
  progress(r: PumpReport): void;
  /** Sink mode: the socket could not be lent; WAL goes to data() instead. */
  noPump(): void;
}

export type ConnectionEnd =
  | { kind: 'clean'; message: string }
  | { kind: 'lost'; error: Error }
  | { kind: 'bad'; error: BadNode }
  /** Sink mode: the store failed (write or fsync); the receiver stops. */
  | { kind: 'store'; error: Error }
  /** Sink mode: WAL past endLsn was received and fsynced. */
  | { kind: 'endpos' };

function splitAddress(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  return { host: a.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(a.slice(i + 1)) };
}

export class ReceiverConnection {
  private client: ReplicationClient | null = null;
  private copy: CopyBoth | null = null;
  private closed = false;
  private received: Lsn = 0n;
  private acked: Lsn = 0n;
  private pump: ReceivePump | null = null;
  /** Sink mode: a pump wrote into the store on this connection. */
  private pumped = false;

  constructor(
    readonly node: NodeStatus,
    private readonly p: ConnectionParams,
    private readonly h: ConnectionHandlers,
  ) {}

  /** Reports progress: 'r' (write = received, flush = apply = acked) and Neon's 'z'. */
  feedback(acked: Lsn, replyRequested = false): void {
    this.acked = acked;
    const c = this.copy;
    if (!c || !c.canSend) return;
    c.sendStatus({ write: this.received, flush: acked, apply: acked, replyRequested });
    c.send(neonFeedback({ lastReceivedLsn: this.received, diskConsistentLsn: acked, remoteConsistentLsn: acked, currentTimelineSize: 0n, replyTime: pgNow() }));
  }

  /** Pauses/resumes reading (the consumer is behind). */
  pause(): void {
    this.copy?.pause();
  }
  resume(): void {
    this.copy?.resume();
  }

  close(): void {
    this.closed = true;
    this.pump?.stop();
    this.client?.destroy(new Error('switching to another node'));
  }

  async run(): Promise<ConnectionEnd> {
    try {
      return await this.session();
    } catch (err) {
      if (err instanceof BadNode) return { kind: 'bad', error: err };
      if (err instanceof ProtocolError) return { kind: 'bad', error: new BadNode(`malformed message from the node: ${err.message}`) };
      return { kind: 'lost', error: err as Error };
    } finally {
      this.closed = true;
      await this.client?.close().catch(() => undefined);
    }
  }

  private async session(): Promise<ConnectionEnd> {
    const { host, port } = splitAddress(this.node.pgAddress);
    const client = (this.client = await ReplicationClient.connect({
      host,
      port,
      user: this.p.user,
      password: this.p.password,
      applicationName: this.p.applicationName,
      options: `-c stream=${this.p.stream}`,
      connectTimeoutMs: this.p.connectTimeoutMs,
    }));
    if (this.closed) throw new Error('closed');
    const sys = await client.identifySystem();
    if (this.p.systemId !== null && sys.systemId !== this.p.systemId) {
      throw new BadNode(`node serves database system ${sys.systemId}, this receiver holds WAL of ${this.p.systemId}`);
    }
    if (sys.systemId !== this.node.systemId) throw new BadNode(`node says system ${sys.systemId} on the wire but ${this.node.systemId} over HTTP`);
    let tli = this.p.tli ?? sys.timeline;
    const handout = new WalHandout(this.p.startLsn);
    let start = handout.startOn(sys.xlogpos, this.node.segmentSize);
    this.h.established(start, tli, sys.systemId);
    for (;;) {
      const end = await this.stream(client, handout, tli, sys.systemId);
      if (end.kind !== 'timeline') return end;
      const history = (await client.timelineHistory(end.next)).content;
      if (this.pumped && this.p.sink) {
        // What the pump wrote is flushed; the next timeline's history goes next to it, as pg_receivewal does.
        await this.p.sink.store.putHistory(end.next, history);
      }
      this.h.timeline(end.next, end.at, history);
      tli = end.next;
      start = end.at;
      handout.advanceTo(start);
    }
  }

  private async stream(client: ReplicationClient, handout: WalHandout, tli: number, systemId: bigint): Promise<ConnectionEnd | { kind: 'timeline'; next: number; at: Lsn }> {
    const start = handout.next!;
    const check = new PageHeaderCheck(this.node.segmentSize, systemId, this.node.pgVersion, tli);
    const copy = (this.copy = client.startReplication(`START_REPLICATION ${formatLsn(start)} TIMELINE ${tli}`));
    const sink = this.p.sink;
    let lent: { fd: number; pending: Buffer } | null = null;
    if (sink) {
      copy.onStart = () => {
        lent = copy.lend();
        if (!lent) this.h.noPump();
      };
    }
    let bad: BadNode | null = null;
    const fail = (msg: string) => {
      bad ??= new BadNode(msg);
      client.destroy(bad);
    };
    copy.onXLogData = (m) => {
      if (bad) return;
      const out = handout.accept(m.start, m.data.length, m.end);
      if (out) return fail(out);
      const why = check.check(m.start, m.data);
      if (why) return fail(`node sent invalid WAL: ${why}`);
      this.received = m.start + BigInt(m.data.length);
      this.h.data(m.start, m.data, m.end, tli);
    };
    copy.onKeepalive = (k) => {
      if (bad) return;
      this.h.keepalive(k.walEnd);
      if (k.replyRequested) this.feedback(this.acked);
    };
    if (sink && (await copy.started.catch(() => false)) && lent) {
      const end = await this.runPump(sink, copy, lent, start, tli, systemId);
      if (end) return end;
      // The pump stopped at a message it leaves to us (CopyDone, ErrorResponse): go on below.
      handout.advanceTo(this.received);
    }
    let result;
    try {
      result = await copy.done;
    } catch (err) {
      if (bad) throw bad;
      if (err instanceof ProtocolError) throw new BadNode(`malformed message from the node: ${err.message}`);
      if (err instanceof PgError) return { kind: 'lost', error: err };
      throw err;
    } finally {
      this.copy = null;
    }
    if (bad) throw bad;
    if ((result.reason === 'serverEnd' || result.reason === 'noCopy') && result.nextTimeline) {
      return { kind: 'timeline', next: result.nextTimeline.timeline, at: result.nextTimeline.startLsn };
    }
    // Neon's safekeeper, and a walkeeper node ending a stream, say "ending streaming to …" with SQLSTATE 00000.
    if (result.reason === 'error') return { kind: 'clean', message: result.error?.message ?? 'the node ended the stream' };
    if (result.reason === 'commandComplete') return { kind: 'lost', error: new Error('the node is shutting down') };
    return { kind: 'lost', error: new Error(`the stream ended (${result.reason})`) };
  }

  /**
   * Sink mode: the Rust pump reads the lent socket and appends to the store;
   * here only its reports arrive, and the status updates go out. Returns
   * how the connection ended, or null when the pump gave the stream back.
   */
  private async runPump(
    sink: NonNullable<ConnectionParams['sink']>,
    copy: CopyBoth,
    lent: { fd: number; pending: Buffer },
    start: Lsn,
    tli: number,
    systemId: bigint,
  ): Promise<ConnectionEnd | null> {
    if (tli > sink.store.state.tli) sink.store.setTimeline(tli);
    this.pumped = true;
    const pump = (this.pump = sink.store.pump(lent.fd, lent.pending, { start, tli, systemId, pgVersion: this.node.pgVersion, endLsn: sink.endLsn, synchronous: sink.synchronous }));
    try {
      for (;;) {
        if (this.closed) return { kind: 'lost', error: new Error('switching to another node') };
        const r = await pump.run(100);
        this.received = r.received;
        this.h.progress(r);
        if (r.flushed > this.acked || r.replyRequested) this.feedback(r.flushed > this.acked ? r.flushed : this.acked);
        switch (r.end) {
          case undefined:
            continue;
          case 'other':
            copy.giveBack(r.leftover!);
            return null;
          case 'bad':
            throw new BadNode(r.message!);
          case 'store':
            return { kind: 'store', error: Object.assign(new Error(r.message!), { code: r.code }) };
          case 'endpos':
            return { kind: 'endpos' };
          default:
            return { kind: 'lost', error: new Error(r.message!) };
        }
      }
    } finally {
      this.pump = null;
      await pump.close();
    }
  }
}
