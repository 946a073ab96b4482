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

/**
 * The file names PostgreSQL hands a restore_command as `%f`, and that
 * `GET /v1/streams/<name>/wal/<file>` serves: a WAL segment
 * (`000000010000000000000003`), a timeline history file
 * (`00000002.history`) or a backup history file
 * (`000000010000000000000003.00000028.backup`).
 */
export type WalFileName =
  | { kind: 'segment'; name: string; tli: number; hi: number; lo: number }
  | { kind: 'history'; name: string; tli: number }
  | { kind: 'backup'; name: string };

export function parseWalFileName(name: string): WalFileName | null {
  let m = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
  if (m) return { kind: 'segment', name, tli: Number.parseInt(m[1]!, 16), hi: Number.parseInt(m[2]!, 16), lo: Number.parseInt(m[3]!, 16) };
  m = /^([0-9A-F]{8})\.history$/.exec(name);
  if (m) return { kind: 'history', name, tli: Number.parseInt(m[1]!, 16) };
  if (/^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$/.test(name)) return { kind: 'backup', name };
  return null;
}

/** The segment number a segment name stands for, or null when the name cannot be one for `segmentSize`. */
export function segnoOf(f: { hi: number; lo: number }, segmentSize: number): bigint | null {
  const perId = 0x1_0000_0000 / segmentSize;
  if (f.lo >= perId) return null;
  return BigInt(f.hi) * BigInt(perId) + BigInt(f.lo);
}

/** The name of the segment `n` after `f` on the same timeline. */
export function segmentAfter(f: { tli: number; hi: number; lo: number }, n: number, segmentSize: number): string {
  const perId = BigInt(0x1_0000_0000 / segmentSize);
  const segno = BigInt(f.hi) * perId + BigInt(f.lo) + BigInt(n);
  return `${hex8(f.tli)}${hex8(segno / perId)}${hex8(segno % perId)}`;
}
