/**
 * The codes the Rust core's errors carry (`err.code`), in one place:
 * crates/walcore/src/error.rs (ErrorCode::as_str) for WAL and storage
 * errors, crates/walcore-node for the N-API layer's own, and Node's
 * ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE for bad arguments.
 */
export const WALCORE_ERROR_CODES = [
  'WALCORE_INVALID_ARGUMENT',
  'WALCORE_GAP',
  'WALCORE_REWRITE',
  'WALCORE_NOT_POSITIONED',
  'WALCORE_REMOVED',
  'WALCORE_NOT_YET_WRITTEN',
  'WALCORE_CORRUPT',
  'WALCORE_UNSUPPORTED_VERSION',
  'WALCORE_IO',
  'WALCORE_NO_SPACE',
  'WALCORE_PANIC',
  'WALCORE_NAPI',
  'WALCORE_CANCELLED',
  'ERR_INVALID_ARG_TYPE',
  'ERR_OUT_OF_RANGE',
] as const;

export type WalcoreErrorCode = (typeof WALCORE_ERROR_CODES)[number];

export interface WalcoreError extends Error {
  code: WalcoreErrorCode;
}

const known = new Set<string>(WALCORE_ERROR_CODES);

/** An error from the core (with `code`, when given, exactly that one). */
export function isWalcoreError(err: unknown, code?: WalcoreErrorCode): err is WalcoreError {
  const c = (err as { code?: unknown } | null)?.code;
  return err instanceof Error && typeof c === 'string' && known.has(c) && (code === undefined || c === code);
}
