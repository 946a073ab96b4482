/**
 * Timeline history: which TLIs a stream's WAL went through and where each
 * one ended. Parsed from `%08X.history` files exactly as PostgreSQL's
 * readTimeLineHistory does, because clients hold us to the same answers: a
 * standby asks for TLI n's history and then where TLI n ends, and
 * pg_receivewal follows the switch only if our switch point matches.
 */
import { formatLsn, isLsn, parseLsn, type Lsn } from '../lsn.js';

export interface TimelineEntry {
  tli: number;
  /** Where WAL of this timeline begins (0 for the first). */
  begin: Lsn;
  /** Where it ends — the switch point to the next — or null for the current one. */
  end: Lsn | null;
}

/**
 * The history of timeline `tli` from its history file (null/empty for TLI 1).
 * Blank lines and `#` comments are skipped; each line is
 * `parentTLI<TAB>switchpoint<TAB>reason`.
 */
export function parseHistory(tli: number, content: string | null, fileName = `${tli.toString(16).toUpperCase().padStart(8, '0')}.history`): TimelineEntry[] {
  const entries: TimelineEntry[] = [];
  let prevEnd = 0n;
  let lastTli = 0;
  if (content !== null) {
    for (const raw of content.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const [tliText, lsnText] = line.split(/\s+/);
      if (!tliText || !/^\d+$/.test(tliText)) throw new Error(`syntax error in history file ${fileName}: expected a numeric timeline ID in ${JSON.stringify(raw)}`);
      if (!lsnText || !isLsn(lsnText)) throw new Error(`syntax error in history file ${fileName}: expected a write-ahead log switchpoint location in ${JSON.stringify(raw)}`);
      const parent = Number(tliText);
      const end = parseLsn(lsnText);
      if (parent <= lastTli || parent >= tli) throw new Error(`invalid data in history file ${fileName}: timeline IDs must be in increasing sequence and below ${tli}`);
      if (end < prevEnd) throw new Error(`invalid data in history file ${fileName}: switchpoints must not go backwards`);
      entries.push({ tli: parent, begin: prevEnd, end });
      prevEnd = end;
      lastTli = parent;
    }
  }
  if (tli > 1 && entries.length === 0) throw new Error(`history file ${fileName} for timeline ${tli} lists no parent timeline`);
  entries.push({ tli, begin: prevEnd, end: null });
  return entries;
}

/** The entry for `tli`, or undefined when `tli` is not in this history. */
export function timelineEntry(history: TimelineEntry[], tli: number): TimelineEntry | undefined {
  return history.find((e) => e.tli === tli);
}

/** The timeline that follows `tli` in this history, and where it starts. */
export function nextTimeline(history: TimelineEntry[], tli: number): { tli: number; start: Lsn } | undefined {
  const i = history.findIndex((e) => e.tli === tli);
  if (i < 0 || i + 1 >= history.length) return undefined;
  return { tli: history[i + 1]!.tli, start: history[i]!.end! };
}

/** The timeline whose WAL holds `lsn` (the latest one that began at or before it). */
export function timelineOfLsn(history: readonly TimelineEntry[], lsn: Lsn): number {
  for (const e of history) if (e.end === null || lsn < e.end) return e.tli;
  return history[history.length - 1]!.tli;
}

/** One history-file line, as PostgreSQL writes it. */
export function historyLine(parent: number, switchpoint: Lsn, reason: string): string {
  return `${parent}\t${formatLsn(switchpoint)}\t${reason}\n`;
}
