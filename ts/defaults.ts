/**
 * Defaults shared across rooms, defined once. Anything a user can change is
 * a setting (ts/cli/settings.ts); these are the values behind the settings.
 */

/** The stream a node ingests and serves when neither side names one. */
export const DEFAULT_STREAM = 'main';

/**
 * Largest XLogData payload: PostgreSQL's MAX_SEND_SIZE (16 × XLOG_BLCKSZ),
 * also Neon's. The Rust core has the same constant (xlogdata.rs
 * DEFAULT_MAX_SEND); a test checks that the two agree.
 */
export const MAX_SEND_SIZE = 128 * 1024;
