/**
 * The stream's control file: what must survive a restart. The Rust core
 * guards the envelope (magic, version, CRC-32C, atomic durable replace);
 * this module owns the payload, JSON with LSNs as `X/X`, and refuses a
 * payload that does not hold what it must — a damaged control file is never
 * silently reset.
 */
import path from 'node:path';

import { native } from '../native/binding.js';
import { formatLsn, isLsn, parseLsn, type Lsn } from '../lsn.js';

export const CONTROL_FILE_NAME = 'walkeeper.control';

export interface SlotState {
  restartLsn: Lsn;
  tli: number;
}

export interface ControlData {
  systemId: bigint;
  pgVersion: number;
  segmentSize: number;
  /** The timeline WAL is being written on. */
  tli: number;
  flushLsn: Lsn;
  commitLsn: Lsn;
  /** commitLsn is the value the node last had (written at a clean stop), not just a lower bound. */
  commitExact?: boolean;
  /** Oldest LSN this node still holds. */
  firstLsn: Lsn;
  slots: Record<string, SlotState>;
  /** End of the WAL known to be complete in object storage (null: nothing offloaded, or no remote storage). */
  backupLsn?: Lsn | null;
  /** This node's partial objects in object storage and where each is in its life. */
  partialUploads?: PartialUpload[];
}

/**
 * A partial object (the unfinished tail of a segment) this node uploaded
 * or is uploading: in_progress before the upload starts (so that after a
 * crash it is deleted whether or not it made it), uploaded once complete,
 * deleting once superseded — until the delete succeeded.
 */
export interface PartialUpload {
  name: string;
  state: 'in_progress' | 'uploaded' | 'deleting';
}

export function encodeControl(c: ControlData): Buffer {
  const slots: Record<string, { restart_lsn: string; tli: number }> = {};
  for (const [name, s] of Object.entries(c.slots)) slots[name] = { restart_lsn: formatLsn(s.restartLsn), tli: s.tli };
  return Buffer.from(
    JSON.stringify({
      system_id: c.systemId.toString(),
      pg_version: c.pgVersion,
      segment_size: c.segmentSize,
      tli: c.tli,
      flush_lsn: formatLsn(c.flushLsn),
      commit_lsn: formatLsn(c.commitLsn),
      ...(c.commitExact ? { commit_lsn_exact: true } : {}),
      first_lsn: formatLsn(c.firstLsn),
      slots,
      // Written only once offload has something to say, so that a stream without remote storage keeps its old payload.
      ...(c.backupLsn != null ? { backup_lsn: formatLsn(c.backupLsn) } : {}),
      ...(c.partialUploads?.length ? { partial_uploads: c.partialUploads } : {}),
    }),
  );
}

export function decodeControl(payload: Buffer, file: string): ControlData {
  const bad = (what: string) => new Error(`control file ${file} is damaged: ${what}; refusing to start this stream`);
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('payload is not JSON');
  }
  if (j === null || typeof j !== 'object') throw bad('payload is not an object');
  const lsn = (k: string): Lsn => {
    const v = j[k];
    if (typeof v !== 'string' || !isLsn(v)) throw bad(`${k} is not an LSN`);
    return parseLsn(v);
  };
  const int = (k: string, min: number, max: number): number => {
    const v = j[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(`${k} is not an integer in ${min}..${max}`);
    return v;
  };
  const sid = j.system_id;
  if (typeof sid !== 'string' || !/^\d{1,20}$/.test(sid)) throw bad('system_id is not a decimal number');
  const slotsRaw = j.slots;
  if (slotsRaw === null || typeof slotsRaw !== 'object' || Array.isArray(slotsRaw)) throw bad('slots is not an object');
  const slots: Record<string, SlotState> = {};
  for (const [name, s] of Object.entries(slotsRaw as Record<string, unknown>)) {
    const o = s as Record<string, unknown>;
    if (o === null || typeof o !== 'object' || typeof o.restart_lsn !== 'string' || !isLsn(o.restart_lsn) || typeof o.tli !== 'number') {
      throw bad(`slot ${JSON.stringify(name)} is malformed`);
    }
    slots[name] = { restartLsn: parseLsn(o.restart_lsn), tli: o.tli };
  }
  const c: ControlData = {
    systemId: BigInt(sid),
    pgVersion: int('pg_version', 9, 99),
    segmentSize: int('segment_size', 1 << 20, 1 << 30),
    tli: int('tli', 1, 0xffffffff),
    flushLsn: lsn('flush_lsn'),
    commitLsn: lsn('commit_lsn'),
    ...(j.commit_lsn_exact === true ? { commitExact: true } : {}),
    firstLsn: lsn('first_lsn'),
    slots,
    // Both absent without remote storage, and in control files written before offload existed.
    ...(j.backup_lsn !== undefined && j.backup_lsn !== null ? { backupLsn: lsn('backup_lsn') } : {}),
    ...(j.partial_uploads !== undefined ? { partialUploads: partialUploads(j.partial_uploads, bad) } : {}),
  };
  if (c.commitLsn > c.flushLsn) throw bad(`commit_lsn ${formatLsn(c.commitLsn)} is above flush_lsn ${formatLsn(c.flushLsn)}`);
  return c;
}

function partialUploads(v: unknown, bad: (what: string) => Error): PartialUpload[] {
  if (!Array.isArray(v)) throw bad('partial_uploads is not a list');
  return v.map((p: unknown) => {
    const o = p as Record<string, unknown>;
    if (o === null || typeof o !== 'object' || typeof o.name !== 'string' || !['in_progress', 'uploaded', 'deleting'].includes(o.state as string)) {
      throw bad(`partial upload ${JSON.stringify(p)} is malformed`);
    }
    return { name: o.name, state: o.state as PartialUpload['state'] };
  });
}

/** Reads `<dir>/walkeeper.control`; null when the stream has none yet. */
export async function readControlFile(dir: string): Promise<ControlData | null> {
  const file = path.join(dir, CONTROL_FILE_NAME);
  const payload = await native().controlRead(file);
  return payload === null ? null : decodeControl(payload, file);
}

/** Replaces `<dir>/walkeeper.control` atomically and durably. */
export async function writeControlFile(dir: string, c: ControlData): Promise<void> {
  await native().controlWrite(path.join(dir, CONTROL_FILE_NAME), encodeControl(c));
}
