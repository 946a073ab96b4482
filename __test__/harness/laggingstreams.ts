// A node process serving many streams, each with its own lag: for what a
// node shows of many streams (the status page, `walkeeper status`).

import { importWal, readControlFile, writeControlFile } from '../../ts/index.js';
import { NodeProcess, startNodeProcess } from './nodeproc.js';
import { freePort } from './ports.js';
import { FIXTURE_SEG, makeWalFixture } from './walfixture.js';

const GROUPS = ['orders', 'billing', 'audit'];

export interface LaggingStream {
  name: string;
  lag: bigint;
}

/**
 * `n` streams (`orders-000`, `billing-001`, `audit-002`, …), each imported
 * from one segment of real WAL, each lag a multiple of `lagStep` bytes and
 * each lag twice (0 too), so that ties show the order among equals. The lag
 * is the control file's commit_lsn put below flush_lsn (WAL flushed on this
 * member and not yet on a quorum, as a member holds it after a clean stop
 * while its peers were behind: exact, so the node reports it at once); a
 * second member (`peer`) never answers, so the quorum leaves it there. The
 * caller stops the node.
 */
export async function nodeWithLaggingStreams(dataDir: string, n: number, lagStep: number): Promise<{ node: NodeProcess; streams: LaggingStream[]; peer: string }> {
  const fx = await makeWalFixture({ minBytes: FIXTURE_SEG });
  const streams: LaggingStream[] = [];
  try {
    const wal = await fx.prefixDir(1);
    for (let i = 0; i < n; i++) {
      const name = `${GROUPS[i % GROUPS.length]}-${String(i).padStart(3, '0')}`;
      const lag = BigInt(((i * 37) % (n / 2)) * lagStep);
      const r = await importWal({ dataDir, stream: name, walDir: wal });
      if (r.endLsn - r.firstLsn <= lag) throw new Error(`the imported WAL (${r.endLsn - r.firstLsn} bytes) is too short for a lag of ${lag}`);
      const c = (await readControlFile(r.dir))!;
      await writeControlFile(r.dir, { ...c, commitLsn: c.flushLsn - lag, commitExact: true });
      streams.push({ name, lag });
    }
  } finally {
    await fx.destroy();
  }
  const peer = `http://127.0.0.1:${await freePort()}`;
  const node = await startNodeProcess({ dataDir, extraArgs: ['--peers', peer] });
  return { node, streams, peer };
}
