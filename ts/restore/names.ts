/**
 * The file names PostgreSQL hands a restore_command as `%f`: a WAL segment
 * (`000000010000000000000003`), a timeline history file
 * (`00000002.history`) or a backup history file
 * (`000000010000000000000003.00000028.backup`). Anything else is a mistake
 * in how fetch was called, never a file to look for.
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

const hex8 = (n: number | bigint): string => n.toString(16).toUpperCase().padStart(8, '0');

/** The name of the segment `n` after `f` on the same timeline. */
export function segmentAfter(f: { tli: number; hi: number; lo: number }, n: number, segmentSize: number): string {
  const perId = BigInt(0x1_0000_0000 / segmentSize);
  const segno = BigInt(f.hi) * perId + BigInt(f.lo) + BigInt(n);
  return `${hex8(f.tli)}${hex8(segno / perId)}${hex8(segno % perId)}`;
}
