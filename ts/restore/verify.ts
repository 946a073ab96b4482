/**
 * What fetch checks before a file reaches `%p`: a segment must be the
 * segment its name says, of the database system being recovered. Its first
 * page's long header gives the system id, segment size and PostgreSQL
 * version (they must be the expected ones); every page header must carry
 * the right magic, its own position and a timeline no later than the
 * name's, or be an all-zero page (PostgreSQL's padding after a segment
 * switch, and the zeros after the end of a `.partial`). Records themselves
 * are checked by PostgreSQL as it replays them (their CRCs).
 */
import { formatLsn } from '../lsn.js';
import { PageHeaderCheck } from '../wal/page_check.js';
import { segnoOf } from './names.js';

const VERSION_OF_MAGIC: Record<number, number> = { 0xd110: 15, 0xd113: 16, 0xd116: 17 };

export interface WalIdentity {
  systemId: bigint;
  pgVersion: number;
  segmentSize: number;
}

/** A file that fails its checks: it must not be used. */
export class BadWalError extends Error {}

export function checkSegment(f: { name: string; tli: number; hi: number; lo: number }, data: Buffer, expect: { systemId: bigint | null; pgVersion: number | null }): WalIdentity {
  const bad = (why: string) => new BadWalError(`${f.name}: ${why}`);
  if (data.length < 40) throw bad(`${data.length} bytes, not a WAL segment`);
  const pgVersion = VERSION_OF_MAGIC[data.readUInt16LE(0)];
  if (pgVersion === undefined) throw bad(`first page has magic ${data.readUInt16LE(0).toString(16).toUpperCase()}, not a PostgreSQL 15–17 WAL page`);
  const systemId = data.readBigUInt64LE(24);
  const segmentSize = data.readUInt32LE(32);
  if (segmentSize < 1 << 20 || segmentSize > 1 << 30 || (segmentSize & (segmentSize - 1)) !== 0) throw bad(`long header gives segment size ${segmentSize}`);
  if (expect.systemId !== null && systemId !== expect.systemId) throw bad(`is from database system ${systemId}, this server's is ${expect.systemId}`);
  if (expect.pgVersion !== null && pgVersion !== expect.pgVersion) throw bad(`is PostgreSQL ${pgVersion} WAL, this server is PostgreSQL ${expect.pgVersion}`);
  if (data.length !== segmentSize) throw bad(`${data.length} bytes, not ${segmentSize}`);
  const segno = segnoOf(f, segmentSize);
  if (segno === null) throw bad(`not a segment name for ${segmentSize}-byte segments`);
  const start = segno * BigInt(segmentSize);
  const err = new PageHeaderCheck(segmentSize, systemId, pgVersion, f.tli).check(start, data);
  if (err !== null) throw bad(err);
  // PageHeaderCheck leaves a header cut by the end of its input pending; a whole segment has none.
  if (data.readBigUInt64LE(8) !== start) throw bad(`first page is at ${formatLsn(data.readBigUInt64LE(8))}, not ${formatLsn(start)}`);
  return { systemId, pgVersion, segmentSize };
}
