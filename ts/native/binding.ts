/**
 * Loads the Rust core (`walkeeper.<platform>.node`) and gives it types.
 *
 * The core is found next to the package (a local `napi build`) or in the
 * prebuilt platform package `walkeeper-<platform>` (napi-rs convention).
 * Everything that can wait on a disk returns a Promise and runs on the libuv
 * thread pool; the only synchronous calls are in-memory bookkeeping and
 * `frameNoWait`, which reads only WAL already in the page cache.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import type { Lsn } from '../lsn.js';

/** The platform part of the binary's name, as `napi build --platform` writes it. */
export function platformTriple(platform: string = process.platform, arch: string = process.arch): string {
  switch (platform) {
    case 'linux':
      return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
    case 'darwin':
      return `darwin-${arch}`;
    case 'win32':
      return `win32-${arch}-msvc`;
    default:
      return `${platform}-${arch}`;
  }
}

function isMusl(): boolean {
  if (process.platform !== 'linux') return false;
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return !report?.header?.glibcVersionRuntime;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

export interface ScanResult {
  /** End of the last valid record, MAXALIGNed (after XLOG_SWITCH: the next segment start). */
  end: Lsn;
  firstRecord: Lsn | null;
  lastRecord: Lsn | null;
  records: number;
  stopReason: string;
  stopLsn: Lsn;
  pgVersion: number | null;
  systemId: bigint | null;
  tli: number | null;
}

export interface ScanOptions {
  /** `start` is any position: begin at the first record starting on its page or later. */
  search?: boolean;
  /** Expected xl_prev of the first record. */
  prev?: Lsn;
  systemId?: bigint;
  pgVersion?: number;
}

/** segmentWrite: a segment from an archive, checked as it is written (see crates/walcore/src/segment_file.rs). */
export interface SegmentWriteOptions {
  data: Buffer;
  /** `data` is zstd, else the segment's bytes. */
  compressed: boolean;
  /** Zero-fill a short segment (a `.partial`) instead of refusing it. */
  pad: boolean;
  /** The file name's timeline and the two halves of its segment number. */
  tli: number;
  hi: number;
  lo: number;
  systemId?: bigint | null;
  pgVersion?: number | null;
  /** A new file (it must not exist); removed again on any error. */
  path: string;
  sync: boolean;
}

export interface SegmentIdentity {
  systemId: bigint;
  pgVersion: number;
  segmentSize: number;
}

export interface SegmentInfo {
  tli: number;
  segno: number;
  partial: boolean;
  name: string;
  start: Lsn;
}

export interface StoreState {
  dir: string;
  segmentSize: number;
  tli: number;
  /** Where the next append must start; null until positioned. */
  writeLsn: Lsn | null;
  flushLsn: Lsn;
}

/** Opaque handle to a Rust `Store`. */
export interface StoreHandle {
  readonly __walcoreStore: unique symbol;
}

/** Opaque handle to a Rust receive pump (crates/walcore/src/receive_pump.rs). */
export interface PumpHandle {
  readonly __walcorePump: unique symbol;
}

/** What one `pumpRun` did, and why it returned. */
export interface PumpReport {
  /** End of the WAL received and appended. */
  received: Lsn;
  /** End of the WAL fsynced. */
  flushed: Lsn;
  /** walEnd of the latest XLogData or keepalive. */
  walEnd: Lsn;
  messages: number;
  keepalives: number;
  /** A keepalive asked for a status update now. */
  replyRequested: boolean;
  /** Seconds each fsync took. */
  fsyncs: number[];
  /**
   * With `answer`: for each status update acknowledging a new flush, seconds
   * since the upstream sent the oldest XLogData it acknowledges (its clock).
   */
  acks: number[];
  /** Set when the pump stopped for good (see receive_pump.rs `End`). */
  end?: 'other' | 'eof' | 'io' | 'bad' | 'store' | 'endpos' | 'stopped';
  message?: string;
  /** With end 'store': the store error's code (WALCORE_…). */
  code?: string;
  /** With end: bytes read and not consumed, the unhandled message first. */
  leftover?: Buffer;
}

/** Opaque handle to a Rust ingest pump (receive_pump.rs `ReceiveThread`: a receive pump on its own thread that answers for itself). */
export interface IngestPumpHandle {
  readonly __walcoreIngestPump: unique symbol;
}

/** Opaque handle to a Rust send pump (crates/walcore/src/send_pump.rs). */
export interface SendPumpHandle {
  readonly __walcoreSendPump: unique symbol;
}

/** What one `sendPumpRun` did, and why it returned. */
export interface SendPumpReport {
  /** End of the WAL handed to the socket, `tail` included. */
  sent: Lsn;
  messages: number;
  /**
   * done: reached `end` or spent the budget; full: the socket is full (write
   * `tail`, run again once written); stopped: sendPumpStop; io: the socket
   * failed; store: reading the WAL failed (`code` is the WALCORE_… code).
   */
  end: 'done' | 'full' | 'stopped' | 'io' | 'store';
  message?: string;
  code?: string;
  /** The unsent rest of the last message: the caller writes it before anything else. */
  tail?: Buffer;
}

/**
 * Options of the calls that take more than a handle and a value or two:
 * each written once, here; the wrappers in ts/wal/ take them (less what
 * they supply themselves) rather than repeating the parameters.
 */
export interface FindEndOptions extends ScanOptions {
  dir: string;
  tli: number;
  segSize: number;
  start: Lsn;
}

/**
 * What one XLogData message covers. The frame calls take it as positional
 * arguments (FrameArgs): they run once per message on the JS thread, where
 * reading named properties cost 13% of the framing rate.
 */
export interface FrameRequest {
  tli: number;
  start: Lsn;
  /** Send nothing at or past this. */
  end: Lsn;
  /** walEnd field of the message. */
  walEnd: Lsn;
  maxSend?: number;
  /** Override sendTime (µs since 2000-01-01); default now. */
  sendTime?: bigint;
}

/** FrameRequest in argument order. */
export type FrameArgs = [tli: number, start: Lsn, end: Lsn, walEnd: Lsn, maxSend?: number, sendTime?: bigint];

export interface ReceivePumpOptions {
  fd: number;
  /** Bytes already read from the socket, not yet consumed. */
  pending: Buffer;
  store: StoreHandle;
  start: Lsn;
  tli: number;
  systemId: bigint;
  pgVersion: number;
  endLsn?: Lsn;
  synchronous?: boolean;
}

export interface IngestPumpOptions extends Omit<ReceivePumpOptions, 'endLsn' | 'synchronous'> {
  flushBytes: number;
  statusIntervalMs: number;
}

export interface SendPumpOptions {
  fd: number;
  store: StoreHandle;
  tli: number;
  maxSend: number;
}

export interface SendPumpJob {
  start: Lsn;
  end: Lsn;
  walEnd: Lsn;
  /** Bytes this run may send. */
  budget: number;
  zeroCopy?: boolean;
  /** How long, in all, the run may wait for room in a full socket before it returns 'full' (default 0). */
  waitMs?: number;
}

/** The raw N-API surface (crates/walcore-node/src/exports.rs). */
export interface NativeBinding {
  zstdCompress(data: Buffer, level: number): Promise<Buffer>;
  zstdDecompress(data: Buffer, maxBytes: number): Promise<Buffer>;
  segmentWrite(o: SegmentWriteOptions): Promise<SegmentIdentity>;
  zstdCompressFile(path: string, level: number, length?: number, padTo?: number): Promise<{ bytes: number; data: Buffer }>;
  version(): string;
  crc32cImplementation(): string;
  findEndOfWal(o: FindEndOptions): Promise<ScanResult>;
  controlRead(path: string): Promise<Buffer | null>;
  controlWrite(path: string, payload: Buffer): Promise<void>;
  storeOpen(dir: string, segSize: number, tli: number): Promise<StoreHandle>;
  storeState(h: StoreHandle): StoreState;
  storeSetTimeline(h: StoreHandle, tli: number): void;
  storeList(h: StoreHandle): SegmentInfo[];
  storeAppend(h: StoreHandle, lsn: Lsn, ...data: Buffer[]): Promise<Lsn>;
  storeFlush(h: StoreHandle): Promise<Lsn>;
  storeAppendFlush(h: StoreHandle, lsn: Lsn, ...data: Buffer[]): Promise<Lsn>;
  storeTruncate(h: StoreHandle, lsn: Lsn): Promise<void>;
  storeRemoveBelow(h: StoreHandle, segno: number): Promise<string[]>;
  storeRead(h: StoreHandle, tli: number, lsn: Lsn, buf: Buffer): Promise<number>;
  storeFrameNoWait(h: StoreHandle, buf: Buffer, ...r: FrameArgs): number;
  storeFrame(h: StoreHandle, buf: Buffer, ...r: FrameArgs): Promise<number>;
  storePutHistory(h: StoreHandle, tli: number, content: Buffer): Promise<void>;
  storeGetHistory(h: StoreHandle, tli: number): Promise<Buffer | null>;
  pumpOpen(o: ReceivePumpOptions): PumpHandle;
  pumpRun(p: PumpHandle, maxMs: number): Promise<PumpReport>;
  pumpStop(p: PumpHandle): void;
  pumpClose(p: PumpHandle): void;
  ingestPumpStart(o: IngestPumpOptions, onReport: (r: PumpReport | Error) => void): IngestPumpHandle;
  ingestPumpSend(p: IngestPumpHandle, message: Buffer): void;
  ingestPumpStop(p: IngestPumpHandle): void;
  sendPumpOpen(o: SendPumpOptions): SendPumpHandle;
  sendPumpRun(p: SendPumpHandle, job: SendPumpJob): Promise<SendPumpReport>;
  sendPumpStop(p: SendPumpHandle): void;
  sendPumpClose(p: SendPumpHandle): void;
}

export const BUILD_COMMAND = 'npm run build:native  (napi build --platform --release --no-js)';

/**
 * Loads `walkeeper.<triple>.node` from `root`, else the platform package;
 * throws one error naming the platform and how to build the binary.
 */
export function loadBinding(root: string = packageRoot, triple: string = platformTriple()): NativeBinding {
  const file = path.join(root, `walkeeper.${triple}.node`);
  if (existsSync(file)) return require(file) as NativeBinding;
  const pkg = `walkeeper-${triple}`;
  try {
    return require(pkg) as NativeBinding;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
  }
  throw new Error(
    `walkeeper: no native core for platform ${triple} (looked for ${file} and package ${pkg}). ` +
      `Build it with a Rust toolchain: ${BUILD_COMMAND}`,
  );
}

let binding: NativeBinding | undefined;

/** The native binding, loaded on first use. */
export function native(): NativeBinding {
  binding ??= loadBinding();
  return binding;
}
