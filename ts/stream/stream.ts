/**
 * A stream: the WAL history of one PostgreSQL cluster (one system id) on
 * this node, across its timelines. All of a stream's state lives here — its
 * LSNs and their watches, timelines, slots, replicas — and ingest, senders,
 * quorum and HTTP hold a reference to it, never to each other.
 */
import { EventEmitter } from 'node:events';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';

import { formatLsn, historyFileName, segmentFileName, segmentStart, type Lsn } from '../lsn.js';
import { readControlFile, writeControlFile, type ControlData, type PartialUpload } from '../wal/control_file.js';

export type { PartialUpload };
import type { Logger } from '../log.js';
import { ReplicaRegistry, type Replica } from './replica.js';
import { nextTimeline, parseHistory, timelineEntry, type TimelineEntry } from '../wal/timeline.js';
import { findEndOfWal, WalStore } from '../wal/wal_storage.js';
import { CommitLsn, unknownCommitReason } from './commit_lsn.js';
import { LsnWatch } from './watch.js';

export type StreamState = 'active' | 'suspended' | 'removed';

/**
 * WAL that left this node for object storage, read back for clients that
 * start below the oldest local segment (set when the node offloads; see
 * offload/archive_reader.ts).
 */
export interface ArchivedWal {
  /** Segment `segno` as it was offloaded, checked; null when the store has none. */
  segment(segno: bigint): Promise<Buffer | null>;
}

export interface Slot {
  name: string;
  /** Oldest WAL the slot's consumer still needs (0 = none reserved). */
  restartLsn: Lsn;
  tli: number;
  temporary: boolean;
  /** The replica streaming through it, if any. */
  activeBy: Replica | null;
}

export const SLOT_NAME_RE = /^[a-z0-9_]{1,63}$/;
const PERSIST_LSN_DELAY_MS = 1000;
const PERSIST_SLOT_DELAY_MS = 50;

export class Stream extends EventEmitter {
  readonly name: string;
  readonly dir: string;
  readonly store: WalStore;
  readonly systemId: bigint;
  readonly pgVersion: number;
  readonly segmentSize: number;
  readonly log: Logger;
  readonly replicas = new ReplicaRegistry();
  readonly slots = new Map<string, Slot>();
  /** End of WAL fsynced here. */
  readonly flushWatch: LsnWatch;
  /** End of WAL known to be on a quorum; what regular clients may be served up to (see CommitLsn for what is reported). */
  readonly commitWatch: LsnWatch;
  /**
   * What this node asks its peers for: every flush (a client waits on
   * commit_lsn here) or a heartbeat (see PeerDemand); null with etcd, whose
   * watch carries every put anyway.
   */
  followPeers: 'flush' | 'heartbeat' | null = 'heartbeat';
  /** Peers following this node's status over HTTP, by what they asked for. */
  readonly followedBy = { flush: 0, heartbeat: 0 };
  private _tli: number;
  private _history: TimelineEntry[];
  private _state: StreamState = 'active';
  private persistTimer: NodeJS.Timeout | undefined;
  private persistDue = 0;
  private persisting: Promise<void> = Promise.resolve();
  /** Set by close(): the control file's commit_lsn is written as exact. */
  private closing = false;

  /** commit_lsn and whether it may be reported yet (after a crash, see CommitLsn). */
  private readonly commit: CommitLsn;

  private constructor(name: string, dir: string, store: WalStore, control: ControlData, reportedAtMost: Lsn | null, history: TimelineEntry[], flush: Lsn, log: Logger) {
    super();
    this.name = name;
    this.dir = dir;
    this.store = store;
    this.systemId = control.systemId;
    this.pgVersion = control.pgVersion;
    this.segmentSize = control.segmentSize;
    this._tli = control.tli;
    this._history = history;
    this.flushWatch = new LsnWatch(flush);
    this.commitWatch = new LsnWatch(control.commitLsn);
    this.log = log;
    this.commit = new CommitLsn(this.commitWatch, reportedAtMost);
    this.commitWatch.listen(() => this.persistSoon());
    for (const [n, s] of Object.entries(control.slots)) {
      this.slots.set(n, { name: n, restartLsn: s.restartLsn, tli: s.tli, temporary: false, activeBy: null });
    }
    this._backupLsn = control.backupLsn ?? null;
    this._partialUploads = control.partialUploads ?? [];
  }

  /**
   * Opens the stream in `dir`: reads its control file, finds the end of
   * valid WAL (a crash may have left a torn tail) and truncates there.
   * Refuses to start when valid WAL ends below commit_lsn: WAL that clients
   * may already have received would be missing.
   */
  static async open(dir: string, log: Logger): Promise<Stream> {
    const name = path.basename(dir);
    const slog = log.child({ stream: name });
    const control = await readControlFile(dir);
    if (control === null) throw new Error(`stream ${name}: ${dir} has no control file (walkeeper.control); is it a stream directory?`);
    const store = await WalStore.open(dir, control.segmentSize, control.tli);
    const historyText = control.tli > 1 ? await store.getHistory(control.tli) : null;
    if (control.tli > 1 && historyText === null) {
      throw new Error(`stream ${name}: timeline ${control.tli} has no history file ${historyFileName(control.tli)} in ${dir}`);
    }
    const history = parseHistory(control.tli, historyText);
    // The control file's commit_lsn is a lower bound (written a second
    // late), exact only after a clean stop.
    const commit = control.commitLsn;
    let end = control.flushLsn;
    let stop = 'no WAL files';
    if (store.list().length > 0) {
      const scan = await findEndOfWal(dir, control.tli, control.segmentSize, segmentStart(control.flushLsn, control.segmentSize), {
        search: true,
        systemId: control.systemId,
        pgVersion: control.pgVersion,
      });
      // Searching from the segment start finds a record boundary even when
      // the recorded flush position is mid-record; with nothing decodable
      // (a segment boundary with no file after it) the end is that start.
      end = scan.end;
      // The recorded flush position was fsynced before it was recorded, so
      // the bytes up to it are durable even when they end inside a record
      // whose rest had not arrived yet (the scan stops before such a
      // record). Keep them — they were acknowledged — as long as their
      // segment is still here.
      if (end < control.flushLsn) {
        const lastSeg = Number((control.flushLsn - 1n) / BigInt(control.segmentSize));
        if (store.list().some((f) => f.segno === lastSeg)) end = control.flushLsn;
      }
      if (end < commit) stop = scan.stopReason;
      else if (end !== control.flushLsn) {
        slog.warn({ flush_lsn: formatLsn(control.flushLsn), end_of_wal: formatLsn(end), reason: scan.stopReason }, 'end of valid WAL differs from the recorded flush position');
      }
    }
    // Refused before anything is cut: the torn tail is left for a look.
    if (end < commit) {
      throw new Error(
        `stream ${name}: valid WAL ends at ${formatLsn(end)}, below commit_lsn ${formatLsn(commit)} ` +
          `(${stop}); WAL that clients may have received is missing, refusing to start`,
      );
    }
    if (store.list().length > 0) await store.truncate(end);
    // After a crash the node may have reported commit_lsn up to the end of
    // its WAL; after a clean stop exactly the recorded value. Exact holds
    // for this life only: it is cleared on disk before anything can be
    // raised (needed only when there is WAL past commit_lsn to raise it to).
    const exact = control.commitExact === true;
    if (exact && end > commit) await writeControlFile(dir, { ...control, commitExact: false });
    const s = new Stream(name, dir, store, control, exact ? null : end, history, end, slog);
    const waiting = s.commit.waitingFor;
    s.log.info({ tli: s.tli, flush_lsn: formatLsn(end), commit_lsn: formatLsn(s.commitLsn), system_id: s.systemId.toString() }, 'stream opened');
    if (waiting !== null) s.log.info({ commit_lsn: formatLsn(s.commitLsn) }, unknownCommitReason(waiting));
    return s;
  }

  /**
   * Creates a new, empty stream directory for WAL that will start at
   * `start` (a segment start), on timeline `tli` with its history files.
   */
  static async create(
    dir: string,
    log: Logger,
    init: { systemId: bigint; pgVersion: number; segmentSize: number; tli: number; start: Lsn; histories: Map<number, string> },
  ): Promise<Stream> {
    if (init.start % BigInt(init.segmentSize) !== 0n) throw new Error(`a new stream must start at a segment start, not ${formatLsn(init.start)}`);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = await WalStore.open(dir, init.segmentSize, init.tli);
    for (const [tli, text] of init.histories) await store.putHistory(tli, text);
    await writeControlFile(dir, {
      systemId: init.systemId,
      pgVersion: init.pgVersion,
      segmentSize: init.segmentSize,
      tli: init.tli,
      flushLsn: init.start,
      commitLsn: init.start,
      firstLsn: init.start,
      slots: {},
    });
    return Stream.open(dir, log);
  }

  get state(): StreamState {
    return this._state;
  }
  get tli(): number {
    return this._tli;
  }
  get history(): readonly TimelineEntry[] {
    return this._history;
  }
  get flushLsn(): Lsn {
    return this.flushWatch.value;
  }
  /** What regular clients are served up to: WAL on a quorum. */
  get commitLsn(): Lsn {
    return this.commitWatch.value;
  }
  /** What this node tells its peers and receivers commit_lsn is: null while not known yet after a crash (see CommitLsn). */
  get reportedCommitLsn(): Lsn | null {
    return this.commit.reported;
  }
  /** While commit_lsn is not known yet: the value the quorum must reach. */
  get commitUnknownBelow(): Lsn | null {
    return this.commit.waitingFor;
  }
  /**
   * Start of the oldest segment still held, or null when there is none.
   * Cached (every status line asks): it changes only when segments are
   * removed or cut back, or when the first one is written.
   */
  get oldestLsn(): Lsn | null {
    if (this._oldest === undefined || this._oldest === null) this._oldest = this.store.list()[0]?.start ?? null;
    return this._oldest;
  }
  private _oldest: Lsn | null | undefined = undefined;

  /** Read-through to object storage, when the node offloads (null: WAL below oldest_lsn is gone). */
  archive: ArchivedWal | null = null;

  /**
   * True when a client at `lsn` must be served from object storage: below
   * the oldest local segment, and below backup_lsn (complete there).
   */
  servedFromArchive(lsn: Lsn): boolean {
    const oldest = this.oldestLsn;
    return this.archive !== null && this._backupLsn !== null && lsn < this._backupLsn && (oldest === null || lsn < oldest);
  }

  /** End of the WAL known to be complete in object storage; null until the first segment is offloaded. */
  get backupLsn(): Lsn | null {
    return this._backupLsn;
  }
  private _backupLsn: Lsn | null;

  /**
   * Raises backup_lsn (never down): after this node's upload of the segment
   * ending there completed, or when a peer reports it did. Persisted soon;
   * a backup_lsn lost in a crash only holds WAL a little longer.
   */
  advanceBackupLsn(lsn: Lsn): void {
    if (this._backupLsn !== null && lsn <= this._backupLsn) return;
    this._backupLsn = lsn;
    this.emit('backup', lsn);
    this.persistSoon();
  }

  /** This node's partial objects in object storage (see the offloader). */
  get partialUploads(): readonly PartialUpload[] {
    return this._partialUploads;
  }
  private _partialUploads: PartialUpload[];

  /** Records the partial objects' states durably before the next step is taken. */
  async setPartialUploads(list: PartialUpload[]): Promise<void> {
    this._partialUploads = list;
    await this.persistNow();
  }

  /** Raises commit_lsn (never above flush_lsn, never down); the senders waiting on it wake. */
  setCommitLsn(lsn: Lsn): void {
    if (lsn > this.flushLsn) throw new Error(`stream ${this.name}: commit_lsn ${formatLsn(lsn)} above flush_lsn ${formatLsn(this.flushLsn)}`);
    // Closed: the copy written as exact must stay the last value anyone was told.
    if (this.closing) return;
    if (this.commit.raise(lsn)) this.log.info({ commit_lsn: formatLsn(lsn) }, 'commit_lsn known again: a quorum has flushed up to the end of WAL found at start-up');
  }

  /** Why the last write or fsync failed (disk full, I/O error), until the WAL it could not store is on disk. */
  storageError: string | null = null;
  private storageErrorUntil: Lsn = 0n;

  /** A write or fsync failed while WAL up to `until` had arrived. */
  storageFailed(message: string, until: Lsn): void {
    this.storageError = message;
    if (until > this.storageErrorUntil) this.storageErrorUntil = until;
  }

  private stored(): void {
    if (this.storageError !== null && this.flushLsn >= this.storageErrorUntil) {
      this.storageError = null;
      this.log.info({ flush_lsn: formatLsn(this.flushLsn) }, 'WAL is being stored again');
    }
  }

  /**
   * Throws away what was written after flush_lsn (after a failed write or
   * fsync its state is unknown), so that appending resumes there.
   */
  async resetToFlushed(): Promise<void> {
    await this.store.truncate(this.flushLsn);
    this._oldest = undefined;
    this.log.info({ flush_lsn: formatLsn(this.flushLsn) }, 'discarded WAL written after flush_lsn; resuming there');
  }

  /** Counters for metrics: WAL bytes written here, and sent to clients (of those, by the send pump). */
  bytesReceived = 0;
  bytesSent = 0;
  bytesPumped = 0;
  /** Called with each fsync's duration in seconds (metrics). */
  onFsync: ((seconds: number) => void) | null = null;
  /** Called with the upstream's wait for each acknowledgement of a flush, in seconds (metrics). */
  onAck: ((seconds: number) => void) | null = null;
  /** Told how long a caught-up sender took from commit_lsn (flush_lsn) moving to writing the message that carries it (metrics). */
  onSendDelay: ((seconds: number) => void) | null = null;

  /** Appends received WAL at exactly `lsn` (ingest's path into the store). */
  async appendWal(lsn: Lsn, data: Buffer): Promise<Lsn> {
    const end = await this.store.append(lsn, data);
    this.bytesReceived += data.length;
    return end;
  }

  /**
   * appendWal + flushWal in one thread-pool hop: for a writer that is caught
   * up, where every hop is time a synchronous commit on the primary waits.
   */
  async appendAndFlushWal(lsn: Lsn, data: Buffer): Promise<Lsn> {
    const t0 = process.hrtime.bigint();
    const flushed = await this.store.appendFlush(lsn, data);
    this.ingested(data.length, flushed, [Number(process.hrtime.bigint() - t0) / 1e9]);
    return flushed;
  }

  /** fsyncs what was appended and publishes the new flush_lsn. */
  async flushWal(): Promise<Lsn> {
    const t0 = process.hrtime.bigint();
    const flushed = await this.store.flush();
    this.ingested(0, flushed, [Number(process.hrtime.bigint() - t0) / 1e9]);
    return flushed;
  }

  /**
   * Publishes what ingest stored: `bytes` more received, fsynced up to
   * `flushed` by fsyncs that took `fsyncs` seconds each; `acks`: how long
   * the upstream waited for each acknowledgement ('r') of a flush, from its
   * sending the oldest XLogData in it. Ingest's Rust pump writes the store
   * itself and reports here; the JavaScript path through appendAndFlushWal /
   * flushWal.
   */
  ingested(bytes: number, flushed: Lsn, fsyncs: readonly number[], acks: readonly number[] = []): void {
    this.bytesReceived += bytes;
    for (const s of fsyncs) this.onFsync?.(s);
    for (const s of acks) this.onAck?.(s);
    if (this.flushWatch.set(flushed)) this.persistSoon();
    this.stored();
  }

  /** Where timeline `tli` ends (its switch point), null for the current one, undefined if not ours. */
  timelineEnd(tli: number): Lsn | null | undefined {
    return timelineEntry(this._history, tli)?.end;
  }

  nextTimeline(tli: number): { tli: number; start: Lsn } | undefined {
    return nextTimeline(this._history, tli);
  }

  /**
   * What of segment `segno` on timeline `tli` a reader outside the cluster
   * (`walkeeper fetch`, a restore_command) may have: its bytes up to
   * commit_lsn — WAL past it may still change — and, on a timeline that
   * ended, up to its switch point. `paths`: the file's names, the one being
   * written first (it is renamed when complete, possibly mid-read). Null
   * when this node holds nothing of it.
   */
  readableSegment(tli: number, segno: bigint): { paths: string[]; start: Lsn; end: Lsn; complete: boolean } | null {
    const seg = BigInt(this.segmentSize);
    const start = segno * seg;
    const tlEnd = this.timelineEnd(tli);
    if (tlEnd === undefined) return null;
    let limit = this.commitLsn;
    if (tlEnd !== null && tlEnd < limit) limit = tlEnd;
    if (limit <= start) return null;
    const file = this.store.list().find((f) => f.tli === tli && BigInt(f.segno) === segno);
    if (!file) return null;
    const full = segmentFileName(tli, Number(segno), this.segmentSize);
    const end = limit >= start + seg ? start + seg : limit;
    return { paths: [path.join(this.dir, `${full}.partial`), path.join(this.dir, full)], start, end, complete: end === start + seg };
  }

  async historyFile(tli: number): Promise<string | null> {
    return this.store.getHistory(tli);
  }

  /**
   * Moves the stream onto timeline `tli` (its history file content given),
   * as a standby does when its upstream switched: WAL from here on is
   * written to `tli`'s segment files.
   */
  async switchTimeline(tli: number, historyText: string): Promise<void> {
    if (tli <= this._tli) throw new Error(`stream ${this.name}: cannot switch from timeline ${this._tli} to ${tli}`);
    const history = parseHistory(tli, historyText);
    if (!history.some((e) => e.tli === this._tli)) {
      throw new Error(`stream ${this.name}: timeline ${tli} does not descend from this stream's timeline ${this._tli}`);
    }
    await this.store.putHistory(tli, historyText);
    this.store.setTimeline(tli);
    const from = this._tli;
    this._tli = tli;
    this._history = history;
    await this.persistNow();
    this.log.info({ from_tli: from, tli, switchpoint: formatLsn(timelineEntry(history, from)!.end!) }, 'switched timeline');
  }

  /**
   * Cuts local WAL back to `lsn` (a timeline switch below what we hold):
   * senders beyond it are ended, flush and commit LSN go back to it.
   */
  async truncateTo(lsn: Lsn, why: string): Promise<void> {
    if (lsn >= this.flushLsn) return;
    this.log.warn({ from: formatLsn(this.flushLsn), to: formatLsn(lsn), reason: why }, 'truncating local WAL');
    this.emit('rewind', lsn, why);
    await this.store.truncate(lsn);
    this._oldest = undefined;
    this.flushWatch.resetTo(lsn);
    this.commit.resetTo(lsn);
    await this.persistNow();
  }

  // --- slots -------------------------------------------------------------

  createSlot(name: string, opts: { temporary: boolean; reserveWal: boolean }): Slot {
    const restartLsn = opts.reserveWal ? segmentStart(this.commitLsn, this.segmentSize) : 0n;
    const slot: Slot = { name, restartLsn, tli: this.tli, temporary: opts.temporary, activeBy: null };
    this.slots.set(name, slot);
    if (!opts.temporary) this.persistSoon(PERSIST_SLOT_DELAY_MS);
    this.log.info({ slot: name, restart_lsn: formatLsn(restartLsn), temporary: opts.temporary }, 'replication slot created');
    return slot;
  }

  dropSlot(name: string): void {
    const s = this.slots.get(name);
    if (!s) return;
    this.slots.delete(name);
    if (!s.temporary) this.persistSoon(PERSIST_SLOT_DELAY_MS);
    this.log.info({ slot: name }, 'replication slot dropped');
  }

  /** A replica's flush moves its slot forward (never back). */
  advanceSlot(slot: Slot, flush: Lsn): void {
    if (flush > slot.restartLsn && flush <= this.flushLsn) {
      slot.restartLsn = flush;
      slot.tli = this.tli;
      if (!slot.temporary) this.persistSoon();
    }
  }

  /** Oldest LSN any slot still needs, or null when no slot holds WAL. */
  slotHorizon(): Lsn | null {
    let h: Lsn | null = null;
    for (const s of this.slots.values()) if (s.restartLsn !== 0n && (h === null || s.restartLsn < h)) h = s.restartLsn;
    return h;
  }

  /**
   * Removes segments wholly below `lsn`, but never one a slot still needs or
   * the one being written. Returns the names removed.
   */
  async removeWalBelow(lsn: Lsn, heldBy = `${formatLsn(lsn)}`): Promise<string[]> {
    const horizon = this.slotHorizon();
    const limit = horizon !== null && horizon < lsn ? horizon : lsn;
    const removed = await this.store.removeBelow(Number(limit / BigInt(this.segmentSize)));
    this._oldest = undefined;
    if (removed.length > 0) {
      this.removedSegments += removed.length;
      this.log.info(
        { removed: removed.length, first: removed[0], last: removed[removed.length - 1], oldest_lsn: this.oldestLsn === null ? null : formatLsn(this.oldestLsn), held_by: heldBy },
        'removed old WAL segments',
      );
      this.persistSoon();
    }
    return removed;
  }

  /** Segments removed since the stream was opened (for metrics). */
  removedSegments = 0;

  // --- lifecycle ------------------------------------------------------------

  /** Ends every sender of this stream ("ending streaming to …") and refuses new ones until resumed. */
  suspend(reason = 'stream suspended'): void {
    if (this._state !== 'active') return;
    this._state = 'suspended';
    this.log.info({ reason }, 'stream suspended');
    this.emit('end', reason);
  }

  resume(): void {
    if (this._state !== 'suspended') return;
    this._state = 'active';
    this.log.info('stream resumed');
  }

  /** Ends the senders and deletes the stream's directory. */
  async remove(): Promise<void> {
    this.suspend('stream removed');
    this._state = 'removed';
    await this.close();
    await rm(this.dir, { recursive: true, force: true });
    this.log.info({ dir: this.dir }, 'stream removed');
  }

  private controlData(): ControlData {
    const slots: ControlData['slots'] = {};
    for (const s of this.slots.values()) if (!s.temporary) slots[s.name] = { restartLsn: s.restartLsn, tli: s.tli };
    return {
      systemId: this.systemId,
      pgVersion: this.pgVersion,
      segmentSize: this.segmentSize,
      tli: this.tli,
      flushLsn: this.flushLsn,
      commitLsn: this.commitLsn,
      ...(this.closing ? { commitExact: true } : {}),
      firstLsn: this.oldestLsn ?? this.flushLsn,
      slots,
      backupLsn: this._backupLsn,
      partialUploads: this._partialUploads,
    };
  }

  /**
   * Writes the control file soon, coalescing bursts of changes into one
   * write. LSN moves wait up to a second: a control file a little behind is
   * safe (its flush and commit LSN are lower bounds that the start-up scan
   * goes past), and each write costs fsyncs that would compete with the
   * WAL's own. Slot changes go out quickly.
   */
  persistSoon(delayMs = PERSIST_LSN_DELAY_MS): void {
    if (this._state === 'removed') return;
    if (this.persistTimer) {
      if (delayMs >= this.persistDue - Date.now()) return;
      clearTimeout(this.persistTimer);
    }
    this.persistDue = Date.now() + delayMs;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      void this.persistNow().catch((err: Error) => this.log.error({ err: err.message }, 'cannot write control file'));
    }, delayMs);
  }

  /** Writes the control file now (after any write in progress). */
  persistNow(): Promise<void> {
    if (this.persistTimer) {
      clearTimeout(this.persistTimer);
      this.persistTimer = undefined;
    }
    const next = this.persisting.catch(() => undefined).then(() => writeControlFile(this.dir, this.controlData()));
    this.persisting = next;
    return next;
  }

  /** Persists the control file and stops waking senders. */
  async close(): Promise<void> {
    this.flushWatch.cancelAll();
    this.commitWatch.cancelAll();
    // Nothing raises commit_lsn any more: the copy written now is exact, and the next start knows it at once.
    this.closing = true;
    if (this._state !== 'removed') await this.persistNow();
    else if (this.persistTimer) clearTimeout(this.persistTimer);
  }
}
