/**
 * The CopyData payloads of physical streaming replication (protocol.sgml,
 * "Streaming Replication Protocol"), and Neon's pageserver feedback.
 *
 * Encoders return complete CopyData messages ('d' + int32 length +
 * payload), ready to write to a socket. Decoders take the CopyData payload
 * (the bytes after the 'd' header, starting with the tag byte) and throw
 * ProtocolError when it is malformed. Times are PostgreSQL timestamps:
 * int64 microseconds since 2000-01-01 00:00:00 UTC.
 */

import { Reader } from './buffer_reader.js';
import { ProtocolError } from './errors.js';

/** 2000-01-01T00:00:00Z in Unix milliseconds. */
export const PG_EPOCH_UNIX_MS = 946_684_800_000;
const PG_EPOCH_UNIX_US = 946_684_800_000_000n;

export const XLOG_DATA_TAG = 0x77; // 'w'
export const KEEPALIVE_TAG = 0x6b; // 'k'
export const STANDBY_STATUS_TAG = 0x72; // 'r'
export const HOT_STANDBY_FEEDBACK_TAG = 0x68; // 'h'
export const NEON_FEEDBACK_TAG = 0x7a; // 'z'

/** Header bytes of an XLogData payload before the WAL: 'w', start, end, sendTime. */
export const XLOG_DATA_HEADER_SIZE = 25;
export const KEEPALIVE_SIZE = 18;
export const STANDBY_STATUS_SIZE = 34;
export const HOT_STANDBY_FEEDBACK_SIZE = 25;

/** Now, in microseconds since 2000-01-01 UTC. */
export function pgNow(): bigint {
  return BigInt(Date.now()) * 1000n - PG_EPOCH_UNIX_US;
}

export function pgTimeToDate(t: bigint): Date {
  return new Date(Number(t) / 1000 + PG_EPOCH_UNIX_MS);
}

export function dateToPgTime(d: Date): bigint {
  return BigInt(d.getTime()) * 1000n - PG_EPOCH_UNIX_US;
}

/** 'd', int32 length, then the payload's first byte (its tag). */
function copyData(payloadLength: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(5 + payloadLength);
  b[0] = 0x64;
  b.writeInt32BE(4 + payloadLength, 1);
  b[5] = tag;
  return b;
}

function expectTag(payload: Buffer, tag: number, name: string): void {
  if (payload.length === 0 || payload[0] !== tag) {
    const got = payload.length === 0 ? 'an empty message' : `tag 0x${payload[0]!.toString(16).padStart(2, '0')}`;
    throw new ProtocolError(`invalid ${name} message: expected tag '${String.fromCharCode(tag)}', got ${got}`);
  }
}

function expectSize(payload: Buffer, size: number, name: string): void {
  if (payload.length !== size) throw new ProtocolError(`invalid ${name} message: ${payload.length} bytes, expected exactly ${size}`);
}

// -------------------------------------------------------------- XLogData 'w'

export interface XLogData {
  /** LSN of the first byte of `data`. */
  start: bigint;
  /** The sender's WAL end (flush position) when it sent this. */
  end: bigint;
  sendTime: bigint;
  /** The WAL bytes (a view into the received message). */
  data: Buffer;
}

export function decodeXLogData(payload: Buffer): XLogData {
  expectTag(payload, XLOG_DATA_TAG, 'XLogData');
  if (payload.length < XLOG_DATA_HEADER_SIZE) {
    throw new ProtocolError(`invalid XLogData message: ${payload.length} bytes, expected at least ${XLOG_DATA_HEADER_SIZE}`);
  }
  return {
    start: payload.readBigUInt64BE(1),
    end: payload.readBigUInt64BE(9),
    sendTime: payload.readBigInt64BE(17),
    data: payload.subarray(XLOG_DATA_HEADER_SIZE),
  };
}

/**
 * The 30 bytes that precede `dataLength` bytes of WAL in a complete XLogData
 * CopyData message ('d' len 'w' start end sendTime), for writev-style
 * sending without copying the WAL.
 */
export function xlogDataHeader(start: bigint, end: bigint, sendTime: bigint, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(5 + XLOG_DATA_HEADER_SIZE);
  b[0] = 0x64;
  b.writeInt32BE(4 + XLOG_DATA_HEADER_SIZE + dataLength, 1);
  b[5] = XLOG_DATA_TAG;
  b.writeBigUInt64BE(start, 6);
  b.writeBigUInt64BE(end, 14);
  b.writeBigInt64BE(sendTime, 22);
  return b;
}

/** A complete XLogData CopyData message (copies `data`). */
export function xlogData(start: bigint, end: bigint, sendTime: bigint, data: Uint8Array): Buffer {
  const b = copyData(XLOG_DATA_HEADER_SIZE + data.length, XLOG_DATA_TAG);
  b.writeBigUInt64BE(start, 6);
  b.writeBigUInt64BE(end, 14);
  b.writeBigInt64BE(sendTime, 22);
  b.set(data, 5 + XLOG_DATA_HEADER_SIZE);
  return b;
}

// ------------------------------------------------------ primary keepalive 'k'

export interface Keepalive {
  walEnd: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}

/** A complete CopyData message holding a primary keepalive (payload exactly 18 bytes). */
export function keepalive(walEnd: bigint, sendTime: bigint = pgNow(), replyRequested = false): Buffer {
  const b = copyData(KEEPALIVE_SIZE, KEEPALIVE_TAG);
  b.writeBigUInt64BE(walEnd, 6);
  b.writeBigInt64BE(sendTime, 14);
  b[22] = replyRequested ? 1 : 0;
  return b;
}

export function decodeKeepalive(payload: Buffer): Keepalive {
  expectTag(payload, KEEPALIVE_TAG, 'keepalive');
  expectSize(payload, KEEPALIVE_SIZE, 'keepalive');
  return {
    walEnd: payload.readBigUInt64BE(1),
    sendTime: payload.readBigInt64BE(9),
    replyRequested: payload[17] !== 0,
  };
}

// ------------------------------------------------- standby status update 'r'

export interface StandbyStatus {
  /** Received and written up to. */
  write: bigint;
  /** Flushed to disk up to. */
  flush: bigint;
  /** Applied up to. */
  apply: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}

export interface StandbyStatusInit {
  write: bigint;
  flush: bigint;
  apply: bigint;
  /** Default: pgNow(). */
  sendTime?: bigint;
  /** Default false. */
  replyRequested?: boolean;
}

/** A complete CopyData message holding a standby status update (payload 34 bytes). */
export function standbyStatus(s: StandbyStatusInit): Buffer {
  const b = copyData(STANDBY_STATUS_SIZE, STANDBY_STATUS_TAG);
  b.writeBigUInt64BE(s.write, 6);
  b.writeBigUInt64BE(s.flush, 14);
  b.writeBigUInt64BE(s.apply, 22);
  b.writeBigInt64BE(s.sendTime ?? pgNow(), 30);
  b[38] = s.replyRequested ? 1 : 0;
  return b;
}

export function decodeStandbyStatus(payload: Buffer): StandbyStatus {
  expectTag(payload, STANDBY_STATUS_TAG, 'standby status update');
  expectSize(payload, STANDBY_STATUS_SIZE, 'standby status update');
  return {
    write: payload.readBigUInt64BE(1),
    flush: payload.readBigUInt64BE(9),
    apply: payload.readBigUInt64BE(17),
    sendTime: payload.readBigInt64BE(25),
    replyRequested: payload[33] !== 0,
  };
}

// -------------------------------------------------- hot standby feedback 'h'

export interface HotStandbyFeedback {
  sendTime: bigint;
  xmin: number;
  xminEpoch: number;
  catalogXmin: number;
  catalogXminEpoch: number;
}

export type HotStandbyFeedbackInit = Omit<HotStandbyFeedback, 'sendTime'> & { sendTime?: bigint };

/** A complete CopyData message holding hot standby feedback (payload 25 bytes). */
export function hotStandbyFeedback(f: HotStandbyFeedbackInit): Buffer {
  const b = copyData(HOT_STANDBY_FEEDBACK_SIZE, HOT_STANDBY_FEEDBACK_TAG);
  b.writeBigInt64BE(f.sendTime ?? pgNow(), 6);
  b.writeUInt32BE(f.xmin, 14);
  b.writeUInt32BE(f.xminEpoch, 18);
  b.writeUInt32BE(f.catalogXmin, 22);
  b.writeUInt32BE(f.catalogXminEpoch, 26);
  return b;
}

export function decodeHotStandbyFeedback(payload: Buffer): HotStandbyFeedback {
  expectTag(payload, HOT_STANDBY_FEEDBACK_TAG, 'hot standby feedback');
  expectSize(payload, HOT_STANDBY_FEEDBACK_SIZE, 'hot standby feedback');
  return {
    sendTime: payload.readBigInt64BE(1),
    xmin: payload.readUInt32BE(9),
    xminEpoch: payload.readUInt32BE(13),
    catalogXmin: payload.readUInt32BE(17),
    catalogXminEpoch: payload.readUInt32BE(21),
  };
}

// ------------------------------------------------ Neon pageserver feedback 'z'

/** Neon's PageserverFeedback; a field is undefined when the message did not carry it. */
export interface NeonFeedback {
  currentTimelineSize: bigint | undefined;
  lastReceivedLsn: bigint | undefined;
  diskConsistentLsn: bigint | undefined;
  remoteConsistentLsn: bigint | undefined;
  /** PostgreSQL timestamp (µs since 2000-01-01). */
  replyTime: bigint | undefined;
}

export interface NeonFeedbackInit {
  currentTimelineSize: bigint;
  lastReceivedLsn: bigint;
  diskConsistentLsn: bigint;
  remoteConsistentLsn: bigint;
  replyTime: bigint;
}

type NeonField = keyof NeonFeedback;

/** Both the current key names (the ones Neon's pageserver writes) and the newer aliases. */
const NEON_KEYS: Record<string, { field: NeonField; signed: boolean }> = {
  current_timeline_size: { field: 'currentTimelineSize', signed: false },
  ps_writelsn: { field: 'lastReceivedLsn', signed: false },
  last_received_lsn: { field: 'lastReceivedLsn', signed: false },
  ps_flushlsn: { field: 'diskConsistentLsn', signed: false },
  disk_consistent_lsn: { field: 'diskConsistentLsn', signed: false },
  ps_applylsn: { field: 'remoteConsistentLsn', signed: false },
  remote_consistent_lsn: { field: 'remoteConsistentLsn', signed: false },
  ps_replytime: { field: 'replyTime', signed: true },
  replytime: { field: 'replyTime', signed: true },
};

/**
 * A complete CopyData message holding Neon pageserver feedback: 'z', u64
 * length of what follows, u8 key count, then per key: key\0, int32 value
 * length (8), value. Keys as Neon's pageserver writes them
 * (current_timeline_size, ps_writelsn, ps_flushlsn, ps_applylsn, ps_replytime).
 */
export function neonFeedback(f: NeonFeedbackInit): Buffer {
  const entries: Array<[string, bigint, boolean]> = [
    ['current_timeline_size', f.currentTimelineSize, false],
    ['ps_writelsn', f.lastReceivedLsn, false],
    ['ps_flushlsn', f.diskConsistentLsn, false],
    ['ps_applylsn', f.remoteConsistentLsn, false],
    ['ps_replytime', f.replyTime, true],
  ];
  let bodyLen = 1;
  for (const [k] of entries) bodyLen += k.length + 1 + 4 + 8;
  const b = copyData(1 + 8 + bodyLen, NEON_FEEDBACK_TAG);
  let off = b.writeBigUInt64BE(BigInt(bodyLen), 6);
  b[off++] = entries.length;
  for (const [k, v, signed] of entries) {
    off += b.write(k, off, 'latin1');
    b[off++] = 0;
    off = b.writeInt32BE(8, off);
    off = signed ? b.writeBigInt64BE(v, off) : b.writeBigUInt64BE(v, off);
  }
  return b;
}

/** Decodes a 'z' payload; unknown keys are skipped by their length. */
export function decodeNeonFeedback(payload: Buffer): NeonFeedback {
  expectTag(payload, NEON_FEEDBACK_TAG, 'Neon feedback');
  const out: NeonFeedback = {
    currentTimelineSize: undefined,
    lastReceivedLsn: undefined,
    diskConsistentLsn: undefined,
    remoteConsistentLsn: undefined,
    replyTime: undefined,
  };
  const r = new Reader(payload, 1);
  r.bytes(8, 'Neon feedback length');
  const n = r.uint8('Neon feedback key count');
  for (let i = 0; i < n; i++) {
    const key = r.cstring('Neon feedback key');
    const len = r.int32(`Neon feedback value length of "${key}"`);
    if (len < 0) throw new ProtocolError(`invalid Neon feedback: negative value length ${len} for "${key}"`);
    const known = Object.prototype.hasOwnProperty.call(NEON_KEYS, key) ? NEON_KEYS[key] : undefined;
    if (known === undefined) {
      r.bytes(len, `Neon feedback value of "${key}"`);
      continue;
    }
    if (len !== 8) throw new ProtocolError(`invalid Neon feedback: "${key}" has a ${len}-byte value, expected 8`);
    out[known.field] = known.signed ? r.int64(`Neon feedback "${key}"`) : r.uint64(`Neon feedback "${key}"`);
  }
  return out;
}
