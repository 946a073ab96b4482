// Producing real WAL on a test cluster: records of many sizes, some larger
// than a WAL page (8 KiB) and, with bigRecords, larger than 1 MiB so that
// single records span pages and segments.

import type { PgCluster } from './pg.js';
import { lsnOf } from './pgtools.js';

export interface GenerateWalOptions {
  /** Keep going until at least this many bytes of WAL (LSN distance) were written. */
  minBytes: number;
  /**
   * Also write values and single WAL records larger than 1 MiB (a > 1 MiB
   * row stored uncompressed out of line, and a > 1 MiB logical-decoding
   * message, which is one WAL record). Default false: records up to ~300 KB.
   */
  bigRecords?: boolean;
  /** Number of `SELECT pg_switch_wal()` calls spread over the run. Default 0. */
  switches?: number;
}

export interface GeneratedWal {
  /** pg_current_wal_flush_lsn() before. */
  startLsn: bigint;
  /** pg_current_wal_flush_lsn() after the final CHECKPOINT. */
  endLsn: bigint;
}

const SETUP = `
CREATE TABLE IF NOT EXISTS walkeeper_walgen (id bigserial PRIMARY KEY, kind text NOT NULL, v text);
ALTER TABLE walkeeper_walgen ALTER COLUMN v SET STORAGE EXTERNAL;
CREATE OR REPLACE FUNCTION walkeeper_rand_text(n integer) RETURNS text
  LANGUAGE sql VOLATILE AS
  $$ SELECT left(string_agg(md5(random()::text), ''), n) FROM generate_series(1, (n + 31) / 32) $$;
`;

/** Value sizes (bytes) for one round; rows with `count` copies each. */
const SMALL_ROUND: Array<[size: number, count: number]> = [
  [40, 200],
  [300, 50],
  [2_500, 20], // just over the TOAST threshold: out of line, one chunk
  [9_000, 10], // larger than a WAL page
  [20_000, 5],
  [70_000, 3],
  [300_000, 2],
];
const BIG_ROUND: Array<[size: number, count: number]> = [
  [1_200_000, 1], // larger than 1 MiB
  [2_500_000, 1],
];
/** Single-record sizes for logical messages (each is exactly one WAL record). */
const SMALL_MESSAGES = [9_000, 40_000];
const BIG_MESSAGES = [1_500_000];

/**
 * Writes at least `minBytes` of WAL on `cluster` (table inserts of varying,
 * incompressible sizes, updates, logical messages, optional pg_switch_wal()
 * calls), then CHECKPOINT. Returns the flush LSNs before and after.
 */
export async function generateWal(cluster: PgCluster, opts: GenerateWalOptions): Promise<GeneratedWal> {
  const { minBytes, bigRecords = false, switches = 0 } = opts;
  const c = await cluster.connect();
  try {
    const flush = async (): Promise<bigint> => {
      const r = await c.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
      return lsnOf(r.rows[0]!.l);
    };
    const written = async (from: bigint): Promise<bigint> => {
      const r = await c.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
      return lsnOf(r.rows[0]!.l) - from;
    };

    const startLsn = await flush();
    await c.query(SETUP);

    const rows = bigRecords ? [...SMALL_ROUND, ...BIG_ROUND] : SMALL_ROUND;
    const messages = bigRecords ? [...SMALL_MESSAGES, ...BIG_MESSAGES] : SMALL_MESSAGES;
    const want = BigInt(Math.max(0, Math.ceil(minBytes)));
    let switchesDone = 0;
    let round = 0;

    const maybeSwitch = async (done: bigint): Promise<void> => {
      // switch number k (1-based) happens once k/(switches+1) of minBytes is written
      while (switchesDone < switches && want > 0n && done * BigInt(switches + 1) >= want * BigInt(switchesDone + 1)) {
        await c.query('SELECT pg_switch_wal()');
        await c.query(`INSERT INTO walkeeper_walgen(kind, v) VALUES ('after-switch', walkeeper_rand_text(100))`);
        switchesDone++;
      }
    };

    for (;;) {
      round++;
      for (const [size, count] of rows) {
        await c.query(
          `INSERT INTO walkeeper_walgen(kind, v) SELECT $1, walkeeper_rand_text($2) FROM generate_series(1, $3)`,
          [`r${round}-${size}`, size, count],
        );
        await maybeSwitch(await written(startLsn));
      }
      for (const size of messages) {
        await c.query(`SELECT pg_logical_emit_message(false, 'walkeeper-test', walkeeper_rand_text($1))`, [size]);
      }
      // a transaction with several record types (update, delete, hot/non-hot)
      await c.query('BEGIN');
      await c.query(`UPDATE walkeeper_walgen SET kind = kind || '-u' WHERE id IN (SELECT id FROM walkeeper_walgen ORDER BY random() LIMIT 50)`);
      await c.query(`DELETE FROM walkeeper_walgen WHERE id IN (SELECT id FROM walkeeper_walgen WHERE length(v) < 500 ORDER BY random() LIMIT 20)`);
      await c.query('COMMIT');
      const done = await written(startLsn);
      await maybeSwitch(done);
      if (done >= want) break;
    }
    while (switchesDone < switches) {
      await c.query('SELECT pg_switch_wal()');
      await c.query(`INSERT INTO walkeeper_walgen(kind, v) VALUES ('after-switch', walkeeper_rand_text(100))`);
      switchesDone++;
    }
    await c.query('CHECKPOINT');
    const endLsn = await flush();
    return { startLsn, endLsn };
  } finally {
    await c.end().catch(() => undefined);
  }
}
