/**
 * Simulated disks and object storage. WAL bytes are not stored: an extent
 * says which upstream bytes it holds (`origin`: the LSN the upstream wrote
 * them at). Correct WAL has origin == start everywhere, so "the same bytes"
 * is a comparison of offsets, and any shift (a gap, a duplicate, a write at
 * the wrong place) shows.
 */
import type { Lsn } from '../ts/lsn.js';
import type { World } from './world.js';

export interface Extent {
  start: Lsn;
  end: Lsn;
  origin: Lsn;
}

/** One node's WAL files: written (page cache) and durable (fsynced) ends. */
export class WalDisk {
  /** Contiguous from `oldest`. */
  ext: Extent[] = [];
  oldest: Lsn;
  durable: Lsn;
  /** Set while the disk refuses writes (full). */
  full = false;

  constructor(start: Lsn) {
    this.oldest = start;
    this.durable = start;
  }

  get end(): Lsn {
    return this.ext.length === 0 ? this.oldest : this.ext[this.ext.length - 1]!.end;
  }

  /** Appends bytes the upstream wrote at `origin`, at `lsn`; throws when not at the end (a writer bug, reported as a violation). */
  append(lsn: Lsn, len: number, origin: Lsn): void {
    if (lsn !== this.end) throw new Error(`append at ${lsn} but the WAL ends at ${this.end}`);
    if (this.full) throw Object.assign(new Error('No space left on device'), { code: 'ENOSPC' });
    const end = lsn + BigInt(len);
    const last = this.ext[this.ext.length - 1];
    if (last && last.end === lsn && last.origin - last.start === origin - lsn) last.end = end;
    else this.ext.push({ start: lsn, end, origin });
  }

  truncate(lsn: Lsn): void {
    while (this.ext.length > 0 && this.ext[this.ext.length - 1]!.start >= lsn) this.ext.pop();
    const last = this.ext[this.ext.length - 1];
    if (last && last.end > lsn) last.end = lsn;
    if (this.durable > lsn) this.durable = lsn;
    if (this.ext.length === 0 && this.oldest > lsn) this.oldest = lsn;
  }

  /** Removes whole segments below `lsn` (rounded down to a segment start). */
  removeBelow(lsn: Lsn, segmentSize: bigint): void {
    const cut = lsn - (lsn % segmentSize);
    if (cut <= this.oldest) return;
    const limit = cut < this.end ? cut : this.end - (this.end % segmentSize);
    if (limit <= this.oldest) return;
    while (this.ext.length > 0 && this.ext[0]!.end <= limit) this.ext.shift();
    const first = this.ext[0];
    if (first && first.start < limit) {
      first.origin += limit - first.start;
      first.start = limit;
    }
    this.oldest = limit;
  }

  /** The extents covering [from, to) (clipped). */
  read(from: Lsn, to: Lsn): Extent[] {
    return clip(this.ext, from, to);
  }

  /** Start of the oldest WAL held, or null when none (a node's oldest_lsn). */
  get oldestHeld(): Lsn | null {
    return this.ext.length > 0 ? this.oldest : null;
  }

  /** A crash: what was not fsynced is lost, except a random part of it that the page cache had written back. */
  crash(world: World): void {
    const unsynced = this.end - this.durable;
    const keep = unsynced > 0n && world.rng.chance(0.5) ? BigInt(Math.floor(world.rng.float() * Number(unsynced))) : 0n;
    const survive = this.durable + keep;
    this.truncate(survive);
    this.durable = survive;
  }
}

/** The parts of `ext` within [from, to). */
export function clip(ext: readonly Extent[], from: Lsn, to: Lsn): Extent[] {
  const out: Extent[] = [];
  for (const e of ext) {
    if (e.end <= from || e.start >= to) continue;
    const s = e.start > from ? e.start : from;
    const t = e.end < to ? e.end : to;
    out.push({ start: s, end: t, origin: e.origin + (s - e.start) });
  }
  return out;
}

/** First place in `ext` whose bytes are not the upstream's (origin ≠ start), or null. */
export function wrongBytes(ext: readonly Extent[]): Lsn | null {
  for (const e of ext) if (e.origin !== e.start) return e.start;
  return null;
}

/** Object storage: whole segments by start LSN; puts err, time out, or land. */
export class ObjectStore {
  readonly objects = new Map<string, Extent[]>();
  /** Until when every request errs (the store is away). */
  downUntil = 0;

  constructor(private readonly world: World) {}

  /** Puts `ext` as object `name`; `done(err)` after the store answered (or the request timed out). */
  put(name: string, ext: Extent[], done: (err: string | null) => void): void {
    const w = this.world;
    const r = w.rng;
    if (w.now < this.downUntil || r.chance(0.02)) {
      w.after(r.int(5, 200), `s3 put error ${name}`, () => done('503 Slow Down'));
      return;
    }
    if (r.chance(0.02)) {
      // Timed out: it may or may not have landed.
      const lands = r.chance(0.5);
      w.after(r.int(10, 300), `s3 put lands=${lands} ${name}`, () => {
        if (lands) this.objects.set(name, ext.map((e) => ({ ...e })));
      });
      w.after(5000, `s3 put timeout ${name}`, () => done('request timed out'));
      return;
    }
    w.after(r.int(5, 100), `s3 put ${name}`, () => {
      this.objects.set(name, ext.map((e) => ({ ...e })));
      done(null);
    });
  }

  get(name: string, done: (err: string | null, ext: Extent[] | null) => void): void {
    const w = this.world;
    const r = w.rng;
    if (w.now < this.downUntil || r.chance(0.02)) {
      w.after(r.int(5, 200), `s3 get error ${name}`, () => done('503 Slow Down', null));
      return;
    }
    w.after(r.int(5, 100), `s3 get ${name}`, () => done(null, this.objects.get(name)?.map((e) => ({ ...e })) ?? null));
  }
}
