/**
 * `walkeeper receive`: pg_receivewal that fails over between nodes by
 * itself. The directory looks exactly like pg_receivewal's (segments under
 * PostgreSQL names, the one being written as a zero-padded `.partial`,
 * renamed when complete, `.history` files); it resumes from what is there,
 * reports a flush position only after fsync, follows timeline switches, and
 * prints one line per switch of node with its reason.
 */
import { mkdir, open, readdir } from 'node:fs/promises';
import path from 'node:path';

import { formatLsn, parseLsn, type Lsn } from '../lsn.js';
import { MAX_APPENDV, WalStore } from '../wal/wal_storage.js';
import { WalReceiver, type WalChunk } from '../receiver/receiver.js';
import { parseEtcdEndpoints } from '../cluster/broker/broker.js';
import type { NodeStatus } from '../member_status.js';
import { HttpStatusSource, type CandidateSource } from '../receiver/sources.js';
import { parse, UsageError } from './args.js';
import { DEFAULT_STREAM } from '../defaults.js';

export const RECEIVE_USAGE = `Usage: walkeeper receive (--nodes URL[,URL…] | --broker ENDPOINTS) -D DIR [options]

Streams a stream's WAL into DIR from the best of the given nodes, switching
node by itself when the one it streams from dies, stalls or falls behind.
DIR is laid out as pg_receivewal lays it out, and resumes from its contents.

  --nodes URL,…     the nodes' HTTP URLs (e.g. http://10.0.0.1:7676)
  --broker ENDPOINTS  or: etcd v3 endpoints (http://host:port,…) where the nodes publish their status
  --stream NAME     stream to follow (default main)
  -D, --directory DIR   where to write the WAL
  --endpos LSN      stop (exit 0) once WAL past this LSN was received
  --no-loop         exit with an error on the first connection failure
  --synchronous     fsync after every message, not only when caught up
  --password-file FILE  a file with the password (SCRAM), or set PGPASSWORD
  --user NAME       replication user (default postgres)
`;

const SEGMENT_RE = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/;

interface DirState {
  segmentSize: number;
  systemId: bigint;
  /** Where to resume (pg_receivewal's FindStreamingStart) and on which timeline. */
  resume: Lsn;
  tli: number;
}

/** Looks at an existing directory: its segment size and system id (from a long page header) and where to resume. */
async function inspectDir(dir: string): Promise<DirState | null> {
  const segs = (await readdir(dir)).map((n) => ({ n, m: SEGMENT_RE.exec(n) })).filter((x) => x.m !== null);
  if (segs.length === 0) return null;
  const hdr = Buffer.alloc(40);
  const fh = await open(path.join(dir, segs[0]!.n), 'r');
  try {
    await fh.read(hdr, 0, 40, 0);
  } finally {
    await fh.close();
  }
  const segmentSize = hdr.readUInt32LE(32);
  if (segmentSize < 1 << 20 || (segmentSize & (segmentSize - 1)) !== 0) throw new Error(`${segs[0]!.n} in ${dir} does not start with a WAL long page header`);
  const perId = 0x1_0000_0000 / segmentSize;
  let best: { segno: number; tli: number; partial: boolean } | null = null;
  for (const { m } of segs) {
    const segno = parseInt(m![2]!, 16) * perId + parseInt(m![3]!, 16);
    const tli = parseInt(m![1]!, 16);
    const partial = m![4] !== undefined;
    if (!best || segno > best.segno || (segno === best.segno && tli > best.tli)) best = { segno, tli, partial };
  }
  // A complete last segment: continue after it; a partial one: fetch it again from its start.
  const resume = BigInt(best!.segno + (best!.partial ? 0 : 1)) * BigInt(segmentSize);
  return { segmentSize, systemId: hdr.readBigUInt64LE(24), resume, tli: best!.tli };
}

/** The first status a source reports (null if none within `ms`). */
function firstStatus(source: CandidateSource, ms: number): Promise<NodeStatus | null> {
  return new Promise((resolve) => {
    const done = (s: NodeStatus | null): void => {
      clearTimeout(timer);
      source.stop();
      resolve(s);
    };
    const timer = setTimeout(() => done(null), ms);
    source.start(done, () => undefined);
  });
}

export async function receiveCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      nodes: { type: 'string' },
      broker: { type: 'string' },
      stream: { type: 'string' },
      directory: { type: 'string', short: 'D' },
      endpos: { type: 'string' },
      'no-loop': { type: 'boolean' },
      synchronous: { type: 'boolean' },
      'password-file': { type: 'string' },
      user: { type: 'string' },
    },
    RECEIVE_USAGE,
  );
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${RECEIVE_USAGE}`);
  if (str('broker') !== undefined && str('nodes') !== undefined) throw new UsageError('--nodes and --broker exclude each other');
  const brokerHosts = str('broker') !== undefined ? parseEtcdEndpoints(str('broker')!) : null;
  const nodes = (str('nodes') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (nodes.length === 0 && brokerHosts === null) throw new UsageError(`--nodes or --broker is required\n${RECEIVE_USAGE}`);
  for (const u of nodes) if (!/^https?:\/\/[^/]+/.test(u)) throw new UsageError(`--nodes: ${JSON.stringify(u)} is not an http:// URL`);
  const dir = str('directory');
  if (!dir) throw new UsageError(`-D DIR is required\n${RECEIVE_USAGE}`);
  const endpos = str('endpos') !== undefined ? parseLsn(str('endpos')!) : undefined;
  const stream = str('stream') ?? DEFAULT_STREAM;
  // The etcd client (gRPC) is loaded only when asked for: it costs start-up time.
  const etcd = brokerHosts ? await import('../cluster/broker/etcd.js') : null;
  const makeSource = (): CandidateSource => (etcd && brokerHosts ? new etcd.EtcdCandidateSource(brokerHosts, stream) : new HttpStatusSource(nodes, stream));
  const password = str('password-file') ? (await (await import('node:fs/promises')).readFile(str('password-file')!, 'utf8')).trim() : process.env.PGPASSWORD;
  const noLoop = values['no-loop'] === true;
  const synchronous = values.synchronous === true;

  await mkdir(dir, { recursive: true });
  let state = await inspectDir(dir);
  if (!state) {
    // A fresh directory: learn the segment size and system from the first node that answers.
    const first = await firstStatus(makeSource(), 10_000);
    if (!first) throw new Error(`no node answered for stream ${stream} (${brokerHosts ? `etcd ${brokerHosts.join(',')}` : nodes.join(', ')})`);
    state = { segmentSize: first.segmentSize, systemId: first.systemId, resume: -1n, tli: 0 };
  }
  const fresh = state.resume < 0n;
  const store = await WalStore.open(dir, state.segmentSize, fresh ? 1 : state.tli);
  if (!fresh && store.list().length > 0) await store.truncate(state.resume);
  const receiver = new WalReceiver({
    stream,
    source: makeSource(),
    startLsn: fresh ? undefined : state.resume,
    tli: fresh ? undefined : state.tli,
    systemId: state.systemId,
    endLsn: endpos,
    user: str('user') ?? 'postgres',
    password,
    applicationName: 'walkeeper_receive',
    // A Rust pump writes the WAL from the socket (WALKEEPER_RECEIVE_PUMP=0: through JS, as on Windows).
    sink: process.env.WALKEEPER_RECEIVE_PUMP === '0' ? undefined : { store, synchronous },
  });
  const err = (line: string) => process.stderr.write(`walkeeper receive: ${line}\n`);
  let exitCode = 0;
  // One line per switch, once the new node really streams: the reason that led to it.
  let lastSwitch: { description: string } | null = null;
  receiver.on('switch', (e) => (lastSwitch = e));
  receiver.on('connect', (e) => err(`streaming from ${e.nodeId} (${e.pgAddress}) at ${formatLsn(e.startLsn)}: ${lastSwitch?.description ?? 'first connection'}`));
  receiver.on('timeline', (e) => err(`switched to timeline ${e.tli} at ${formatLsn(e.startLsn)}`));
  receiver.on('error', (e) => {
    err(e.message);
    if (noLoop) {
      exitCode = 1;
      void receiver.stop();
    }
  });
  const stop = () => void receiver.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  // Progress on a terminal only: bytes, rate, lag behind the best node.
  const tty = process.stderr.isTTY;
  let firstPos: Lsn | null = null;
  receiver.on('connect', (e) => (firstPos ??= e.startLsn));
  const t0 = Date.now();
  let best = 0n;
  receiver.on('status', (s) => {
    if (s.commitLsn !== null && s.commitLsn > best) best = s.commitLsn;
  });
  const progress = tty
    ? setInterval(() => {
        const pos = receiver.position ?? 0n;
        const bytes = firstPos === null ? 0 : Number(pos - firstPos);
        const secs = (Date.now() - t0) / 1000;
        const lag = best > pos ? Number(best - pos) : 0;
        process.stderr.write(`\r${formatLsn(pos)}  ${(bytes / 1048576).toFixed(1)} MiB  ${(bytes / 1048576 / Math.max(secs, 0.001)).toFixed(1)} MiB/s  lag ${(lag / 1048576).toFixed(1)} MiB   `);
      }, 500)
    : null;

  // With the pump, the WAL never reaches this loop: the pump fsyncs on the
  // same rules. Without it (WALKEEPER_RECEIVE_PUMP=0, Windows), chunks come
  // through the receiver's iterator and are written here.
  // fsync when a segment is complete, when the stream goes idle (nothing
  // more arrived for a moment), at least every second, and after every
  // write with --synchronous; the node hears of a flush only after it.
  let unflushed = false;
  let lastFlush = Date.now();
  let flushing: Promise<void> = Promise.resolve();
  let writerError: Error | null = null;
  const flush = (): Promise<void> => {
    flushing = flushing
      .then(async () => {
        if (!unflushed) return;
        unflushed = false;
        lastFlush = Date.now();
        receiver.ack(await store.flush());
      })
      .catch((e: Error) => {
        writerError ??= e;
        void receiver.stop();
      });
    return flushing;
  };
  let idleTimer: NodeJS.Timeout | null = null;
  const flushWhenIdle = () => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      idleTimer = null;
      void flush();
    }, 10);
  };
  let tli = fresh ? 0 : state.tli;
  // The network side and the disk side overlap: the loop below only takes
  // chunks from the receiver; a writer appends them (up to MAX_APPENDV
  // buffers per thread-pool hop, never concatenated) one batch after the
  // other. Reading waits only when too much is waiting to be written.
  const pending: WalChunk[] = [];
  let pendingBytes = 0;
  let wakeWriter: (() => void) | null = null;
  let wakeReader: (() => void) | null = null;
  let readerDone = false;
  const MAX_PENDING = 64 * 1024 * 1024;
  const writer = (async () => {
    for (;;) {
      if (pending.length === 0) {
        if (readerDone) break;
        if (unflushed) flushWhenIdle();
        await new Promise<void>((r) => (wakeWriter = r));
        continue;
      }
      const c0 = pending[0]!;
      if (c0.tli !== tli) {
        if (tli !== 0 && c0.tli > tli) {
          await flush();
          const history = receiver.history(c0.tli);
          if (history !== undefined) await store.putHistory(c0.tli, history);
        }
        if (c0.tli > store.state.tli) store.setTimeline(c0.tli);
        tli = c0.tli;
      }
      let j = 1;
      while (j < pending.length && j < MAX_APPENDV && pending[j]!.tli === tli) j++;
      const run = pending.splice(0, j);
      const n = run.reduce((a, c) => a + c.data.length, 0);
      pendingBytes -= n;
      const w = wakeReader as (() => void) | null;
      wakeReader = null;
      w?.();
      const segBefore = c0.startLsn / BigInt(state.segmentSize);
      const end = await store.appendv(c0.startLsn, run.map((c) => c.data));
      unflushed = true;
      if (synchronous) {
        await flush();
      } else if ((end - 1n) / BigInt(state.segmentSize) !== segBefore || end % BigInt(state.segmentSize) === 0n || Date.now() - lastFlush >= 1000) {
        // The fsync runs on the thread pool while appends go on (the store allows both at once).
        void flush();
      }
    }
  })().catch((e: Error) => {
    writerError = e;
    void receiver.stop();
  });
  try {
    for await (const first of receiver) {
      for (const c of [first, ...receiver.takeQueued(MAX_PENDING)]) {
        pending.push(c);
        pendingBytes += c.data.length;
      }
      const w = wakeWriter as (() => void) | null;
      wakeWriter = null;
      w?.();
      while (pendingBytes > MAX_PENDING && !writerError) await new Promise<void>((r) => (wakeReader = r));
      if (writerError) break;
    }
    readerDone = true;
    const w = wakeWriter as (() => void) | null;
    wakeWriter = null;
    w?.();
    await writer;
    if (writerError) throw writerError;
    if (idleTimer) clearTimeout(idleTimer);
    await flush();
  } finally {
    if (progress) {
      clearInterval(progress);
      process.stderr.write('\n');
    }
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  return exitCode;
}
