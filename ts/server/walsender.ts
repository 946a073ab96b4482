/**
 * The result sets and startup parameters of a PostgreSQL 15 physical
 * walsender, byte for byte: column names, type OIDs, lengths and tags as the
 * real server sends them (pg_receivewal and the walreceiver check the column
 * counts, libpq the types). One place, used by the node and by the test
 * suite's fake upstream.
 */
import { formatLsn, type Lsn } from '../lsn.js';
import { backend, type FieldSpec } from '../protocol/serializer.js';

const TEXT = { typeOid: 25, typeLen: -1, typeMod: -1 };
const INT4 = { typeOid: 23, typeLen: 4, typeMod: -1 };
const INT8 = { typeOid: 20, typeLen: 8, typeMod: -1 };

/** RowDescription, the DataRows and CommandComplete of one result set. */
export function resultSet(fields: FieldSpec[], rows: (string | null)[][], tag: string): Buffer {
  return Buffer.concat([backend.rowDescription(fields), ...rows.map((r) => backend.dataRow(r)), backend.commandComplete(tag)]);
}

export function identifySystemResult(systemId: bigint, tli: number, xlogpos: Lsn): Buffer {
  return resultSet(
    [
      { name: 'systemid', ...TEXT },
      { name: 'timeline', ...INT4 },
      { name: 'xlogpos', ...TEXT },
      { name: 'dbname', ...TEXT },
    ],
    [[systemId.toString(), String(tli), formatLsn(xlogpos), null]],
    'IDENTIFY_SYSTEM',
  );
}

export function showResult(name: string, value: string): Buffer {
  return resultSet([{ name, ...TEXT }], [[value]], 'SHOW');
}

/** TIMELINE_HISTORY: both columns text with typmod 0, as PostgreSQL 15 sends them. */
export function timelineHistoryResult(fileName: string, content: string): Buffer {
  return resultSet(
    [
      { name: 'filename', typeOid: 25, typeLen: -1, typeMod: 0 },
      { name: 'content', typeOid: 25, typeLen: -1, typeMod: 0 },
    ],
    [[fileName, content]],
    'TIMELINE_HISTORY',
  );
}

/** READ_REPLICATION_SLOT: one all-NULL row for a missing slot. */
export function readReplicationSlotResult(slot: { restartLsn: Lsn; tli: number } | null): Buffer {
  const row = slot
    ? ['physical', slot.restartLsn === 0n ? null : formatLsn(slot.restartLsn), slot.restartLsn === 0n ? null : String(slot.tli)]
    : [null, null, null];
  return resultSet(
    [
      { name: 'slot_type', ...TEXT },
      { name: 'restart_lsn', ...TEXT },
      { name: 'restart_tli', ...INT8 },
    ],
    [row],
    'READ_REPLICATION_SLOT',
  );
}

/** CREATE_REPLICATION_SLOT … PHYSICAL: PostgreSQL 15 answers 0/0 as consistent_point, even with RESERVE_WAL. */
export function createReplicationSlotResult(name: string): Buffer {
  return resultSet(
    [
      { name: 'slot_name', ...TEXT },
      { name: 'consistent_point', ...TEXT },
      { name: 'snapshot_name', ...TEXT },
      { name: 'output_plugin', ...TEXT },
    ],
    [[name, '0/0', null, null]],
    'CREATE_REPLICATION_SLOT',
  );
}

/** After a historic timeline: where the next one starts (without the tag; START_STREAMING follows). */
export function nextTimelineRows(tli: number, start: Lsn): Buffer {
  return Buffer.concat([
    backend.rowDescription([
      { name: 'next_tli', ...INT8 },
      { name: 'next_tli_startpos', ...TEXT },
    ]),
    backend.dataRow([String(tli), formatLsn(start)]),
  ]);
}

/** `SHOW wal_segment_size` as PostgreSQL formats it: pg_receivewal only parses MB and GB. */
export function segmentSizeText(bytes: number): string {
  return bytes >= 1 << 30 ? `${bytes / (1 << 30)}GB` : `${bytes / (1 << 20)}MB`;
}

/** The ParameterStatus set of a physical walsender (connected to no database: SQL_ASCII). */
export function walsenderParameters(serverVersion: string, user: string, applicationName: string): Record<string, string> {
  return {
    application_name: applicationName,
    client_encoding: 'SQL_ASCII',
    DateStyle: 'ISO, MDY',
    default_transaction_read_only: 'off',
    in_hot_standby: 'off',
    integer_datetimes: 'on',
    IntervalStyle: 'postgres',
    is_superuser: 'on',
    server_encoding: 'SQL_ASCII',
    // pg_receivewal requires 9.3 ≤ server major ≤ its own.
    server_version: serverVersion,
    session_authorization: user,
    standard_conforming_strings: 'on',
    TimeZone: 'UTC',
  };
}
