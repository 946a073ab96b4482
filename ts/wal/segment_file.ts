/**
 * A WAL segment read back from an archive, written to a new file and
 * checked in the same pass on the thread pool (zstd or plain bytes in,
 * page headers, system id and version checked on the way, zero padding
 * when asked): see crates/walcore/src/segment_file.rs. A segment that fails
 * its checks rejects with WALCORE_CORRUPT and leaves no file.
 */
import { native, type SegmentIdentity, type SegmentWriteOptions } from '../native/binding.js';

export type { SegmentIdentity, SegmentWriteOptions };

export function writeSegment(o: SegmentWriteOptions): Promise<SegmentIdentity> {
  return native().segmentWrite(o);
}
