/**
 * zstd, through the Rust core (the system libzstd linked statically; see
 * crates/walcore/src/zstd.rs), on the libuv thread pool: a 16 MiB segment
 * is never compressed on the JavaScript thread.
 */
import { native } from '../native/binding.js';

/** One zstd frame of `data` at `level` (1–19; 3 is zstd's default). */
export function zstdCompress(data: Buffer, level: number): Promise<Buffer> {
  return native().zstdCompress(data, level);
}

/**
 * Every frame of `data`, decompressed; rejects (WALCORE_CORRUPT) when the
 * result would exceed `maxBytes` or the data ends inside a frame.
 */
export function zstdDecompress(data: Buffer, maxBytes: number): Promise<Buffer> {
  return native().zstdDecompress(data, maxBytes);
}
