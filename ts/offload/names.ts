/**
 * Object names in the archive. Everything of a stream lives under
 * `<stream>/<system id>/` (below the storage's own prefix), with
 * PostgreSQL's file names so that other tools can list and read them:
 *
 *   000000010000000000000003.zst     a complete segment, zstd-compressed
 *   000000010000000000000003         the same, uncompressed (other tools write these; read, never written)
 *   00000002.history                 a timeline history file, as PostgreSQL writes it
 *   000000010000000000000004.00000000043A2F18.n2.partial.zst
 *                                    the unfinished tail of segment 4 up to
 *                                    0/43A2F18, uploaded by node 2 after a quiet period
 */
import type { Lsn } from '../lsn.js';

export const streamPrefix = (stream: string, systemId: bigint): string => `${stream}/${systemId}/`;

const hex8 = (n: number | bigint): string => n.toString(16).toUpperCase().padStart(8, '0');

/** PostgreSQL's segment file name (XLogFileName). */
export function segmentName(tli: number, segno: bigint, segmentSize: number): string {
  const perId = 0x1_0000_0000n / BigInt(segmentSize);
  return `${hex8(tli)}${hex8(segno / perId)}${hex8(segno % perId)}`;
}

export const segmentObject = (name: string): string => `${name}.zst`;

export const historyObject = (tli: number): string => `${hex8(tli)}.history`;

export function partialObject(segment: string, end: Lsn, nodeId: number): string {
  return `${segment}.${end.toString(16).toUpperCase().padStart(16, '0')}.n${nodeId}.partial.zst`;
}

/** What an object name says, or null for names that are not ours to interpret. */
export type ArchiveName =
  | { kind: 'segment'; segment: string; compressed: boolean }
  | { kind: 'history'; tli: number }
  | { kind: 'partial'; segment: string; end: Lsn; nodeId: number };

export function parseObjectName(name: string): ArchiveName | null {
  let m = /^([0-9A-F]{24})(\.zst)?$/.exec(name);
  if (m) return { kind: 'segment', segment: m[1]!, compressed: m[2] !== undefined };
  m = /^([0-9A-F]{8})\.history$/.exec(name);
  if (m) return { kind: 'history', tli: Number.parseInt(m[1]!, 16) };
  m = /^([0-9A-F]{24})\.([0-9A-F]{16})\.n(\d+)\.partial\.zst$/.exec(name);
  if (m) return { kind: 'partial', segment: m[1]!, end: BigInt(`0x${m[2]}`), nodeId: Number(m[3]) };
  return null;
}
