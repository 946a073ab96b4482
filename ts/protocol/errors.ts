/**
 * SQLSTATEs and the error type every protocol-level failure is reported
 * with. A PgError becomes an ErrorResponse on the wire, with the code a
 * PostgreSQL server would use for the same situation, so that clients
 * (libpq, pg_receivewal, the walreceiver) react to it as they would to a
 * real server.
 */

export const SQLSTATE = {
  SUCCESSFUL_COMPLETION: '00000',
  CONNECTION_FAILURE: '08006',
  PROTOCOL_VIOLATION: '08P01',
  FEATURE_NOT_SUPPORTED: '0A000',
  INVALID_PARAMETER_VALUE: '22023',
  INVALID_AUTHORIZATION_SPECIFICATION: '28000',
  INVALID_PASSWORD: '28P01',
  INVALID_CATALOG_NAME: '3D000',
  SYNTAX_ERROR: '42601',
  INVALID_NAME: '42602',
  UNDEFINED_OBJECT: '42704',
  DUPLICATE_OBJECT: '42710',
  CONFIGURATION_LIMIT_EXCEEDED: '53400',
  OBJECT_IN_USE: '55006',
  QUERY_CANCELED: '57014',
  ADMIN_SHUTDOWN: '57P01',
  CANNOT_CONNECT_NOW: '57P03',
  UNDEFINED_FILE: '58P01',
  INTERNAL_ERROR: 'XX000',
} as const;

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';

export interface PgErrorFields {
  severity?: Severity;
  detail?: string;
  hint?: string;
}

/** An error to report to the client as an ErrorResponse. */
export class PgError extends Error {
  readonly code: string;
  readonly severity: Severity;
  readonly detail: string | undefined;
  readonly hint: string | undefined;

  constructor(code: string, message: string, fields: PgErrorFields = {}) {
    super(message);
    this.name = 'PgError';
    this.code = code;
    this.severity = fields.severity ?? 'ERROR';
    this.detail = fields.detail;
    this.hint = fields.hint;
  }
}

/** Bytes on the wire that do not follow the protocol (the connection is closed after reporting it). */
export class ProtocolError extends PgError {
  constructor(message: string) {
    super(SQLSTATE.PROTOCOL_VIOLATION, message, { severity: 'FATAL' });
    this.name = 'ProtocolError';
  }
}
