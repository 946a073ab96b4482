/**
 * LSNs are bigint everywhere in walkeeper and printed the way PostgreSQL
 * prints them: `X/X`, upper-case hexadecimal, no leading zeros.
 */

export type Lsn = bigint;

export const INVALID_LSN: Lsn = 0n;
export const WAL_PAGE_SIZE = 8192;
const MAX_LSN = (1n << 64n) - 1n;

export function formatLsn(lsn: Lsn): string {
  if (lsn < 0n || lsn > MAX_LSN) throw new RangeError(`LSN ${lsn} is out of range`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

const LSN_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses `X/X` as pg_lsn does; throws a readable error otherwise. */
export function parseLsn(text: string): Lsn {
  const m = LSN_RE.exec(text);
  if (!m) throw new Error(`invalid LSN ${JSON.stringify(text)}: expected X/X in hexadecimal, e.g. 0/3000060`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function isLsn(text: string): boolean {
  return LSN_RE.test(text);
}

export function segmentNumber(lsn: Lsn, segSize: number): number {
  return Number(lsn / BigInt(segSize));
}

export function segmentStart(lsn: Lsn, segSize: number): Lsn {
  return lsn - (lsn % BigInt(segSize));
}

const hex8 = (n: number | bigint) => n.toString(16).toUpperCase().padStart(8, '0');

/** `%08X%08X%08X` as XLogFileName writes it. */
export function segmentFileName(tli: number, segno: number, segSize: number): string {
  const perId = 0x1_0000_0000 / segSize;
  return `${hex8(tli)}${hex8(Math.floor(segno / perId))}${hex8(segno % perId)}`;
}

export function historyFileName(tli: number): string {
  return `${hex8(tli)}.history`;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

export function minLsn(a: Lsn, b: Lsn): Lsn {
  return a < b ? a : b;
}
