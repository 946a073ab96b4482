/**
 * `walkeeper fetch`: PostgreSQL's restore_command. Exit 0 only when `%p`
 * holds the complete, verified file; 1, silently, when no source has it
 * (PostgreSQL asks for history files and for the segment after the last
 * one as a matter of course, and ends recovery there); 3 with one line on
 * stderr when it could not be fetched (every source down, a file failing
 * its checks, WAL of another database system); 2 for a mistake in how it
 * was called. PostgreSQL runs it in the data directory, so the system id
 * and version to insist on are read from `global/pg_control` and
 * `PG_VERSION` there when they exist.
 */
import { spawn } from 'node:child_process';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { DEFAULT_STREAM } from '../defaults.js';
import { parseEtcdEndpoints } from '../cluster/broker/broker.js';
import { parseRemoteStorageUrl, RemoteStorageUrlError } from '../remote/remote_storage.js';
import { NodeArchive, ObjectArchive, WalArchive, type NodeTarget } from '../restore/archive.js';
import { parseWalFileName, segmentAfter } from '../lsn.js';
import { prefetchOne, runPrefetchWorker, Spool } from '../restore/spool.js';
import { intOption, parse, UsageError } from './args.js';

export const FETCH_USAGE = `Usage: walkeeper fetch [--nodes URL,… | --broker ENDPOINTS] [--remote-storage URL] [options] %f %p

PostgreSQL's restore_command: fetches WAL file %f of a stream into %p, from
the node with the highest commit_lsn that holds it, else from object
storage, and checks it (segment headers, system id) before %p appears.

  restore_command = 'walkeeper fetch --nodes http://n1:7676,http://n2:7676 --remote-storage s3://bucket/prefix %f %p'

  --nodes URL,…            the nodes' HTTP URLs
  --broker ENDPOINTS       or: etcd v3 endpoints where the nodes publish their status
  --remote-storage URL     s3://bucket/prefix or file:///dir, as the nodes offload to
  --remote-endpoint URL    an S3-compatible server's URL (or AWS_ENDPOINT_URL_S3)
  --stream NAME            stream to restore (default main)
  --prefetch N             keep the next N segments fetched ahead, in parallel, in a
                           spool directory beside %p (0–64, default 0)
  --partial                also serve the segment commit_lsn is inside, zero-padded
                           after it, so that recovery to the end replays every
                           committed transaction

Exit status: 0 %p holds the file; 1 no source has it; 3 it could not be
fetched (one line on stderr says why); 2 a usage error.
`;

const OPTIONS = {
  nodes: { type: 'string' },
  broker: { type: 'string' },
  'remote-storage': { type: 'string' },
  'remote-endpoint': { type: 'string' },
  stream: { type: 'string' },
  prefetch: { type: 'string' },
  partial: { type: 'boolean' },
  'prefetch-worker': { type: 'string' },
} as const;

/** What fetch failed at, for its one line on stderr (exit 3). */
class FetchError extends Error {}

/** The system id and PostgreSQL version of the data directory being recovered (the working directory), when it is one. */
async function recoveringServer(): Promise<{ systemId: bigint | null; pgVersion: number | null }> {
  const ctl = await readFile('global/pg_control').catch(() => null);
  const ver = await readFile('PG_VERSION', 'utf8').catch(() => null);
  return {
    // ControlFileData begins with the 64-bit system identifier (native byte order).
    systemId: ctl !== null && ctl.length >= 8 ? ctl.readBigUInt64LE(0) : null,
    pgVersion: ver !== null && /^\d+\s*$/.test(ver) ? Number.parseInt(ver, 10) : null,
  };
}

async function brokerNodes(hosts: string[], stream: string): Promise<{ nodes: NodeTarget[]; errors: string[] }> {
  const { EtcdCandidateSource } = await import('../cluster/broker/etcd.js');
  const src = new EtcdCandidateSource(hosts, stream);
  const nodes = new Map<string, NodeTarget>();
  const errors: string[] = [];
  await new Promise<void>((resolve) => {
    let settle: NodeJS.Timeout | undefined;
    const cap = setTimeout(resolve, 2000);
    src.start(
      (s) => {
        if (s.httpAddress !== null) nodes.set(s.nodeId, { url: `http://${s.httpAddress}`, status: s });
        // (the first read delivers every key at once)
        clearTimeout(settle);
        settle = setTimeout(() => {
          clearTimeout(cap);
          resolve();
        }, 100);
      },
      (id, err) => errors.push(`${id}: ${err.message}`),
    );
  });
  src.stop();
  if (nodes.size === 0 && errors.length === 0) errors.push(`etcd ${hosts.join(',')}: no node publishes stream ${stream}`);
  return { nodes: [...nodes.values()], errors };
}

export async function fetchCommand(args: string[]): Promise<number> {
  try {
    return await fetchFile(args);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    process.stderr.write(`walkeeper fetch: ${(err as Error).message.split('\n')[0]}\n`);
    return 3;
  }
}

async function fetchFile(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, OPTIONS, FETCH_USAGE);
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  if (str('broker') !== undefined && str('nodes') !== undefined) throw new UsageError('--nodes and --broker exclude each other');
  const nodeUrls = (str('nodes') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const u of nodeUrls) if (!/^https?:\/\/[^/]+/.test(u)) throw new UsageError(`--nodes: ${JSON.stringify(u)} is not an http:// URL`);
  let brokerHosts: string[] | null = null;
  try {
    brokerHosts = str('broker') !== undefined ? parseEtcdEndpoints(str('broker')!) : null;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  let loc = null;
  try {
    loc = str('remote-storage') !== undefined ? parseRemoteStorageUrl(str('remote-storage')!, str('remote-endpoint') ?? null) : null;
  } catch (e) {
    if (e instanceof RemoteStorageUrlError) throw new UsageError(e.message);
    throw e;
  }
  if (nodeUrls.length === 0 && brokerHosts === null && loc === null) throw new UsageError(`fetch needs --nodes, --broker or --remote-storage\n${FETCH_USAGE}`);
  const prefetch = intOption('prefetch', str('prefetch'), 0, 64) ?? 0;
  const stream = str('stream') ?? DEFAULT_STREAM;
  const nodes = brokerHosts !== null ? new NodeArchive(stream, () => brokerNodes(brokerHosts!, stream)) : nodeUrls.length ? NodeArchive.fromUrls(stream, nodeUrls) : null;
  const objects = loc !== null ? new ObjectArchive(loc, stream) : null;
  const archive = new WalArchive(nodes, objects, await recoveringServer());

  const worker = str('prefetch-worker');
  if (worker !== undefined) {
    // The background half of --prefetch (started by a fetch below; not for people).
    const spool = new Spool(worker);
    try {
      await runPrefetchWorker(spool, archive, Math.max(prefetch, 1));
    } finally {
      archive.close();
    }
    return 0;
  }

  if (positionals.length !== 2) throw new UsageError(`fetch takes %f and %p (the file name and the path to write)\n${FETCH_USAGE}`);
  const [name, dest] = positionals as [string, string];
  const f = parseWalFileName(name);
  if (f === null) throw new UsageError(`${JSON.stringify(name)} is not a WAL segment, timeline history or backup history file name`);
  const destDir = path.dirname(dest);
  const d = await stat(destDir).catch(() => null);
  if (d === null || !d.isDirectory()) throw new FetchError(`cannot write ${name} to ${dest}: directory ${destDir} does not exist`);

  try {
    const spool = prefetch > 0 && f.kind === 'segment' ? Spool.beside(dest) : null;
    const partial = values.partial === true;
    const workerArgs = args.filter((a) => !positionals.includes(a));
    let segmentSize: number | null = null;
    const ahead: Promise<unknown>[] = [];
    if (spool) {
      if (!partial && (await spool.missing(name)) && (await spool.workerRunning())) return 1;
      await spool.waitFor(name, 120_000);
      if (await spool.take(name, dest)) {
        segmentSize = (await spool.want())?.segmentSize ?? null;
      } else {
        // A miss (the first call, or PostgreSQL jumped): get the worker going on what follows while this
        // call fetches its own segment, if the segment size is known (from the spool or the WAL beside %p).
        const size = (await spool.want())?.segmentSize ?? (await segmentSizeIn(destDir));
        if (size !== null && f.kind === 'segment') {
          await spool.setWant(name, size);
          if (!(await spool.workerRunning())) startWorker(spool.dir, workerArgs);
          // The next segments come with this one (the worker needs a moment to start).
          for (let i = 1; i <= Math.min(2, prefetch); i++) ahead.push(prefetchOne(spool, archive, segmentAfter(f, i, size)));
        }
      }
    }
    if (segmentSize === null) {
      const r = await archive.get(f, { partial }, dest);
      if (!r.found) {
        if (r.errors.length === 0) return 1;
        throw new FetchError(`${name} not fetched: ${r.errors.join('; ')}`);
      }
      segmentSize = r.found.segmentSize;
    }
    await Promise.allSettled(ahead);
    if (spool && segmentSize !== null) {
      await spool.setWant(name, segmentSize);
      if (!(await spool.workerRunning())) startWorker(spool.dir, workerArgs);
    }
    return 0;
  } finally {
    archive.close();
  }
}

/** The segment size of the WAL already in `dir` (a base backup's pg_wal), from a segment's long page header. */
async function segmentSizeIn(dir: string): Promise<number | null> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => /^[0-9A-F]{24}$/.test(n));
  for (const n of names) {
    const fh = await open(path.join(dir, n), 'r').catch(() => null);
    if (!fh) continue;
    try {
      const b = Buffer.alloc(40);
      const { bytesRead } = await fh.read(b, 0, 40, 0);
      const size = b.readUInt32LE(32);
      if (bytesRead === 40 && (b.readUInt16LE(2) & 0x2) !== 0 && size >= 1 << 20 && size <= 1 << 30 && (size & (size - 1)) === 0) return size;
    } finally {
      await fh.close();
    }
  }
  return null;
}

/** Starts the prefetch worker in the background, detached: PostgreSQL waits for this command only. */
function startWorker(spoolDir: string, args: string[]): void {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, 'fetch', ...args, '--prefetch-worker', spoolDir], {
    detached: true,
    stdio: 'ignore',
    // Two threads decompress (the nearest segments first, not eight at once), leaving
    // the replaying server a core.
    env: { ...process.env, UV_THREADPOOL_SIZE: '2' },
  });
  child.unref();
  // Background work: the server's startup process, which waits on what it prefetches, comes first.
  try {
    if (child.pid !== undefined) os.setPriority(child.pid, 10);
  } catch {
    // (not permitted here: it runs at normal priority)
  }
}
