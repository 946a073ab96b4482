/**
 * Where `walkeeper fetch` finds a file, in order: the nodes (served only up
 * to each node's commit_lsn, asked highest commit first), then object
 * storage. A file one source lacks or serves broken is asked of the next;
 * only a file that passed its checks is ever returned. With `partial`, the
 * segment that commit_lsn is inside is also served, its bytes up to there
 * and zeros after (PostgreSQL's `.partial` convention), so that recovery
 * "to the end" replays every committed transaction — but only after every
 * source was asked for the complete segment.
 */
import { parseLsn, isLsn, segnoOf, type Lsn, type WalFileName } from '../lsn.js';
import type { NodeStatus } from '../member_status.js';
import { parseNodeStatus } from '../member_status.js';
import { parseObjectName, partialObject, segmentObject, streamPrefix, historyObject } from '../offload/names.js';
import { openRemoteStorage } from '../remote/open.js';
import type { RemoteLocation, RemoteStorage } from '../remote/remote_storage.js';
import { installFile, installWith } from './install.js';
import { writeSegment } from '../wal/segment_file.js';
import { isWalcoreError } from '../wal/wal_storage.js';

/** A file as a source holds it, before its checks. */
export interface Candidate {
  body: Buffer;
  /** zstd (an object we offloaded), else the file's bytes. */
  compressed: boolean;
  /** A segment cut at commit_lsn: zeros fill the rest. */
  pad: boolean;
  /** Which node or store has it, for messages. */
  from: string;
  /** A partial segment: WAL ends here, zeros follow. */
  end: Lsn | null;
}

/**
 * Takes a candidate to its destination, checking it on the way, and says
 * the segment size its long header gave (null: not a segment); throws
 * BadWalError when it fails its checks (the next source is asked then).
 */
export type Sink = (c: Candidate) => Promise<{ segmentSize: number | null }>;

/** A file that passed its checks and is at its destination. */
export type Lookup = { found: { from: string; end: Lsn | null; segmentSize: number | null } } | { found: null; errors: string[] };

/** A file that fails its checks: it must not be used. */
export class BadWalError extends Error {}

const REQUEST_TIMEOUT_MS = 60_000;
const STATUS_TIMEOUT_MS = 2000;

/** `fetch` with a timeout that cannot be collected before it fires (see the offloader's note on Node 20). */
async function httpGet(url: string, ms: number): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(new Error(`no answer within ${ms} ms`)), ms);
  try {
    const r = await fetch(url, { signal: ac.signal });
    return { status: r.status, headers: r.headers, body: Buffer.from(await r.arrayBuffer()) };
  } finally {
    clearTimeout(t);
  }
}

const errText = (e: unknown): string => {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  return err.cause?.code ?? err.cause?.message ?? err.message ?? String(e);
};

/** A node to ask: its base URL and what it last said of the stream. */
export interface NodeTarget {
  url: string;
  status: NodeStatus;
}

/** The nodes of a stream, found through `--nodes` URLs or the etcd broker. */
export class NodeArchive {
  private cached: { at: number; nodes: NodeTarget[]; errors: string[] } | null = null;

  constructor(
    private readonly stream: string,
    private readonly discover: () => Promise<{ nodes: NodeTarget[]; errors: string[] }>,
  ) {}

  /** From `--nodes`: each node's status, asked directly. */
  static fromUrls(stream: string, urls: string[]): NodeArchive {
    return new NodeArchive(stream, async () => {
      const errors: string[] = [];
      const nodes: NodeTarget[] = [];
      await Promise.all(
        urls.map(async (u) => {
          const url = u.replace(/\/+$/, '');
          try {
            const r = await httpGet(`${url}/v1/streams/${encodeURIComponent(stream)}`, STATUS_TIMEOUT_MS);
            if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
            nodes.push({ url, status: parseNodeStatus(url, JSON.parse(r.body.toString('utf8'))) });
          } catch (e) {
            errors.push(`node ${url}: ${errText(e)}`);
          }
        }),
      );
      return { nodes, errors };
    });
  }

  /** The nodes, highest commit_lsn first; asked again after a while (a long prefetch outlives node changes). */
  async nodes(): Promise<{ nodes: NodeTarget[]; errors: string[] }> {
    if (this.cached === null || Date.now() - this.cached.at > 10_000) {
      const r = await this.discover();
      // A node that does not know its commit_lsn yet (just restarted) goes last.
      const commit = (t: NodeTarget): Lsn => t.status.commitLsn ?? -1n;
      r.nodes.sort((a, b) => (commit(a) > commit(b) ? -1 : commit(a) < commit(b) ? 1 : 0));
      this.cached = { at: Date.now(), ...r };
    }
    return this.cached;
  }

  forget(): void {
    this.cached = null;
  }

  /**
   * Asks the nodes for `f`, highest commit first. `systemId`: nodes of
   * another database system are refused. A segment comes back complete, or
   * with `partial` as what its node has committed of it.
   */
  async get(f: WalFileName, opts: { partial: boolean; systemId: bigint | null }, sink: Sink): Promise<Lookup> {
    const { nodes, errors } = await this.nodes();
    const errs = [...errors];
    for (const n of nodes) {
      const s = n.status;
      const who = `node ${n.url}`;
      if (opts.systemId !== null && s.systemId !== opts.systemId) {
        errs.push(`${who}: stream ${this.stream} is database system ${s.systemId}, this server's is ${opts.systemId}`);
        continue;
      }
      if (f.kind === 'segment') {
        const segno = segnoOf(f, s.segmentSize);
        if (segno === null) continue;
        // (a hint only: the node answers 404 for what it removed since)
        if (s.oldestLsn === null || s.oldestLsn > segno * BigInt(s.segmentSize)) continue;
      }
      let r: Awaited<ReturnType<typeof httpGet>>;
      try {
        r = await httpGet(`${n.url}/v1/streams/${encodeURIComponent(this.stream)}/wal/${f.name}${opts.partial ? '?partial=1' : ''}`, REQUEST_TIMEOUT_MS);
      } catch (e) {
        errs.push(`${who}: ${errText(e)}`);
        this.forget();
        continue;
      }
      if (r.status === 404) continue;
      if (r.status !== 200) {
        errs.push(`${who}: HTTP ${r.status} ${r.body.toString('utf8', 0, 200).trim()}`);
        continue;
      }
      const sid = r.headers.get('x-walkeeper-system-id');
      if (opts.systemId !== null && sid !== opts.systemId.toString()) {
        errs.push(`${who}: served database system ${sid}, this server's is ${opts.systemId}`);
        continue;
      }
      const segSize = Number(r.headers.get('x-walkeeper-segment-size'));
      let end: Lsn | null = null;
      if (f.kind === 'segment') {
        const endText = r.headers.get('x-walkeeper-end-lsn') ?? '';
        const segno = segnoOf(f, segSize);
        if (!isLsn(endText) || segno === null) {
          errs.push(`${who}: ${f.name} served without its end or segment size`);
          continue;
        }
        end = parseLsn(endText);
        if (r.body.length !== Number(end - segno * BigInt(segSize))) {
          errs.push(`${who}: ${f.name} cut short (${r.body.length} of ${Number(end - segno * BigInt(segSize))} bytes)`);
          continue;
        }
        if (r.body.length === segSize) end = null;
      }
      try {
        const { segmentSize } = await sink({ body: r.body, compressed: false, pad: end !== null, from: who, end });
        return { found: { from: who, end, segmentSize } };
      } catch (e) {
        if (!(e instanceof BadWalError)) throw e;
        errs.push(`${who}: ${e.message}`);
      }
    }
    return { found: null, errors: errs };
  }
}

/** The stream's objects in object storage (see offload/names.ts for the layout). */
export class ObjectArchive {
  private storage: Promise<RemoteStorage> | null = null;
  private systemIds: Promise<bigint[]> | null = null;

  constructor(
    private readonly loc: RemoteLocation,
    private readonly stream: string,
  ) {}

  get location(): string {
    return this.loc.kind === 'file' ? `file://${this.loc.dir}` : `s3://${this.loc.bucket}/${this.loc.prefix}`;
  }

  /** Opened on first use: a fetch served by a node or the spool never loads the S3 client. */
  private open(): Promise<RemoteStorage> {
    this.storage ??= openRemoteStorage(this.loc);
    return this.storage;
  }

  close(): void {
    void this.storage?.then((s) => s.close(), () => undefined);
  }

  /** Runs `op` up to three times (a busy gateway's 503, a reset connection), each bounded. */
  private async attempt<T>(op: (s: RemoteStorage, signal: AbortSignal) => Promise<T>): Promise<T> {
    const s = await this.open();
    let last: unknown;
    for (const wait of [0, 100, 500]) {
      if (wait) await new Promise((r) => setTimeout(r, wait));
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)), REQUEST_TIMEOUT_MS);
      try {
        return await op(s, ac.signal);
      } catch (e) {
        last = e;
      } finally {
        clearTimeout(t);
      }
    }
    throw last;
  }

  /** The database systems archived under this stream (when the caller does not know which it wants); listed once. */
  private archivedSystems(): Promise<bigint[]> {
    this.systemIds ??= this.attempt((s, signal) => s.list(`${this.stream}/`, { signal })).then((objs) => {
      const ids = new Set<string>();
      for (const o of objs) {
        const m = /^[^/]+\/(\d{1,20})\//.exec(o.key);
        if (m) ids.add(m[1]!);
      }
      return [...ids].map((x) => BigInt(x));
    });
    return this.systemIds;
  }

  /** `f` from the store: the complete segment, or with `partial` only the newest partial object of it. */
  async get(f: WalFileName, opts: { partial: boolean; systemId: bigint | null }, sink: Sink): Promise<Lookup> {
    const who = `object storage ${this.location}`;
    try {
      let systemId = opts.systemId;
      if (systemId === null) {
        const ids = await this.archivedSystems();
        if (ids.length === 0) return { found: null, errors: [] };
        if (ids.length > 1) return { found: null, errors: [`${who}: stream ${this.stream} holds ${ids.length} database systems (${ids.join(', ')}); run fetch in the data directory being recovered, whose global/pg_control says which`] };
        systemId = ids[0]!;
      }
      const prefix = streamPrefix(this.stream, systemId);
      const errors: string[] = [];
      /** Hands a candidate on: found, or null (and why, in errors) when it fails its checks. */
      const offer = async (body: Buffer, compressed: boolean, end: Lsn | null, what: string): Promise<Lookup | null> => {
        try {
          const { segmentSize } = await sink({ body, compressed, pad: end !== null, from: who, end });
          return { found: { from: who, end, segmentSize } };
        } catch (e) {
          if (!(e instanceof BadWalError)) throw e;
          errors.push(`${who}: ${what}: ${e.message}`);
          return null;
        }
      };
      if (f.kind !== 'segment') {
        const b = await this.attempt((s, signal) => s.get(prefix + (f.kind === 'history' ? historyObject(f.tli) : f.name), { signal }));
        return (b !== null ? await offer(b, false, null, f.name) : null) ?? { found: null, errors };
      }
      if (!opts.partial) {
        // Ours, compressed; then one another tool put there under the plain name.
        const z = await this.attempt((s, signal) => s.get(prefix + segmentObject(f.name), { signal }));
        if (z !== null) {
          const r = await offer(z, true, null, segmentObject(f.name));
          if (r) return r;
        } else {
          const plain = await this.attempt((s, signal) => s.get(prefix + f.name, { signal }));
          const r = plain !== null ? await offer(plain, false, null, f.name) : null;
          if (r) return r;
        }
      } else {
        // The newest partial object of this segment (any node's).
        const objs = await this.attempt((s, signal) => s.list(`${prefix}${f.name}.`, { signal }));
        const partials = objs
          .map((o) => ({ key: o.key, p: parseObjectName(o.key.slice(prefix.length)) }))
          .filter((x): x is { key: string; p: { kind: 'partial'; segment: string; end: Lsn; nodeId: number } } => x.p?.kind === 'partial' && x.p.segment === f.name)
          .sort((a, b) => (a.p.end > b.p.end ? -1 : 1));
        for (const x of partials) {
          const b = await this.attempt((s, signal) => s.get(x.key, { signal }));
          if (b === null) continue; // deleted meanwhile (a newer one is up)
          const r = await offer(b, true, x.p.end, partialObject(f.name, x.p.end, x.p.nodeId));
          if (r) return r;
        }
      }
      return { found: null, errors };
    } catch (e) {
      return { found: null, errors: [`${who}: ${errText(e)}`] };
    }
  }
}

/** Asks the sources in order (see the top of this file). */
export class WalArchive {
  constructor(
    readonly nodes: NodeArchive | null,
    readonly objects: ObjectArchive | null,
    private readonly expect: { systemId: bigint | null; pgVersion: number | null },
  ) {}

  /** The system id to insist on: the caller's, else what the nodes report (one system). */
  private async systemId(): Promise<bigint | null> {
    if (this.expect.systemId !== null || !this.nodes) return this.expect.systemId;
    const ids = new Set((await this.nodes.nodes()).nodes.map((n) => n.status.systemId));
    return ids.size === 1 ? [...ids][0]! : null;
  }

  /**
   * Finds `f` and installs it at `dest` (written under a temporary name
   * beside it, checked on the way, fsynced, renamed): the first candidate
   * that passes its checks, in the order at the top of this file.
   */
  async get(f: WalFileName, opts: { partial: boolean }, dest: string): Promise<Lookup> {
    const systemId = await this.systemId();
    const sink = installer(f, dest, { systemId, pgVersion: this.expect.pgVersion });
    const errors: string[] = [];
    const ask = async (partial: boolean): Promise<Lookup | null> => {
      for (const src of [this.nodes, this.objects]) {
        if (!src) continue;
        const r = await src.get(f, { systemId, partial }, sink);
        if (r.found) return r;
        errors.push(...r.errors);
      }
      return null;
    };
    const whole = await ask(false);
    if (whole) return whole;
    if (opts.partial && f.kind === 'segment') {
      const part = await ask(true);
      if (part) return part;
    }
    return { found: null, errors: [...new Set(errors)] };
  }

  close(): void {
    this.objects?.close();
  }
}

/** The sink that installs candidates of `f` at `dest`: segments through the core's checked writer. */
function installer(f: WalFileName, dest: string, expect: { systemId: bigint | null; pgVersion: number | null }): Sink {
  return async (c) => {
    if (f.kind !== 'segment') {
      await installFile(dest, c.body);
      return { segmentSize: null };
    }
    let segmentSize = 0;
    await installWith(dest, async (tmp) => {
      try {
        ({ segmentSize } = await writeSegment({ data: c.body, compressed: c.compressed, pad: c.pad, tli: f.tli, hi: f.hi, lo: f.lo, systemId: expect.systemId, pgVersion: expect.pgVersion, path: tmp, sync: true }));
      } catch (e) {
        if (isWalcoreError(e, 'WALCORE_CORRUPT')) throw new BadWalError(`${f.name}: ${(e as Error).message}`);
        throw e;
      }
    });
    return { segmentSize };
  };
}
