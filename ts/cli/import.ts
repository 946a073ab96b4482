/**
 * `walkeeper import`: seed a stream from a pg_wal or WAL archive directory
 * (offline: the node must not be running on that data directory).
 */
import { formatLsn } from '../lsn.js';
import { importWal } from '../wal/import.js';
import { parse, UsageError } from './args.js';
import { DEFAULT_STREAM } from '../defaults.js';

export const IMPORT_USAGE = `Usage: walkeeper import --data-dir DIR [--stream NAME] <wal-dir>

Copies the WAL segments, the last partial segment and the timeline history
files of <wal-dir> (a pg_wal or a WAL archive) into a new stream, checking
that they belong to one database system, one segment size and one
PostgreSQL version, and sets the stream's flush and commit LSN to the end
of valid WAL. A node started on DIR then serves that WAL.

  --data-dir DIR   the node's data directory (default ./walkeeper-data)
  --stream NAME    stream to create (default main)
`;

export async function importCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { 'data-dir': { type: 'string' }, stream: { type: 'string' } }, IMPORT_USAGE);
  if (positionals.length !== 1) throw new UsageError(`import takes one WAL directory\n${IMPORT_USAGE}`);
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  const r = await importWal({ dataDir: str('data-dir') ?? './walkeeper-data', stream: str('stream') ?? DEFAULT_STREAM, walDir: positionals[0]! });
  process.stdout.write(
    `imported ${r.segments} segment${r.segments === 1 ? '' : 's'}${r.historyFiles ? ` and ${r.historyFiles} history file${r.historyFiles === 1 ? '' : 's'}` : ''} into stream ${r.stream} (${r.dir})\n` +
      `WAL from ${formatLsn(r.firstLsn)} to ${formatLsn(r.endLsn)} on timeline ${r.tli}; system id ${r.systemId}, PostgreSQL ${r.pgVersion}, ${r.segmentSize / (1 << 20)} MB segments\n` +
      `flush_lsn = commit_lsn = ${formatLsn(r.endLsn)} (${r.stopReason})\n` +
      (r.skipped.length ? `not imported:\n${r.skipped.map((s) => `  ${s}`).join('\n')}\n` : ''),
  );
  return 0;
}
