/**
 * A walkeeper node in the simulation: the product's decision code — Quorum
 * and commit_lsn (cluster/quorum.ts), CommitLsn (stream/commit_lsn.ts),
 * PeerDemand, the WriterLock and RecoveryTrigger (cluster/writer_lock.ts),
 * WalHandout (receiver/handout.ts), retentionHorizon
 * (cluster/retention.ts), electOffloader (offload/policy.ts) and the
 * ingest Backoff — wired as ts/node wires them, around a simulated disk and
 * network instead of files and sockets. What the product does with I/O
 * (the send loop, the fsync, the peer watch's pushes) is modelled here in
 * a few lines each; the decisions are not copied.
 */
import { PeerDemand, Quorum, type QuorumStream } from '../ts/cluster/quorum.js';
import { retentionHorizon } from '../ts/cluster/retention.js';
import { RecoveryTrigger, WriterLock } from '../ts/cluster/writer_lock.js';
import { Backoff } from '../ts/ingest/backoff.js';
import { silentLogger, type Logger } from '../ts/log.js';
import { formatLsn, type Lsn } from '../ts/lsn.js';
import type { NodeStatus } from '../ts/member_status.js';
import { electOffloader } from '../ts/offload/policy.js';
import { PeerPushRule } from '../ts/http/peer_watch.js';
import { SILENCE_MS } from '../ts/cluster/broker/embedded.js';
import { WalHandout } from '../ts/receiver/handout.js';
import { CommitLsn } from '../ts/stream/commit_lsn.js';
import { LsnWatch } from '../ts/stream/watch.js';
import { ReplicaRegistry, type Replica } from '../ts/stream/replica.js';
import { clip, wrongBytes, type Extent, type ObjectStore, WalDisk } from './disk.js';
import type { Conn, Net, Side, Timer, World } from './world.js';

export const SYSTEM_ID = 7300000000000000001n;
const LOG: Logger = silentLogger();

export interface SimConfig {
  nodes: number;
  segmentSize: bigint;
  keepBytes: bigint;
  offload: boolean;
  replicaWindowMs: number;
  retentionEveryMs: number;
}

/** Messages on simulated connections. */
export type Msg =
  | { t: 'start'; start: Lsn; recovery: boolean; client: string }
  | { t: 'wal'; start: Lsn; len: number; origin: Lsn; walEnd: Lsn }
  | { t: 'keepalive'; walEnd: Lsn }
  | { t: 'error'; message: string }
  | { t: 'feedback'; flush: Lsn }
  | { t: 'watch'; mode: 'flush' | 'heartbeat' }
  | { t: 'status'; s: PeerReport }
  | { t: 'alive' }
  | { t: 'get' };

export interface PeerReport {
  nodeId: number;
  flushLsn: Lsn;
  /** null: not known yet after a restart (CommitLsn). */
  commitLsn: Lsn | null;
  oldestLsn: Lsn | null;
  backupLsn: Lsn | null;
}

/** What everyone was ever told, and the ground truth the invariants read. */
export interface Truth {
  /** Highest commit_lsn any node served up to or reported (to clients, peers, receivers). */
  maxReportedCommit: Lsn;
  /** Per node: the highest commit_lsn it ever reported in its status, across restarts. */
  reportedBy: Map<number, Lsn>;
}

class SimStream implements QuorumStream {
  readonly name = 'main';
  readonly log = LOG;
  readonly systemId = SYSTEM_ID;
  readonly flushWatch: LsnWatch;
  readonly commitWatch: LsnWatch;
  readonly commit: CommitLsn;

  constructor(
    readonly segmentSize: number,
    flush: Lsn,
    commit: Lsn,
  ) {
    this.flushWatch = new LsnWatch(flush);
    this.commitWatch = new LsnWatch(commit);
    // As Stream.open after a crash: nothing is reported until a quorum reaches the end of WAL found.
    this.commit = new CommitLsn(this.commitWatch, flush);
  }

  get flushLsn(): Lsn {
    return this.flushWatch.value;
  }
  get commitLsn(): Lsn {
    return this.commitWatch.value;
  }
  get reportedCommitLsn(): Lsn | null {
    return this.commit.reported;
  }
  setCommitLsn(lsn: Lsn): void {
    if (lsn > this.flushLsn) throw new Error(`commit_lsn ${formatLsn(lsn)} above flush_lsn ${formatLsn(this.flushLsn)}`);
    this.commit.raise(lsn);
  }
}

interface Session {
  conn: Conn<Msg>;
  recovery: boolean;
  sent: Lsn;
  /** Reading from object storage (below the oldest local segment). */
  archiveBusy: boolean;
  keepalive: Timer | null;
  replica: Replica;
}

interface Writer {
  who: 'ingest' | 'recovery';
  conn: Conn<Msg>;
  release: (() => void) | null;
  handout: WalHandout;
  stopping: boolean;
}

/** Everything a crash loses. */
class Life {
  stream!: SimStream;
  quorum!: Quorum;
  readonly lock = new WriterLock();
  readonly trigger = new RecoveryTrigger(1000);
  readonly demand = new PeerDemand(5000);
  readonly backoff = new Backoff();
  ingestConn: Conn<Msg> | null = null;
  ingestStreaming = false;
  ingestAttemptAt = 0;
  writer: Writer | null = null;
  recovery: Writer | null = null;
  fsyncing = false;
  fsyncAgain = false;
  storageError = false;
  readonly sessions = new Set<Session>();
  /** Peers watching this node: their connection and what they asked for. */
  /** Peers watching this node: the push rule (peer_watch.ts) and whether anything went out since the last tick. */
  readonly watchers = new Map<Conn<Msg>, { rule: PeerPushRule; wrote: boolean }>();
  /** This node's watch on each peer. */
  readonly watching = new Map<number, Conn<Msg> | null>();
  readonly replicas = new ReplicaRegistry();
  /** Segments being offloaded (false) or offloaded ahead of backup_lsn (true), by start. */
  readonly uploads = new Map<Lsn, boolean>();
  controlTimer: Timer | null = null;
  timers: Timer[] = [];
}

export class SimNode {
  readonly host: string;
  readonly disk: WalDisk;
  /** The control file: flush/commit/backup LSN as last persisted (a second late, as Stream.persistSoon). */
  control: { flush: Lsn; commit: Lsn; backupLsn: Lsn | null };
  backupLsn: Lsn | null = null;
  life: Life | null = null;
  up = false;
  crashes = 0;
  /** Restarts with the control file's commit_lsn below what the node had reported (CommitLsn holds the report back). */
  commitBehind = 0;

  constructor(
    readonly id: number,
    private readonly world: World,
    private readonly net: Net,
    private readonly cfg: SimConfig,
    private readonly store: ObjectStore,
    private readonly truth: Truth,
    private readonly primaryHost: string,
    start: Lsn,
  ) {
    this.host = `n${id}`;
    this.disk = new WalDisk(start);
    this.control = { flush: start, commit: start, backupLsn: null };
  }

  private peers(): number[] {
    const out: number[] = [];
    for (let i = 1; i <= this.cfg.nodes; i++) if (i !== this.id) out.push(i);
    return out;
  }

  /** Whether ingest streams from the upstream now. */
  get ingesting(): boolean {
    return this.life?.ingestStreaming === true && this.life.writer !== null;
  }

  get stream(): SimStream | null {
    return this.life?.stream ?? null;
  }

  /**
   * Starts (or restarts) the node from what its disk holds, as Stream.open:
   * the end of WAL is what survived; commit_lsn is the control file's (a
   * lower bound), reported only once a quorum reaches that end; WAL ending
   * below commit_lsn refuses the start.
   */
  start(): void {
    const w = this.world;
    const end = this.disk.end;
    this.disk.durable = end;
    const commit = this.control.commit;
    if (end < commit) {
      w.fail(`${this.host}: valid WAL ends at ${formatLsn(end)}, below its commit_lsn ${formatLsn(commit)}: the node refuses to start (acknowledged WAL lost)`);
      return;
    }
    if (commit < (this.truth.reportedBy.get(this.id) ?? 0n)) this.commitBehind++;
    const life = new Life();
    this.life = life;
    this.up = true;
    this.backupLsn = this.control.backupLsn;
    life.stream = new SimStream(Number(this.cfg.segmentSize), end, commit);
    const s = life.stream;
    s.commitWatch.listen((lsn) => {
      // Clients may be served up to it from now on; peers and receivers hear it once it is reported.
      if (lsn > this.truth.maxReportedCommit) this.truth.maxReportedCommit = lsn;
      this.reported(s);
      this.persistSoon(life);
      this.pumpAll(life);
    });
    s.flushWatch.listen(() => {
      this.persistSoon(life);
      this.pushFlush(life);
      this.pumpAll(life, true);
    });
    // Its status says commit_lsn at once when it is known (nothing past the control file's value to doubt).
    this.reported(s);
    life.quorum = new Quorum(s, { nodeId: this.id }, { peers: this.peers().map(String), membershipKnown: true }, () => this.world.now);
    this.net.listen(this.host, (conn, what) => this.accept(life, conn as Conn<Msg>, what));
    for (const p of this.peers()) this.watchPeer(life, p);
    this.every(life, 250, 'tick', () => this.tick(life));
    this.every(life, this.cfg.retentionEveryMs, 'retention', () => this.retain(life));
    if (this.cfg.offload) this.every(life, 1000, 'offload', () => this.offload(life));
    this.connectUpstream(life);
    w.note(`${this.host} up flush=${formatLsn(end)} commit=${formatLsn(commit)}`);
  }

  crash(): void {
    if (!this.up) return;
    const life = this.life!;
    this.up = false;
    this.life = null;
    this.crashes++;
    for (const t of life.timers) t.cancel();
    life.controlTimer?.cancel();
    this.net.crash(this.host);
    this.disk.crash(this.world);
    this.world.note(`${this.host} crashed, WAL ends at ${formatLsn(this.disk.end)}`);
  }

  private every(life: Life, ms: number, what: string, fn: () => void): void {
    const w = this.world;
    const first = w.rng.int(0, ms);
    const run = (): void => {
      if (this.life !== life) return;
      fn();
      life.timers.push(w.after(ms, `${this.host} ${what}`, run));
    };
    life.timers.push(w.after(first, `${this.host} ${what}`, run));
  }

  private fsyncMs(): number {
    const r = this.world.rng;
    return r.chance(0.02) ? r.int(20, 200) : 0.2 + r.float() * 2;
  }

  // --- durability ---------------------------------------------------------

  /** The node's status now says commit_lsn is what it reports: it must not be below anything it said before, in any life. */
  private reported(s: SimStream): void {
    const r = s.reportedCommitLsn;
    if (r === null) return;
    const before = this.truth.reportedBy.get(this.id) ?? 0n;
    if (r < before) this.world.fail(`${this.host}: reports commit_lsn ${formatLsn(r)}, below the ${formatLsn(before)} it had reported (commit_lsn went back across a restart)`);
    else if (r > before) this.truth.reportedBy.set(this.id, r);
  }

  /** The control file, written lazily (Stream.persistSoon: a second). */
  private persistSoon(life: Life): void {
    if (life.controlTimer) return;
    life.controlTimer = this.world.after(1000, `${this.host} control file`, () => {
      if (this.life !== life) return;
      life.controlTimer = null;
      const snap = { flush: life.stream.flushLsn, commit: life.stream.commitLsn, backupLsn: this.backupLsn };
      this.world.after(this.fsyncMs(), `${this.host} control file written`, () => {
        if (this.life === life) this.control = snap;
      });
    });
  }

  /** fsync what was appended; flush_lsn follows (Stream.flushWal). */
  private flush(life: Life): void {
    if (life.fsyncing) {
      life.fsyncAgain = true;
      return;
    }
    if (this.disk.end === this.disk.durable && this.disk.durable === life.stream.flushLsn) return;
    life.fsyncing = true;
    const target = this.disk.end;
    this.world.after(this.fsyncMs(), `${this.host} fsync`, () => {
      if (this.life !== life) return;
      life.fsyncing = false;
      if (target > this.disk.durable) this.disk.durable = target;
      life.stream.flushWatch.set(this.disk.durable);
      life.quorum.update();
      if (life.fsyncAgain) {
        life.fsyncAgain = false;
        this.flush(life);
      }
      this.writerFlushed(life);
    });
  }

  // --- writers: ingest and peer recovery ------------------------------------

  /** A writer's WAL message: appended only by the lock's holder. */
  private append(life: Life, wr: Writer, m: Extract<Msg, { t: 'wal' }>): void {
    if (wr.stopping) return;
    const why = wr.handout.accept(m.start, m.len, m.walEnd);
    if (why) {
      this.world.note(`${this.host} ${wr.who}: ${why}`);
      this.endWriter(life, wr);
      return;
    }
    if (life.lock.heldBy !== wr.who || (wr.who === 'ingest' ? life.writer : life.recovery) !== wr || wr.release === null) {
      this.world.fail(`${this.host}: ${wr.who} appended WAL at ${formatLsn(m.start)} while the writer lock is held by ${life.lock.heldBy ?? 'nobody'} (two writers)`);
      return;
    }
    if (m.origin !== m.start) this.world.fail(`${this.host}: ${wr.who} received bytes of ${formatLsn(m.origin)} at ${formatLsn(m.start)}`);
    try {
      this.disk.append(m.start, m.len, m.origin);
    } catch (err) {
      const e = err as Error & { code?: string };
      if (e.code !== 'ENOSPC') {
        this.world.fail(`${this.host}: ${wr.who}: ${e.message}`);
        return;
      }
      // Stream.storageFailed: the writer stops; the next one starts from flush_lsn.
      life.storageError = true;
      this.world.note(`${this.host} ${wr.who}: disk full`);
      this.endWriter(life, wr);
      return;
    }
    this.flush(life);
  }

  /** A writer ends: what it wrote is flushed, then the lock goes (recovery.ts's finally). */
  private endWriter(life: Life, wr: Writer): void {
    if (wr.stopping) return;
    wr.stopping = true;
    wr.conn.close(0, 'writer stopped');
    if (wr.who === 'ingest') {
      life.ingestStreaming = false;
      if (life.ingestConn === wr.conn) life.ingestConn = null;
    }
    this.flush(life);
    this.writerFlushed(life);
  }

  private writerFlushed(life: Life): void {
    for (const wr of [life.writer, life.recovery]) {
      if (!wr || !wr.stopping || wr.release === null) continue;
      if (life.fsyncing || (this.disk.end !== this.disk.durable && !life.storageError)) continue;
      const release = wr.release;
      wr.release = null;
      if (wr.who === 'ingest') {
        life.writer = null;
        this.world.after(life.backoff.next(life.ingestAttemptAt, this.world.now), `${this.host} ingest retry`, () => this.connectUpstream(life));
      } else life.recovery = null;
      release();
      this.world.asyncPending = true;
    }
  }

  /** Before a writer starts: after a failed write, drop what was not fsynced (Stream.resetToFlushed). */
  private resetToFlushed(life: Life): void {
    if (!life.storageError) return;
    this.disk.truncate(life.stream.flushLsn);
    life.storageError = false;
  }

  private connectUpstream(life: Life): void {
    if (this.life !== life || life.ingestConn) return;
    life.ingestAttemptAt = this.world.now;
    const wr: Writer = { who: 'ingest', conn: null!, release: null, handout: new WalHandout(null), stopping: false };
    const side: Side<Msg> & { opened(): void } = {
      opened: () => {
        if (this.life !== life) return;
        // The upstream answers: take the stream from peer recovery (WriterLock.acquire makes it yield), then START at flush_lsn.
        this.world.asyncPending = true;
        void life.lock.acquire('ingest').then((release) => {
          if (this.life !== life || !conn.open || wr.stopping) {
            release();
            this.world.asyncPending = true;
            if (this.life === life && life.ingestConn === conn) {
              life.ingestConn = null;
              life.writer = null;
              this.world.after(life.backoff.next(life.ingestAttemptAt, this.world.now), `${this.host} ingest retry`, () => this.connectUpstream(life));
            }
            return;
          }
          wr.release = release;
          life.writer = wr;
          this.resetToFlushed(life);
          const start = life.stream.flushLsn;
          wr.handout = new WalHandout(start);
          life.ingestStreaming = true;
          this.world.note(`${this.host} ingest START ${formatLsn(start)}`);
          conn.send(0, { t: 'start', start, recovery: false, client: this.host });
        });
      },
      message: (m) => {
        if (this.life !== life) return;
        if (m.t === 'wal') {
          life.backoff.reset();
          this.append(life, wr, m);
        } else if (m.t === 'error') this.endWriter(life, wr);
      },
      closed: () => {
        if (this.life !== life) return;
        if (life.ingestConn === conn) life.ingestConn = null;
        if (wr.release) this.endWriter(life, wr);
        else if (!wr.stopping) {
          wr.stopping = true;
          life.ingestStreaming = false;
          this.world.after(life.backoff.next(life.ingestAttemptAt, this.world.now), `${this.host} ingest retry`, () => this.connectUpstream(life));
        }
      },
    };
    const conn = this.net.connect<Msg>(this.host, this.primaryHost, 'ingest', side);
    wr.conn = conn;
    life.ingestConn = conn;
  }

  /** Every 250 ms: peer recovery's check, and the heartbeat to peers. */
  private tick(life: Life): void {
    const s = life.stream;
    if (!life.recovery) {
      const m = life.trigger.check(this.world.now, life.ingestStreaming, s.flushLsn, life.quorum.list());
      if (m) this.startRecovery(life, Number(m.key));
    }
    for (const [conn, wtch] of life.watchers) {
      const rep = this.report(life);
      if (wtch.rule.changed(fingerprint(rep))) this.pushTo(conn, wtch, rep);
      if (!wtch.wrote) conn.send(1, { t: 'alive' });
      wtch.wrote = false;
    }
  }

  private startRecovery(life: Life, peer: number): void {
    const wr: Writer = { who: 'recovery', conn: null!, release: null, handout: new WalHandout(null), stopping: false };
    const release = life.lock.tryAcquire('recovery', () => this.endWriter(life, wr));
    if (!release) return;
    wr.release = release;
    life.recovery = wr;
    this.resetToFlushed(life);
    const start = life.stream.flushLsn;
    wr.handout = new WalHandout(start);
    this.world.note(`${this.host} recovery from n${peer} at ${formatLsn(start)}`);
    wr.conn = this.net.connect<Msg>(this.host, `n${peer}`, 'recovery', {
      opened: () => {
        if (this.life === life && !wr.stopping) wr.conn.send(0, { t: 'start', start, recovery: true, client: `${this.host}-recovery` });
      },
      message: (m) => {
        if (this.life !== life) return;
        if (m.t === 'wal') this.append(life, wr, m);
        else if (m.t === 'error') this.endWriter(life, wr);
      },
      closed: () => {
        if (this.life === life) this.endWriter(life, wr);
      },
    });
  }

  // --- serving: senders, the peer watch, statuses -------------------------

  report(life: Life): PeerReport {
    const s = life.stream;
    return { nodeId: this.id, flushLsn: s.flushLsn, commitLsn: s.reportedCommitLsn, oldestLsn: this.disk.oldestHeld, backupLsn: this.backupLsn };
  }

  private accept(life: Life, conn: Conn<Msg>, what: string): Side<unknown> | null {
    if (this.life !== life) return null;
    if (what === 'watch') {
      const open = (prompt: boolean): void => {
        const wtch = { rule: new PeerPushRule(prompt, life.stream.flushLsn, this.cfg.segmentSize), wrote: false };
        life.watchers.set(conn, wtch);
        this.pushTo(conn, wtch, this.report(life));
      };
      open(false);
      return {
        message: (m: Msg) => {
          // The peer's demand changed: it watches anew (`flush=` names the stream or not), and hears the status at once.
          if (this.life === life && m.t === 'watch' && life.watchers.has(conn)) open(m.mode === 'flush');
        },
        closed: () => life.watchers.delete(conn),
      };
    }
    if (what === 'http') {
      return {
        message: (m: Msg) => {
          if (this.life === life && m.t === 'get') conn.send(1, { t: 'status', s: this.report(life) });
        },
        closed: () => undefined,
      };
    }
    // A replication client (a receiver, or a peer's recovery).
    let session: Session | null = null;
    return {
      message: (m: Msg) => {
        if (this.life !== life) return;
        if (m.t === 'start' && !session) session = this.startSending(life, conn, m);
        else if (m.t === 'feedback' && session) session.replica.feedback.flushLsn = m.flush;
      },
      closed: () => {
        if (this.life !== life || !session) return;
        this.endSession(life, session);
      },
    };
  }

  /** START_REPLICATION (session.ts's preflight, then send_wal.ts's loop). */
  private startSending(life: Life, conn: Conn<Msg>, m: Extract<Msg, { t: 'start' }>): Session | null {
    const s = life.stream;
    const oldest = this.disk.oldestHeld;
    const archived = this.cfg.offload && this.backupLsn !== null && m.start < this.backupLsn && (oldest === null || m.start < oldest);
    let err: string | null = null;
    if (m.start > s.flushLsn) err = `requested starting point ${formatLsn(m.start)} is ahead of the WAL flush position of this server ${formatLsn(s.flushLsn)}`;
    else if ((oldest === null || m.start < oldest) && !archived) err = `requested WAL segment at ${formatLsn(m.start)} has already been removed`;
    if (err) {
      conn.send(1, { t: 'error', message: err });
      conn.close(1, err);
      return null;
    }
    const replica = life.replicas.register({ applicationName: m.client, address: `${m.client}:5432`, recovery: m.recovery, slot: null, tli: 1, startLsn: m.start });
    const session: Session = { conn, recovery: m.recovery, sent: m.start, archiveBusy: false, keepalive: null, replica };
    life.sessions.add(session);
    this.clientsChanged(life);
    const ka = (): void => {
      if (this.life !== life || !life.sessions.has(session)) return;
      conn.send(1, { t: 'keepalive', walEnd: this.limit(life, session) });
      session.keepalive = this.world.after(1000, `${this.host} keepalive`, ka);
    };
    ka();
    this.pump(life, session);
    return session;
  }

  private endSession(life: Life, session: Session): void {
    if (!life.sessions.delete(session)) return;
    session.keepalive?.cancel();
    life.replicas.unregister(session.replica, this.world.now);
    this.clientsChanged(life);
  }

  private clientsChanged(life: Life): void {
    const before = life.demand.prompt(this.world.now);
    life.demand.setClients(life.replicas.regular, this.world.now);
    this.applyDemand(life, before);
  }

  private applyDemand(life: Life, before: boolean): void {
    const now = this.world.now;
    const want = life.demand.prompt(now);
    if (want !== before) for (const c of life.watching.values()) c?.send(0, { t: 'watch', mode: want ? 'flush' : 'heartbeat' });
    const at = life.demand.lapsesAt(now);
    if (at !== null) {
      life.timers.push(
        this.world.at(at, `${this.host} demand lapses`, () => {
          if (this.life === life) this.applyDemand(life, true);
        }),
      );
    }
  }

  /** What a session may be sent: flush_lsn for recovery, commit_lsn for everyone else (send_wal.ts). */
  private limit(life: Life, session: Session): Lsn {
    return session.recovery ? life.stream.flushLsn : life.stream.commitLsn;
  }

  private pumpAll(life: Life, flushOnly = false): void {
    for (const x of life.sessions) if (!flushOnly || x.recovery) this.pump(life, x);
  }

  private pump(life: Life, x: Session): void {
    if (x.archiveBusy || !x.conn.open) return;
    const limit = this.limit(life, x);
    const seg = this.cfg.segmentSize;
    while (x.sent < limit) {
      if (x.sent < this.disk.oldest || this.disk.ext.length === 0) {
        // Below the oldest local segment: read back from object storage (offload/archive_reader.ts).
        if (!(this.cfg.offload && this.backupLsn !== null && x.sent < this.backupLsn)) {
          x.conn.send(1, { t: 'error', message: `requested WAL segment at ${formatLsn(x.sent)} has already been removed` });
          x.conn.close(1, 'removed');
          this.endSession(life, x);
          return;
        }
        const segStart = x.sent - (x.sent % seg);
        x.archiveBusy = true;
        this.store.get(segName(segStart), (err, ext) => {
          x.archiveBusy = false;
          if (this.life !== life || !life.sessions.has(x)) return;
          if (err || !ext || !covers(ext, segStart, segStart + seg)) {
            x.conn.send(1, { t: 'error', message: `cannot read ${segName(segStart)} from object storage: ${err ?? 'missing'}` });
            x.conn.close(1, 'archive');
            this.endSession(life, x);
            return;
          }
          const bad = wrongBytes(ext);
          if (bad !== null) this.world.fail(`${this.host}: object ${segName(segStart)} holds wrong bytes at ${formatLsn(bad)}`);
          const lim = this.limit(life, x);
          for (const e of clip(ext, x.sent, segStart + seg < lim ? segStart + seg : lim)) {
            x.conn.send(1, { t: 'wal', start: e.start, len: Number(e.end - e.start), origin: e.origin, walEnd: lim });
            x.sent = e.end;
          }
          this.pump(life, x);
        });
        return;
      }
      const to = x.sent + 16384n < limit ? x.sent + 16384n : limit;
      for (const e of this.disk.read(x.sent, to)) {
        x.conn.send(1, { t: 'wal', start: e.start, len: Number(e.end - e.start), origin: e.origin, walEnd: limit });
        x.sent = e.end;
      }
      if (x.sent < to) {
        this.world.fail(`${this.host}: WAL below ${formatLsn(limit)} is missing at ${formatLsn(x.sent)} (disk ends at ${formatLsn(this.disk.end)})`);
        return;
      }
    }
  }

  /** A flush: each watching peer's push rule says whether it hears now (peer_watch.ts). */
  private pushFlush(life: Life): void {
    for (const [conn, wtch] of life.watchers) if (wtch.rule.onFlush(life.stream.flushLsn)) this.pushTo(conn, wtch, this.report(life));
  }

  private pushTo(conn: Conn<Msg>, wtch: { rule: PeerPushRule; wrote: boolean }, rep: PeerReport): void {
    wtch.rule.wrote(fingerprint(rep));
    wtch.wrote = true;
    conn.send(1, { t: 'status', s: rep });
  }

  /**
   * Holds a watch on peer `p`; reconnects 250–1000 ms after it is lost, and
   * drops it when it falls silent for SILENCE_MS (the embedded broker's
   * rule: a stalled connection is not a live peer).
   */
  private watchPeer(life: Life, p: number): void {
    if (this.life !== life) return;
    const key = String(p);
    let heardAt = this.world.now;
    const silence = (): void => {
      if (this.life !== life || !conn.open) return;
      if (this.world.now - heardAt > SILENCE_MS) {
        conn.close(0, 'silent');
        life.watching.set(p, null);
        this.world.after(this.world.rng.int(250, 1000), `${this.host} rewatch n${p}`, () => this.watchPeer(life, p));
        return;
      }
      life.timers.push(this.world.after(1000, `${this.host} watch silence n${p}`, silence));
    };
    const conn = this.net.connect<Msg>(this.host, `n${p}`, 'watch', {
      opened: () => {
        if (this.life === life && life.demand.prompt(this.world.now)) conn.send(0, { t: 'watch', mode: 'flush' });
      },
      message: (m) => {
        if (this.life !== life) return;
        heardAt = this.world.now;
        if (m.t === 'status') {
          life.quorum.onStatus(nodeStatus(key, m.s, Number(this.cfg.segmentSize)));
          if (m.s.backupLsn !== null && (this.backupLsn === null || m.s.backupLsn > this.backupLsn)) {
            this.backupLsn = m.s.backupLsn;
            this.persistSoon(life);
          }
        } else if (m.t === 'alive') life.quorum.heard(key);
      },
      closed: () => {
        if (this.life !== life) return;
        life.watching.set(p, null);
        this.world.after(this.world.rng.int(250, 1000), `${this.host} rewatch n${p}`, () => this.watchPeer(life, p));
      },
    });
    life.watching.set(p, conn);
    life.timers.push(this.world.after(1000, `${this.host} watch silence n${p}`, silence));
  }

  // --- retention and offload ----------------------------------------------

  private retain(life: Life): void {
    const s = life.stream;
    const now = this.world.now;
    const replicas = life.replicas.retention(now, this.cfg.replicaWindowMs);
    const h = retentionHorizon({
      commitLsn: s.commitLsn,
      flushLsn: s.flushLsn,
      slots: [],
      replicas,
      keepBytes: this.cfg.keepBytes,
      backupLsn: this.cfg.offload ? this.backupLsn : undefined,
    });
    const before = this.disk.oldest;
    this.disk.removeBelow(h.lsn, this.cfg.segmentSize);
    if (this.disk.oldest !== before) {
      this.world.note(`${this.host} removed WAL below ${formatLsn(this.disk.oldest)} (held by ${h.heldBy})`);
      this.removed?.(this, before, this.disk.oldest);
    }
  }

  /** Told of every removal, with the range removed (the run checks it against the ground truth). */
  removed: ((node: SimNode, from: Lsn, to: Lsn) => void) | null = null;

  /**
   * The offloader (offloader.ts's shape): every member runs the election;
   * the chosen one keeps up to eight whole segments below commit_lsn in
   * flight, and backup_lsn moves past a segment only once it and every one
   * before it are complete in the store.
   */
  private offload(life: Life): void {
    const s = life.stream;
    const now = this.world.now;
    const oldest = this.disk.oldestHeld;
    const peers = life.quorum
      .list()
      .filter((m) => m.nodeId !== null)
      .map((m) => ({ nodeId: m.nodeId!, commitLsn: m.commitLsn, oldestLsn: m.oldestLsn, heardAt: m.heardAt }));
    const e = electOffloader('main', { nodeId: this.id, commitLsn: s.reportedCommitLsn, oldestLsn: oldest, heardAt: null }, peers, this.backupLsn, now);
    if (e.offloader !== this.id) return;
    const seg = this.cfg.segmentSize;
    const base = this.backupLsn ?? this.firstLsn;
    // backup_lsn may have moved past segments this node completed ahead of it (a peer reported it did them too).
    for (const [k, up] of life.uploads) if (up && k < base) life.uploads.delete(k);
    let inFlight = 0;
    for (const up of life.uploads.values()) if (!up) inFlight++;
    for (let from = base; inFlight < 8; from += seg) {
      const to = from + seg;
      if (to > s.commitLsn) break;
      if (life.uploads.has(from)) continue;
      if (from - base > 64n * seg) break;
      if (oldest === null || oldest > from) break;
      const ext = this.disk.read(from, to);
      if (!covers(ext, from, to)) {
        this.world.fail(`${this.host}: segment ${segName(from)} to offload is not whole on disk`);
        return;
      }
      life.uploads.set(from, false);
      inFlight++;
      this.store.put(segName(from), ext, (err) => {
        if (this.life !== life) return;
        if (err) {
          life.uploads.delete(from);
          return;
        }
        life.uploads.set(from, true);
        let b = this.backupLsn ?? this.firstLsn;
        while (life.uploads.get(b) === true) {
          life.uploads.delete(b);
          b += seg;
        }
        if (this.backupLsn === null || b > this.backupLsn) {
          this.backupLsn = b;
          this.persistSoon(life);
        }
        this.offload(life);
      });
    }
  }

  /** Where the stream began (the first segment anyone offloads). */
  firstLsn: Lsn = 0n;
}

function fingerprint(r: PeerReport): string {
  return `${r.flushLsn}/${r.commitLsn}/${r.oldestLsn}/${r.backupLsn}`;
}

export function nodeStatus(key: string, r: PeerReport, segmentSize: number): NodeStatus {
  return {
    nodeId: key,
    nodeNumber: r.nodeId,
    commitLsn: r.commitLsn,
    flushLsn: r.flushLsn,
    pgAddress: `n${r.nodeId}:5432`,
    availabilityZone: null,
    systemId: SYSTEM_ID,
    tli: 1,
    segmentSize,
    pgVersion: 15,
    httpAddress: null,
    remoteConsistentLsn: null,
    oldestLsn: r.oldestLsn,
    backupLsn: r.backupLsn,
  };
}

export function segName(start: Lsn): string {
  return `seg-${start.toString(16).toUpperCase().padStart(12, '0')}`;
}

export function covers(ext: readonly Extent[], from: Lsn, to: Lsn): boolean {
  let at = from;
  for (const e of ext) {
    if (e.start > at) return false;
    if (e.end > at) at = e.end;
    if (at >= to) return true;
  }
  return at >= to;
}

