// Real WAL for node tests: a throwaway PostgreSQL 15 primary with 1 MiB
// segments writes a few MiB (records spanning pages and segments, one
// XLOG_SWITCH) and is stopped, so its pg_wal stays as it is.

import { copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

import { findEndOfWal } from '../../ts/index.js';
import { startPostgres, type PgCluster } from './pg.js';
import { createTempDir, type TempDir } from './tmp.js';
import { generateWal } from './wal.js';

export const FIXTURE_SEG = 1024 * 1024;

export interface WalFixture {
  primary: PgCluster;
  walDir: string;
  /** Segment names of TLI 1 with valid WAL, oldest first. */
  segments: string[];
  firstLsn: bigint;
  /** End of valid WAL. */
  end: bigint;
  systemId: bigint;
  tmp: TempDir;
  /** The primary's WAL bytes from firstLsn to end. */
  bytes(): Promise<Buffer>;
  /** A directory holding only the first `n` segments (for a node that must get the rest later). */
  prefixDir(n: number): Promise<string>;
  destroy(): Promise<void>;
}

export async function makeWalFixture(opts: { minBytes?: number } = {}): Promise<WalFixture> {
  const tmp = await createTempDir('walkeeper-walfixture-');
  const primary = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB', autovacuum: 'off' } });
  try {
    await generateWal(primary, { minBytes: opts.minBytes ?? 4 * FIXTURE_SEG, switches: 1 });
    const systemId = await primary.systemId();
    await primary.stop();
    const names = (await readdir(primary.walDir)).filter((n) => /^00000001[0-9A-F]{16}$/.test(n)).sort();
    const firstLsn = BigInt(parseInt(names[0]!.slice(16), 16)) * BigInt(FIXTURE_SEG);
    const scan = await findEndOfWal(primary.walDir, 1, FIXTURE_SEG, firstLsn, { search: true });
    const lastSeg = Number((scan.end - 1n) / BigInt(FIXTURE_SEG));
    const segments = names.filter((n) => parseInt(n.slice(16), 16) <= lastSeg);
    let prefixes = 0;
    return {
      primary,
      walDir: primary.walDir,
      segments,
      firstLsn,
      end: scan.end,
      systemId,
      tmp,
      async bytes() {
        const all = Buffer.concat(await Promise.all(segments.map((n) => readFile(path.join(primary.walDir, n)))));
        return all.subarray(0, Number(scan.end - firstLsn));
      },
      async prefixDir(n: number) {
        const dir = path.join(tmp.path, `prefix-${prefixes++}`);
        await mkdir(dir);
        for (const s of segments.slice(0, n)) await copyFile(path.join(primary.walDir, s), path.join(dir, s));
        return dir;
      },
      async destroy() {
        await primary.destroy();
        await tmp.cleanup();
      },
    };
  } catch (e) {
    await primary.destroy();
    await tmp.cleanup();
    throw e;
  }
}
