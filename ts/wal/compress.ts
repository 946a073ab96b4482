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

/**
 * The first `length` bytes of a file (all of it by default), zero-padded to
 * `padTo`, read and compressed on the thread pool: a segment never becomes
 * a 16 MiB JavaScript buffer on its way to object storage.
 */
export function zstdCompressFile(file: string, level: number, opts: { length?: number; padTo?: number } = {}): Promise<{ bytes: number; data: Buffer }> {
  return native().zstdCompressFile(file, level, opts.length, opts.padTo);
}
