/**
 * `walkeeper scan <wal-dir>`: where does valid WAL end in this directory?
 * The same answer pg_waldump gives, without its per-record output; useful
 * on a crashed node's stream directory or on an archive before `import`.
 */
import { open, readdir } from 'node:fs/promises';
import path from 'node:path';

import { findEndOfWal } from '../wal/wal_storage.js';
import { formatLsn, parseLsn } from '../lsn.js';
import { intOption, parse, UsageError } from './args.js';

export const SCAN_USAGE = `Usage: walkeeper scan <wal-dir> [--tli N] [--start LSN] [--json]

Decodes WAL records from the start of the oldest segment of the timeline
(or from --start, a record start) and prints where valid WAL ends.

  --tli N       timeline to read (default: the highest found)
  --start LSN   begin at this record start instead of the oldest segment
  --json        print the result as JSON
`;

const SEGMENT_RE = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/;

export async function scanCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { tli: { type: 'string' }, start: { type: 'string' }, json: { type: 'boolean' } },
    SCAN_USAGE,
  );
  if (positionals.length !== 1) throw new UsageError(`scan takes one directory\n${SCAN_USAGE}`);
  const dir = positionals[0]!;
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  const tliOpt = intOption('tli', str('tli'), 1, 0xffffffff);
  const startOpt = str('start') !== undefined ? parseLsn(str('start')!) : undefined;
  const names = (await readdir(dir).catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read directory ${dir}: ${e.code ?? e.message}`);
  })).filter((n) => SEGMENT_RE.test(n));
  if (names.length === 0) throw new Error(`${dir} holds no WAL segment files`);
  const tlis = [...new Set(names.map((n) => parseInt(n.slice(0, 8), 16)))].sort((a, b) => a - b);
  const tli = tliOpt ?? tlis[tlis.length - 1]!;
  const ofTli = names.filter((n) => parseInt(n.slice(0, 8), 16) <= tli).sort((a, b) => a.slice(8, 24).localeCompare(b.slice(8, 24)));
  if (ofTli.length === 0) throw new Error(`${dir} holds no segment of timeline ${tli}`);
  // The segment size is in the long header of every segment's first page.
  const first = ofTli[0]!;
  const fh = await open(path.join(dir, first), 'r');
  const hdr = Buffer.alloc(40);
  try {
    await fh.read(hdr, 0, 40, 0);
  } finally {
    await fh.close();
  }
  const segSize = hdr.readUInt32LE(32);
  if (segSize < 1 << 20 || segSize > 1 << 30 || (segSize & (segSize - 1)) !== 0) {
    throw new Error(`${first} does not start with a valid WAL long page header (segment size ${segSize})`);
  }
  const perId = 0x1_0000_0000 / segSize;
  const m = SEGMENT_RE.exec(first)!;
  const segno = parseInt(m[2]!, 16) * perId + parseInt(m[3]!, 16);
  const start = startOpt ?? BigInt(segno) * BigInt(segSize);
  const r = await findEndOfWal(dir, tli, segSize, start, { search: startOpt === undefined });
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({
        end_lsn: formatLsn(r.end),
        first_record: r.firstRecord === null ? null : formatLsn(r.firstRecord),
        last_record: r.lastRecord === null ? null : formatLsn(r.lastRecord),
        records: r.records,
        stop_reason: r.stopReason,
        pg_version: r.pgVersion,
        system_id: r.systemId?.toString() ?? null,
        timeline: tli,
        segment_size: segSize,
      })}\n`,
    );
  } else {
    process.stdout.write(
      `end of valid WAL: ${formatLsn(r.end)}\n` +
        `records: ${r.records}${r.firstRecord !== null ? ` from ${formatLsn(r.firstRecord)}` : ''}` +
        `${r.lastRecord !== null ? `, last at ${formatLsn(r.lastRecord)}` : ''}\n` +
        `stopped: ${r.stopReason}\n` +
        `timeline ${tli}, segment size ${segSize / (1 << 20)} MB, PostgreSQL ${r.pgVersion ?? 'unknown'}, system id ${r.systemId ?? 'unknown'}\n`,
    );
  }
  return 0;
}
