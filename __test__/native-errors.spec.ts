// The core's error codes are one closed set (ts/native/errors.ts) that the
// TypeScript side matches through isWalcoreError, never by bare strings; and
// the defaults the two sides share agree.

import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { MAX_SEND_SIZE } from '../ts/defaults.js';
import { isWalcoreError, WALCORE_ERROR_CODES } from '../ts/native/errors.js';
import { native } from '../ts/native/binding.js';
import { WalStore, XLOGDATA_HEADER_SIZE } from '../ts/wal/wal_storage.js';
import { createTempDir, type TempDir } from './harness/index.js';

const root = path.resolve(import.meta.dirname, '..');
const SEG = 16 * 1024 * 1024;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-native-errors-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

/** Every `WALCORE_…`/`ERR_…` code string in the Rust sources. */
async function rustCodes(): Promise<Set<string>> {
  const out = new Set<string>();
  for (const dir of ['crates/walcore/src', 'crates/walcore-node/src']) {
    for (const f of await readdir(path.join(root, dir))) {
      if (!f.endsWith('.rs')) continue;
      for (const m of (await readFile(path.join(root, dir, f), 'utf8')).matchAll(/"((?:WALCORE|ERR)_[A-Z_]+)"/g)) out.add(m[1]!);
    }
  }
  return out;
}

test('WalcoreErrorCode lists exactly the codes the Rust core can throw', async (t) => {
  t.deepEqual([...(await rustCodes())].sort(), [...WALCORE_ERROR_CODES].sort());
});

test('isWalcoreError recognises real errors from the core by code, and nothing else', async (t) => {
  const store = await WalStore.open(path.join(tmp.path, 's'), SEG, 1);
  const notPositioned = await store.append(5n, Buffer.alloc(8)).catch((e: unknown) => e);
  const typeErr = (() => {
    try {
      (native() as unknown as { storeOpen(a: unknown): void }).storeOpen(42);
    } catch (e) {
      return e;
    }
  })();
  const io = await native().findEndOfWal({ dir: path.join(tmp.path, 'none'), tli: 1, segSize: SEG, start: 0n }).catch((e: unknown) => e);
  t.true(isWalcoreError(io, 'WALCORE_IO'));
  t.true(isWalcoreError(typeErr, 'ERR_INVALID_ARG_TYPE'));
  t.true(isWalcoreError(notPositioned), String(notPositioned));
  t.false(isWalcoreError(io, 'WALCORE_REMOVED'), 'another code');
  t.false(isWalcoreError(Object.assign(new Error('x'), { code: 'ENOENT' })), 'a Node error is not one');
  t.false(isWalcoreError({ code: 'WALCORE_IO', message: 'x' }), 'not an Error');
  t.false(isWalcoreError(null));
});

test("the core's default XLogData size is MAX_SEND_SIZE (ts/defaults.ts)", async (t) => {
  const store = await WalStore.open(path.join(tmp.path, 'm'), SEG, 1);
  const wal = Buffer.alloc(4 * MAX_SEND_SIZE);
  for (let page = 0; page < wal.length; page += 8192) {
    wal.writeUInt16LE(0xd110, page);
    wal.writeUInt16LE(page === 0 ? 2 : 0, page + 2);
    wal.writeUInt32LE(1, page + 4);
    wal.writeBigUInt64LE(BigInt(SEG + page), page + 8);
  }
  await store.append(BigInt(SEG), wal);
  await store.flush();
  const buf = Buffer.alloc(XLOGDATA_HEADER_SIZE + 4 * MAX_SEND_SIZE);
  const n = await store.frameAsync(buf, { tli: 1, start: BigInt(SEG), end: BigInt(SEG + wal.length), walEnd: BigInt(SEG + wal.length) });
  t.is(n - XLOGDATA_HEADER_SIZE, MAX_SEND_SIZE);
});
