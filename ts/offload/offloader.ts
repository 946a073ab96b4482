/**
 * One stream's offload to object storage (Neon's wal_backup.rs and
 * wal_backup_partial.rs, rebuilt): every member runs one; once a second each
 * decides from the members' statuses whether it is the offloader
 * (policy.ts), and the one that is uploads, strictly in order, every
 * complete segment at or below commit_lsn that is not yet there — WAL past
 * commit_lsn can still change, so it never goes up as a segment — then
 * moves backup_lsn past it. backup_lsn is persisted in the control file,
 * published in the member status, and taken from a peer that reports a
 * higher one (the peer reports it only after the object is complete in the
 * store). Retention never removes WAL above it.
 *
 * History files go up as soon as they exist. After a quiet period (no new
 * commit_lsn for `partialAfterMs`), the offloader also uploads the tail of
 * the segment being written as a `.partial` object, recording in the control
 * file each such object as in_progress → uploaded → deleting, so that none
 * is ever left behind: older ones are deleted once a newer one (or the
 * complete segment) is up, and one found in_progress after a crash is
 * deleted, since it may or may not exist.
 *
 * Uploads retry with backoff (10 ms → 5 s), 120 s per object; while the
 * store fails, WAL accumulates locally (status, log line once per state
 * change, metrics) and nothing is dropped.
 */
import path from 'node:path';

import type { Quorum } from '../cluster/quorum.js';
import type { Logger } from '../log.js';
import { formatLsn, type Lsn } from '../lsn.js';
import type { RemoteStorage } from '../remote/remote_storage.js';
import type { PartialUpload, Stream } from '../stream/stream.js';
import type { SegmentInfo } from '../wal/wal_storage.js';
import { zstdCompressFile } from '../wal/compress.js';
import { historyObject, partialObject, segmentObject, streamPrefix } from './names.js';
import { electOffloader, OFFLOADER_STALE_MS, type Election } from './policy.js';

export interface OffloadConfig {
  /** How often the offloader is re-decided (Neon: 1 s). */
  intervalMs: number;
  /** Quiet time before the unfinished tail goes up as a partial object (0: never). */
  partialAfterMs: number;
  /** Longest one object's upload may take before it is abandoned and retried. */
  objectTimeoutMs: number;
  /** zstd level (3 is zstd's default: fast, and WAL compresses 3–5×). */
  level: number;
}

export const DEFAULT_OFFLOAD: OffloadConfig = {
  intervalMs: 1000,
  partialAfterMs: 15 * 60_000,
  objectTimeoutMs: 120_000,
  level: 3,
};

const BACKOFF_MIN_MS = 10;
/**
 * Segments read, compressed and uploaded at once. Compression runs on the
 * thread pool (four threads, each reading a mapped segment) and uploads wait
 * on the network, so that eight in flight keep both busy (bench/offload:
 * 560 MiB/s with two, 605 with four, 720 with eight on 2 Xeon cores, before
 * later changes); backup_lsn still moves strictly in order, past each
 * segment once it and every one before it are complete in the store.
 */
const WINDOW = 8;
/** How far past the oldest segment still uploading the window reaches (segments). */
const WINDOW_SPAN = 4 * WINDOW;
const BACKOFF_MAX_MS = 5000;

/** What the node is told about an offloader's work (metrics). */
export interface OffloadEvents {
  uploaded(stream: string, kind: 'segment' | 'history' | 'partial', bytes: number, compressedBytes: number): void;
  failed(stream: string): void;
}

export interface OffloadStatus {
  /** This node is the stream's offloader now. */
  active: boolean;
  /** The store answers (false after a failed upload until the next success). */
  healthy: boolean;
  lastError: string | null;
  /** The elected member (node id), as this node sees it. */
  offloader: number | null;
  location: string;
}

class Stopped extends Error {}

export class Offloader {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  /** Asked to look again while a round was running. */
  private again = false;
  private unlisten: (() => void) | null = null;
  private abort = new AbortController();
  private stopped = false;
  private election: Election = { offloader: null, eligible: [], gap: false };
  private healthy = true;
  private lastError: string | null = null;
  private historiesUp = new Set<number>();
  private missingLogged: bigint | null = null;
  private cleanedIncomplete = false;
  private readonly startedAt = new Date();
  /** When commit_lsn last moved, and to what (for the quiet period of partial uploads). */
  private lastCommit: { lsn: Lsn; at: number } = { lsn: 0n, at: Date.now() };
  private readonly log: Logger;
  /** Wakes the upload loop when another segment was committed while its window has room. */
  private kick: (() => void) | null = null;
  /** Uploads waiting out a backoff, woken as soon as another attempt succeeds. */
  private readonly backingOff = new Set<() => void>();

  constructor(
    private readonly stream: Stream,
    private readonly quorum: Quorum,
    private readonly remote: RemoteStorage,
    private readonly self: { nodeId: number },
    private readonly events: OffloadEvents,
    private readonly cfg: OffloadConfig = DEFAULT_OFFLOAD,
  ) {
    this.log = stream.log.child({ component: 'offload' });
  }

  private get prefix(): string {
    return streamPrefix(this.stream.name, this.stream.systemId);
  }

  status(): OffloadStatus {
    return { active: this.election.offloader === this.self.nodeId, healthy: this.healthy, lastError: this.lastError, offloader: this.election.offloader, location: this.remote.location };
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.cfg.intervalMs);
    this.timer.unref();
    // A segment completed below commit_lsn: upload it now rather than at the next tick, so that
    // offload keeps up with a primary writing a segment every few hundred milliseconds.
    const seg = BigInt(this.stream.segmentSize);
    let lastSeg = this.stream.commitLsn / seg;
    this.unlisten = this.stream.commitWatch.listen((lsn) => {
      if (lsn / seg === lastSeg) return;
      lastSeg = lsn / seg;
      if (this.election.offloader !== this.self.nodeId) return;
      // (an upload loop waiting on its oldest segment takes the new one into its window at once)
      this.kick?.();
      this.tick();
    });
    this.tick();
  }

  /** Stops uploading: the object in flight is abandoned (never recorded), and the loop ends. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unlisten?.();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.abort.abort();
    for (const wake of this.backingOff) wake();
    await this.running;
  }

  private tick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.round()
      .catch((err: Error) => {
        if (!(err instanceof Stopped)) this.log.error({ err: err.message }, 'offload round failed');
      })
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.tick();
        }
      });
  }

  /** One decision, and the uploads it calls for. */
  private async round(): Promise<void> {
    const s = this.stream;
    if (s.state !== 'active') return;
    const now = Date.now();
    if (s.commitLsn !== this.lastCommit.lsn) this.lastCommit = { lsn: s.commitLsn, at: now };
    // A peer's backup_lsn is only ever published after its upload completed: adopt it.
    for (const m of this.quorum.list()) if (m.error === null && m.backupLsn !== null) s.advanceBackupLsn(m.backupLsn);
    await this.cleanPartials();
    const peers = this.quorum
      .list()
      .filter((m) => m.error === null && m.nodeId !== null)
      .map((m) => ({ nodeId: m.nodeId!, commitLsn: m.commitLsn, oldestLsn: m.oldestLsn, heardAt: m.heardAt }));
    // Just started and not yet heard from every member: deciding now would see only ourselves (every
    // member would pick itself). Wait for their statuses, at most as long as a member takes to go stale.
    if (now - this.startedAt.getTime() < OFFLOADER_STALE_MS && this.quorum.list().some((m) => m.heardAt === null)) return;
    const before = this.election;
    this.election = electOffloader(s.name, { nodeId: this.self.nodeId, commitLsn: s.reportedCommitLsn, oldestLsn: s.oldestLsn, heardAt: null }, peers, s.backupLsn, now);
    const active = this.election.offloader === this.self.nodeId;
    if (active !== (before.offloader === this.self.nodeId) || this.election.offloader !== before.offloader) {
      this.log.info({ offloader: this.election.offloader, eligible: this.election.eligible, backup_lsn: s.backupLsn === null ? null : formatLsn(s.backupLsn) }, active ? 'this node offloads the stream' : 'offloader chosen');
    }
    if (!active) return;
    if (!this.cleanedIncomplete) {
      // Multipart uploads and temporary files a killed offloader left (ours or another node's, started before we did).
      const n = await this.retry('clean incomplete uploads', () => this.remote.abortIncomplete(this.prefix, this.startedAt));
      if (n > 0) this.log.info({ aborted: n }, 'removed incomplete uploads left in object storage');
      this.cleanedIncomplete = true;
    }
    await this.uploadHistories();
    await this.uploadSegments();
    await this.uploadPartial(now);
  }

  private async uploadHistories(): Promise<void> {
    const s = this.stream;
    for (let tli = 2; tli <= s.tli; tli++) {
      if (this.historiesUp.has(tli)) continue;
      const text = await s.historyFile(tli);
      if (text === null) {
        this.historiesUp.add(tli);
        continue;
      }
      const body = Buffer.from(text, 'utf8');
      await this.retry(`upload ${historyObject(tli)}`, (signal) => this.remote.put(this.prefix + historyObject(tli), body, { signal }));
      this.events.uploaded(s.name, 'history', body.length, body.length);
      this.log.info({ object: historyObject(tli) }, 'timeline history offloaded');
      this.historiesUp.add(tli);
    }
  }

  /**
   * Complete segments from backup_lsn up to commit_lsn: up to WINDOW uploading at once, each
   * finished one replaced at once (a slow object does not hold the others back), backup_lsn
   * advanced in order over the segments that are up — at most WINDOW_SPAN past the oldest still
   * uploading.
   */
  private async uploadSegments(): Promise<void> {
    const s = this.stream;
    const seg = BigInt(s.segmentSize);
    // In segment order; `up` once the object is complete in the store.
    const window: { end: Lsn; done: Promise<void>; up: boolean }[] = [];
    let uploading = 0;
    let next: bigint | null = null;
    try {
      for (;;) {
        while (uploading < WINDOW && window.length < WINDOW_SPAN && !this.stopped) {
          const start = this.nextSegment(next);
          if (start === null) break;
          const { segno, file } = start;
          next = segno + 1n;
          const entry = { end: (segno + 1n) * seg, done: this.uploadSegment(file), up: false };
          // (a failure is handled where it is awaited, maybe after a later one failed first)
          entry.done.then(
            () => {
              entry.up = true;
              uploading--;
            },
            () => undefined,
          );
          uploading++;
          window.push(entry);
        }
        if (window.length === 0) return;
        // Any upload finishing, or — with room in the window — the next committed segment, which
        // then starts at once: under a burst, a segment would otherwise wait for earlier ones.
        const kicked = uploading < WINDOW && window.length < WINDOW_SPAN ? new Promise<void>((r) => (this.kick = r)) : null;
        const pending = window.filter((w) => !w.up).map((w) => w.done);
        await Promise.race(kicked ? [...pending, kicked] : pending);
        this.kick = null;
        let advanced = false;
        while (window[0]?.up) {
          s.advanceBackupLsn(window.shift()!.end);
          advanced = true;
        }
        if (advanced) await this.cleanPartials();
      }
    } finally {
      this.kick = null;
      // Stopping or failing: let the others settle (their results are not recorded) before returning.
      await Promise.allSettled(window.map((w) => w.done));
    }
  }

  /** The next complete segment at or below commit_lsn to upload: after `after`, or from backup_lsn. */
  private nextSegment(after: bigint | null): { segno: bigint; file: SegmentInfo } | null {
    const s = this.stream;
    const seg = BigInt(s.segmentSize);
    const files = s.store.list();
    let segno: bigint;
    if (after !== null) {
      segno = after;
    } else if (s.backupLsn === null || this.election.gap) {
      const first = files.find((f) => !f.partial && (s.backupLsn === null || f.start >= s.backupLsn));
      if (!first) return null;
      segno = first.start / seg;
      if (this.election.gap && s.backupLsn !== null && first.start > s.backupLsn) {
        this.log.error({ from: formatLsn(s.backupLsn), to: formatLsn(first.start) }, 'no member holds this WAL any more: the archive has a gap here');
      }
    } else {
      segno = s.backupLsn / seg;
    }
    if ((segno + 1n) * seg > s.commitLsn) return null;
    // The segment's newest timeline: after a switch inside it, the new timeline's file holds the old one's bytes up to the switch point.
    const file = files.filter((f) => f.start / seg === segno).sort((a, b) => b.tli - a.tli)[0];
    if (!file) {
      // (once per segment: the round comes back every second)
      if (this.missingLogged !== segno) {
        this.missingLogged = segno;
        this.log.error({ segno: segno.toString(), backup_lsn: s.backupLsn === null ? null : formatLsn(s.backupLsn) }, 'the next segment to offload is not on this node');
      }
      return null;
    }
    if (file.partial) return null; // renamed at the next flush
    return { segno, file };
  }

  private async uploadSegment(file: SegmentInfo): Promise<void> {
    const s = this.stream;
    const { bytes, data: body } = await zstdCompressFile(path.join(s.dir, file.name), this.cfg.level);
    if (bytes !== s.segmentSize) throw new Error(`segment ${file.name} holds ${bytes} bytes, not ${s.segmentSize}`);
    const key = segmentObject(file.name);
    await this.retry(`upload ${key}`, (signal) => this.remote.put(this.prefix + key, body, { signal }));
    this.events.uploaded(s.name, 'segment', bytes, body.length);
    this.log.debug({ object: key, bytes, compressed: body.length }, 'segment offloaded');
  }

  /** After a quiet period: the tail of the segment being written, up to commit_lsn. */
  private async uploadPartial(now: number): Promise<void> {
    const s = this.stream;
    if (this.cfg.partialAfterMs <= 0 || now - this.lastCommit.at < this.cfg.partialAfterMs) return;
    const commit = s.commitLsn;
    const seg = BigInt(s.segmentSize);
    const segStart = (commit / seg) * seg;
    if (commit === segStart) return; // nothing past the last complete segment
    if (s.backupLsn === null || s.backupLsn < segStart) return; // complete segments first
    const file = s.store.list().filter((f) => f.start === segStart).sort((a, b) => b.tli - a.tli)[0];
    if (!file) return;
    const name = partialObject(file.name.replace(/\.partial$/, ''), commit, this.self.nodeId);
    if (s.partialUploads.some((p) => p.name === name && p.state === 'uploaded')) return;
    // Only WAL at or below commit_lsn: the rest of the segment goes up as zeros.
    const { data: body } = await zstdCompressFile(path.join(s.dir, file.name), this.cfg.level, { length: Number(commit - segStart), padTo: s.segmentSize });
    await s.setPartialUploads([...s.partialUploads, { name, state: 'in_progress' }]);
    await this.retry(`upload ${name}`, (signal) => this.remote.put(this.prefix + name, body, { signal }));
    await s.setPartialUploads(s.partialUploads.map((p) => (p.name === name ? { name, state: 'uploaded' } : p)));
    this.events.uploaded(s.name, 'partial', Number(commit - segStart), body.length);
    this.log.info({ object: name, commit_lsn: formatLsn(commit) }, 'unfinished segment offloaded as a partial object');
    await this.cleanPartials();
  }

  /**
   * Deletes this node's partial objects that are no longer the newest, or
   * whose segment is complete in the store, or that a crash left
   * in_progress; each goes to `deleting` in the control file first.
   */
  private async cleanPartials(): Promise<void> {
    const s = this.stream;
    const list = s.partialUploads;
    if (list.length === 0) return;
    const newest = [...list].reverse().find((p) => p.state === 'uploaded');
    const seg = BigInt(s.segmentSize);
    const obsolete = (p: PartialUpload): boolean => {
      if (p.state !== 'uploaded') return true;
      if (p !== newest) return true;
      const m = /^([0-9A-F]{24})\.([0-9A-F]{16})\./.exec(p.name);
      const end = m ? BigInt(`0x${m[2]}`) : 0n;
      return s.backupLsn !== null && s.backupLsn >= ((end + seg - 1n) / seg) * seg;
    };
    const drop = list.filter(obsolete);
    if (drop.length === 0) return;
    await s.setPartialUploads(list.map((p) => (drop.includes(p) ? { name: p.name, state: 'deleting' as const } : p)));
    for (const p of drop) {
      await this.retry(`delete ${p.name}`, (signal) => this.remote.delete(this.prefix + p.name, { signal }));
      await s.setPartialUploads(s.partialUploads.filter((q) => q.name !== p.name));
    }
  }

  /** Runs `op` until it succeeds, backing off 10 ms → 5 s, each attempt bounded by the object timeout. */
  private async retry<T>(what: string, op: (signal: AbortSignal) => Promise<T>): Promise<T> {
    let wait = BACKOFF_MIN_MS;
    for (;;) {
      if (this.stopped) throw new Stopped();
      // One controller per attempt, aborted by the timeout or by stop(). (Not AbortSignal.any with
      // AbortSignal.timeout: on Node 20 the combined signal can be collected before it fires, and a
      // stalled request then waits forever.)
      const attempt = new AbortController();
      const timer = setTimeout(() => attempt.abort(new Error(`no answer within ${this.cfg.objectTimeoutMs} ms`)), this.cfg.objectTimeoutMs);
      const onStop = () => attempt.abort(new Stopped());
      this.abort.signal.addEventListener('abort', onStop, { once: true });
      try {
        const r = await op(attempt.signal);
        if (!this.healthy) this.log.info({ location: this.remote.location }, 'object storage answers again: offload continues');
        this.healthy = true;
        // The other uploads backing off try again now, not when their own wait (up to 5 s) ends.
        for (const wake of this.backingOff) wake();
        this.backingOff.clear();
        this.lastError = null;
        return r;
      } catch (err) {
        if (this.stopped) throw new Stopped();
        const msg = `${what}: ${errorText(err)}`;
        this.events.failed(this.stream.name);
        if (this.healthy) {
          this.log.warn({ err: msg, location: this.remote.location }, 'object storage fails: WAL accumulates locally until it answers');
        }
        this.healthy = false;
        this.lastError = msg;
        await new Promise<void>((r) => {
          const wake = (): void => {
            clearTimeout(t);
            this.backingOff.delete(wake);
            r();
          };
          const t = setTimeout(wake, wait);
          this.backingOff.add(wake);
        });
        wait = Math.min(wait * 2, BACKOFF_MAX_MS);
      } finally {
        clearTimeout(timer);
        this.abort.signal.removeEventListener('abort', onStop);
      }
    }
  }
}

function errorText(err: unknown): string {
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  return `${e.name ?? 'Error'}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(err)}`;
}
