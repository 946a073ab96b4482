/**
 * Read-through: WAL that retention removed here after it was offloaded,
 * read back from object storage for a replication client that starts below
 * this node's oldest segment (a standby restored from an old base backup, a
 * peer far behind, pg_receivewal on an old slot). Neon's safekeeper does the
 * same for lagging readers. The sender streams it as it streams local WAL,
 * so the client sees no difference.
 *
 * A segment is read whole (decompressed at most to one segment's size) and
 * its page headers are checked before a byte of it is sent; the last two
 * are kept, so that several clients catching up together (or one reading a
 * segment in many messages) fetch each once.
 */
import type { Lsn } from '../lsn.js';
import type { RemoteStorage } from '../remote/remote_storage.js';
import type { ArchivedWal, Stream } from '../stream/stream.js';
import { zstdDecompress } from '../wal/compress.js';
import { PageHeaderCheck } from '../wal/page_check.js';
import { timelineOfLsn } from '../wal/timeline.js';
import { segmentName, segmentObject, streamPrefix } from './names.js';

const KEEP = 2;

export class ArchiveReader implements ArchivedWal {
  private readonly cache = new Map<bigint, Promise<Buffer | null>>();

  constructor(
    private readonly stream: Stream,
    private readonly remote: RemoteStorage,
  ) {}

  segment(segno: bigint): Promise<Buffer | null> {
    let p = this.cache.get(segno);
    if (!p) {
      p = this.read(segno);
      this.cache.set(segno, p);
      // A failure is not kept: the next reader asks again.
      p.catch(() => this.cache.delete(segno));
      while (this.cache.size > KEEP) this.cache.delete(this.cache.keys().next().value!);
    }
    return p;
  }

  private async read(segno: bigint): Promise<Buffer | null> {
    const s = this.stream;
    const seg = BigInt(s.segmentSize);
    const start: Lsn = segno * seg;
    // The segment's newest timeline, as the offloader uploaded it: after a switch inside it, that
    // file holds the old timeline's bytes up to the switch point.
    const tli = timelineOfLsn(s.history, start + seg - 1n);
    const name = segmentName(tli, segno, s.segmentSize);
    const z = await this.remote.get(streamPrefix(s.name, s.systemId) + segmentObject(name));
    if (z === null) return null;
    const data = await zstdDecompress(z, s.segmentSize);
    const bad = data.length !== s.segmentSize ? `${data.length} bytes, not ${s.segmentSize}` : new PageHeaderCheck(s.segmentSize, s.systemId, s.pgVersion, tli).check(start, data);
    if (bad !== null) throw new Error(`${segmentObject(name)} in ${this.remote.location} fails its checks: ${bad}`);
    return data;
  }
}
