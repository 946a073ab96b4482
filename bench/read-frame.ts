/**
 * bench/read-frame: how close is serving WAL to just reading it?
 *
 * Generates ≥ 256 MiB of real WAL with a throwaway PostgreSQL 15 (pgbench
 * -i), copies it into a walkeeper stream through the store, then, with
 * everything in the page cache, compares in the same run:
 *   - framed reads: one XLogData message at a time into one reused buffer
 *     (the sender's path: storeFrameNoWait, RWF_NOWAIT pread, header),
 *   - the same on the thread pool (the cold-read path, for reference),
 *   - fs.readSync of the same bytes in the same 128 KiB pieces into one
 *     reused buffer (the floor: no framing at all).
 * Prints GB/s of each and the ratios. Target: framed ≥ 0.9 × readSync.
 *
 *   npm run bench:read-frame [-- --mib 256 --rounds 5]
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { formatLsn, native, WalStore, XLOGDATA_HEADER_SIZE, MAX_SEND_SIZE } from '../ts/index.js';
import { createTempDir, lsnOf, runPgTool, startPostgres } from '../__test__/harness/index.js';
import { record } from './results.js';

const { values } = parseArgs({
  options: { mib: { type: 'string', default: '256' }, rounds: { type: 'string', default: '5' } },
});
const wantMiB = Number(values.mib);
const rounds = Number(values.rounds);
const SEG = 16 * 1024 * 1024;

function log(s: string) {
  process.stderr.write(`[read-frame] ${s}\n`);
}

async function main() {
  const tmp = await createTempDir('walkeeper-bench-');
  const pg = await startPostgres({
    conf: { wal_keep_size: `${wantMiB * 4}MB`, max_wal_size: `${wantMiB * 4}MB`, autovacuum: 'off' },
  });
  try {
    const [s0] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
    const startLsn = lsnOf(s0!.l) - (lsnOf(s0!.l) % BigInt(SEG));
    // pgbench -i writes its tables and indexes through WAL; scale until we have enough.
    let scale = Math.max(1, Math.ceil(wantMiB / 12));
    for (;;) {
      log(`pgbench -i -s ${scale}`);
      await runPgTool('pgbench', ['-i', '-q', '-s', String(scale), '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 600_000 });
      const [e] = await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
      if (lsnOf(e!.l) - startLsn >= BigInt(wantMiB) * 1048576n) break;
      scale *= 2;
    }
    await pg.query('CHECKPOINT');
    const [e] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
    const end = lsnOf(e!.l);
    await pg.stop();

    // Into a walkeeper stream, through the store (as ingest would).
    const dir = path.join(tmp.path, 'stream');
    const store = await WalStore.open(dir, SEG, 1);
    const names = new Set(await readdir(pg.walDir));
    let pos = startLsn;
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    while (pos < end) {
      const segno = Number(pos / BigInt(SEG));
      const name = `00000001${Math.floor(segno / 256).toString(16).toUpperCase().padStart(8, '0')}${(segno % 256).toString(16).toUpperCase().padStart(8, '0')}`;
      if (!names.has(name)) throw new Error(`segment ${name} was removed by PostgreSQL; raise wal_keep_size`);
      const fd = openSync(path.join(pg.walDir, name), 'r');
      for (let off = 0; off < SEG && pos < end; off += chunk.length) {
        const n = Math.min(chunk.length, Number(end - pos));
        readSync(fd, chunk, 0, n, off);
        pos = await store.append(pos, chunk.subarray(0, n));
      }
      closeSync(fd);
    }
    await store.flush();
    const total = Number(end - startLsn);
    log(`${(total / 1048576).toFixed(0)} MiB of WAL from ${formatLsn(startLsn)} to ${formatLsn(end)} in ${store.list().length} segments`);

    const buf = Buffer.alloc(XLOGDATA_HEADER_SIZE + MAX_SEND_SIZE);
    const framedSync = async () => {
      let p = startLsn;
      let bytes = 0;
      let slow = 0;
      while (p < end) {
        let n = store.frameNoWait(buf, { tli: 1, start: p, end, walEnd: end });
        if (n < 0) {
          slow++;
          n = await store.frameAsync(buf, { tli: 1, start: p, end, walEnd: end });
        }
        const m = n - XLOGDATA_HEADER_SIZE;
        bytes += m;
        p += BigInt(m);
      }
      return { bytes, slow };
    };
    const framedAsync = async () => {
      let p = startLsn;
      let bytes = 0;
      while (p < end) {
        const m = (await store.frameAsync(buf, { tli: 1, start: p, end, walEnd: end })) - XLOGDATA_HEADER_SIZE;
        bytes += m;
        p += BigInt(m);
      }
      return { bytes, slow: 0 };
    };
    const files = store.list().map((s) => path.join(dir, s.name));
    const readSyncAll = async () => {
      let bytes = 0;
      let left = total;
      let first = true;
      for (const f of files) {
        const fd = openSync(f, 'r');
        let off = first ? Number(startLsn % BigInt(SEG)) : 0;
        first = false;
        while (off < SEG && left > 0) {
          const n = readSync(fd, buf, XLOGDATA_HEADER_SIZE, Math.min(MAX_SEND_SIZE, SEG - off, left), off);
          off += n;
          left -= n;
          bytes += n;
        }
        closeSync(fd);
      }
      return { bytes, slow: 0 };
    };

    const runs: Record<string, number[]> = { framed: [], framedAsync: [], readSync: [] };
    const fns: Record<string, () => Promise<{ bytes: number; slow: number }>> = { framed: framedSync, framedAsync, readSync: readSyncAll };
    await readSyncAll(); // warm the page cache
    for (let r = 0; r < rounds; r++) {
      for (const k of ['readSync', 'framed', 'framedAsync']) {
        const t0 = process.hrtime.bigint();
        const { bytes, slow } = await fns[k]!();
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        if (bytes !== total) throw new Error(`${k} read ${bytes} bytes, expected ${total}`);
        runs[k]!.push(bytes / secs / 1e9);
        if (slow > 0) log(`${k}: ${slow} messages needed the thread pool`);
      }
    }
    const best = (k: string) => Math.max(...runs[k]!);
    const median = (k: string) => [...runs[k]!].sort((a, b) => a - b)[Math.floor(runs[k]!.length / 2)]!;
    const row = (k: string, label: string) =>
      `${label.padEnd(34)} ${median(k).toFixed(2).padStart(6)} GB/s (best ${best(k).toFixed(2)})   ratio ${(median(k) / median('readSync')).toFixed(2)}×`;
    console.log(`read-frame: ${(total / 1048576).toFixed(0)} MiB of real PostgreSQL 15 WAL from the page cache, ${rounds} rounds, median (best)`);
    console.log(`machine: ${os.cpus()[0]?.model ?? 'unknown'} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, crc32c ${native().crc32cImplementation()}`);
    console.log(row('readSync', 'fs.readSync 128 KiB (baseline)'));
    console.log(row('framed', 'framed XLogData (sender path)'));
    console.log(row('framedAsync', 'framed XLogData on the thread pool'));
    const ratio = median('framed') / median('readSync');
    record({ bench: 'read-frame', what: 'serve WAL from the page cache as XLogData (vs fs.readSync of the same bytes)', unit: 'GB/s', walkeeper: median('framed'), postgres: median('readSync'), target: '≥ 0.90×', better: 'higher' });
    console.log(`framed / readSync = ${ratio.toFixed(2)} (target ≥ 0.90): ${ratio >= 0.9 ? 'met' : 'NOT met'}`);
  } finally {
    await pg.destroy();
    await tmp.cleanup();
  }
}

main().catch((e) => {
  console.error(`read-frame: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
});
