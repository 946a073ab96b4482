// The N-API surface itself: loading, argument checking, errors that name
// the directory and LSN, framing into caller buffers, async work that never
// blocks the event loop, the control file.

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import {
  CONTROL_FILE_NAME,
  formatLsn,
  native,
  parseLsn,
  readControlFile,
  WalStore,
  writeControlFile,
  XLOGDATA_HEADER_SIZE,
  type ControlData,
} from '../ts/index.js';
import { loadBinding, platformTriple } from '../ts/native/binding.js';
import { createTempDir, type TempDir } from './harness/index.js';

const SEG = 1024 * 1024;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-native-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

let n = 0;
const dirFor = (name: string) => path.join(tmp.path, `${name}-${n++}`);

/**
 * Synthetic but well-formed WAL pages: a long header on the segment's first
 * page, short headers after, record bytes in between. Enough for the store
 * and the framing, which never look inside records.
 */
function walBytes(segno: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + segno) & 0xff;
  for (let page = 0; page < len; page += 8192) {
    b.writeUInt16LE(0xd110, page);
    b.writeUInt16LE(page === 0 ? 2 : 0, page + 2);
    b.writeUInt32LE(1, page + 4);
    b.writeBigUInt64LE(BigInt(segno) * BigInt(SEG) + BigInt(page), page + 8);
  }
  return b;
}

test('the binary for this platform loads; a missing one gives one clear error', (t) => {
  t.regex(native().version(), /^\d+\.\d+\.\d+$/);
  t.true(['sse4.2', 'armv8-crc', 'table'].includes(native().crc32cImplementation()));
  t.is(platformTriple('linux', 'x64').replace('musl', 'gnu'), 'linux-x64-gnu');
  t.is(platformTriple('darwin', 'arm64'), 'darwin-arm64');
  t.is(platformTriple('win32', 'x64'), 'win32-x64-msvc');
  const err = t.throws(() => loadBinding(tmp.path, 'sunos-sparc'));
  t.regex(err!.message, /no native core for platform sunos-sparc/);
  t.regex(err!.message, /npm run build:native/);
  t.regex(err!.message, /napi build --platform --release --no-js/);
  t.notRegex(err!.message, /\n/, 'one line');
});

test('wrong argument types and ranges are TypeError and RangeError, never a crash', async (t) => {
  const store = await WalStore.open(dirFor('args'), SEG, 1);
  const h = (store as unknown as { h: unknown }).h;
  const b = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
  const typeErr = (f: () => unknown, re: RegExp) => {
    const e = t.throws(f, { instanceOf: TypeError });
    t.regex(e!.message, re);
  };
  typeErr(() => b.storeState!({}), /store must be/);
  typeErr(() => b.storeState!(undefined), /store/);
  typeErr(() => b.storeAppend!(h, 5, Buffer.alloc(1)), /lsn must be a bigint/);
  typeErr(() => b.storeAppend!(h, 5n, 'text'), /data/);
  typeErr(() => b.storeOpen!(42, SEG, 1), /dir/);
  typeErr(() => b.findEndOfWal!({ dir: '/tmp', tli: '1', segSize: SEG, start: 0n }), /tli/);
  typeErr(() => b.findEndOfWal!('/tmp', 1, SEG, 0n), /options must be an object/);
  const rangeErr = (f: () => unknown, re: RegExp) => {
    const e = t.throws(f, { instanceOf: RangeError });
    t.regex(e!.message, re);
  };
  rangeErr(() => b.storeAppend!(h, -1n, Buffer.alloc(1)), /lsn/);
  rangeErr(() => b.storeAppend!(h, 1n << 64n, Buffer.alloc(1)), /lsn/);
  rangeErr(() => b.storeOpen!('/tmp/x', 1000, 1), /segment size 1000/);
  rangeErr(() => b.storeOpen!('/tmp/x', SEG, 0), /tli/);
  rangeErr(() => b.storeOpen!('/tmp/x', SEG, 1.5), /tli/);
  rangeErr(() => b.storeFrameNoWait!(h, Buffer.alloc(100), 1, 10n, 5n, 5n), /end 0\/5 must be above start 0\/A/);
  rangeErr(() => b.findEndOfWal!({ dir: '/tmp', tli: 1, segSize: SEG, start: 0n, pgVersion: 14 }), /PostgreSQL 14/);
  // The store still works after all that.
  t.is(await store.append(0n, walBytes(0, 8192)), 8192n);
});

test('errors from the core name the stream directory and the LSN, with a stable code', async (t) => {
  const dir = dirFor('errors');
  const store = await WalStore.open(dir, SEG, 1);
  await store.append(BigInt(SEG), walBytes(1, 20_000));
  const gap = await t.throwsAsync(store.append(BigInt(SEG) + 20_008n, Buffer.alloc(8)));
  t.is((gap as NodeJS.ErrnoException).code, 'WALCORE_GAP');
  t.true(gap!.message.startsWith(dir), gap!.message);
  t.regex(gap!.message, /0\/100004E28.*0\/104E20|append at 0\/104E28 would leave a gap: write position is 0\/104E20/);
  const rewrite = await t.throwsAsync(store.append(BigInt(SEG), Buffer.alloc(8)));
  t.is((rewrite as NodeJS.ErrnoException).code, 'WALCORE_REWRITE');
  // Nothing unflushed is served: framing before the flush is refused.
  const buf = Buffer.alloc(XLOGDATA_HEADER_SIZE + 128 * 1024);
  const unflushed = t.throws(() => store.frame(buf, { tli: 1, start: BigInt(SEG), end: BigInt(SEG) + 100n, walEnd: 0n }));
  t.is((unflushed as NodeJS.ErrnoException).code, 'WALCORE_NOT_YET_WRITTEN');
  t.regex(unflushed!.message, /framing WAL at 0\/100000/);
  t.true(unflushed!.message.includes(dir));
  await store.flush();
  await store.removeBelow(1);
  const missing = await t.throwsAsync(findEnd(dirFor('nope')));
  t.is((missing as NodeJS.ErrnoException).code, 'WALCORE_IO');
  t.regex(missing!.message, /cannot list WAL directory .*nope/);
});

const findEnd = (dir: string) => native().findEndOfWal({ dir, tli: 1, segSize: SEG, start: 0n });

test('framing: exact XLogData bytes in a reused buffer, synchronously from the page cache or on the pool', async (t) => {
  const store = await WalStore.open(dirFor('frame'), SEG, 1);
  const wal = Buffer.concat([walBytes(3, SEG), walBytes(4, 300_000)]);
  const base = 3n * BigInt(SEG);
  await store.append(base, wal);
  await store.flush();
  const end = base + BigInt(wal.length);
  const buf = Buffer.alloc(XLOGDATA_HEADER_SIZE + 128 * 1024);
  const start = base + 1000n;
  const req = { tli: 1, start, end, walEnd: end, sendTime: 0x0102030405060708n };
  const r = store.frame(buf, req);
  t.is(typeof r, 'number', 'hot WAL is served without a thread-pool round trip');
  const used = r as number;
  const len = used - XLOGDATA_HEADER_SIZE;
  t.is(len, 16 * 8192 - 1000, 'cut at a page boundary when more WAL is pending');
  t.is(buf[0], 0x64); // 'd'
  t.is(buf.readUInt32BE(1), 4 + 25 + len);
  t.is(buf[5], 0x77); // 'w'
  t.is(buf.readBigUInt64BE(6), start);
  t.is(buf.readBigUInt64BE(14), end);
  t.is(buf.readBigUInt64BE(22), 0x0102030405060708n);
  t.true(buf.subarray(XLOGDATA_HEADER_SIZE, used).equals(wal.subarray(1000, 1000 + len)));
  // The async path frames the same message.
  const copy = Buffer.from(buf.subarray(0, used));
  buf.fill(0);
  t.is(await store.frameAsync(buf, req), used);
  t.true(buf.subarray(0, used).equals(copy));
  // Streaming the whole range into the one buffer reproduces the WAL; no message crosses a segment end.
  const got: Buffer[] = [];
  let pos = base;
  while (pos < end) {
    const u = await store.frame(buf, { tli: 1, start: pos, end, walEnd: end });
    const p = buf.readBigUInt64BE(6);
    t.is(p, pos);
    const m = u - XLOGDATA_HEADER_SIZE;
    t.true(m <= 128 * 1024);
    t.is(Math.floor(Number(p) / SEG), Math.floor((Number(p) + m - 1) / SEG));
    got.push(Buffer.from(buf.subarray(XLOGDATA_HEADER_SIZE, u)));
    pos += BigInt(m);
  }
  t.true(Buffer.concat(got).equals(wal));
  // A small maxSend, and sendTime defaulting to now.
  const small = store.frame(buf, { tli: 1, start: base, end, walEnd: end, maxSend: 1000 }) as number;
  t.is(small, XLOGDATA_HEADER_SIZE + 1000);
  const micros = buf.readBigInt64BE(22);
  const now = BigInt(Date.now() - 946_684_800_000) * 1000n;
  t.true(micros > now - 5_000_000n && micros < now + 5_000_000n, `sendTime ${micros} is now (${now})`);
});

test('async work runs off the event loop: many concurrent appends, flushes and reads', async (t) => {
  const store = await WalStore.open(dirFor('concurrent'), SEG, 1);
  const wal = Buffer.concat([walBytes(0, SEG), walBytes(1, SEG), walBytes(2, SEG)]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  let pos = 0n;
  const readers: Promise<unknown>[] = [];
  for (let off = 0; off < wal.length; off += 65_536) {
    pos = await store.append(pos, wal.subarray(off, off + 65_536));
    const flushed = await store.flush();
    const b = Buffer.alloc(4096);
    readers.push(store.read(1, flushed - 4096n, b).then((got) => t.true(b.subarray(0, got).equals(wal.subarray(Number(flushed) - 4096, Number(flushed))))));
  }
  await Promise.all(readers);
  clearInterval(timer);
  t.is(store.state.flushLsn, BigInt(wal.length));
  t.true(ticks > 0, 'timers kept firing while the work ran');
  t.deepEqual(
    store.list().map((s) => [s.name, s.partial]),
    [
      ['000000010000000000000000', false],
      ['000000010000000000000001', false],
      ['000000010000000000000002', false],
    ],
  );
});

const control: ControlData = {
  systemId: 7712172635900483688n,
  pgVersion: 15,
  segmentSize: 16 * 1024 * 1024,
  tli: 2,
  flushLsn: parseLsn('0/3000148'),
  commitLsn: parseLsn('0/3000100'),
  firstLsn: parseLsn('0/1000000'),
  slots: { standby1: { restartLsn: parseLsn('0/2000000'), tli: 1 } },
};

test('the control file round-trips, and a damaged one is refused, never reset', async (t) => {
  const dir = dirFor('control');
  await mkdir(dir);
  t.is(await readControlFile(dir), null, 'no control file yet');
  await writeControlFile(dir, control);
  t.deepEqual(await readControlFile(dir), control);
  const file = path.join(dir, CONTROL_FILE_NAME);
  const good = await readFile(file);
  t.is(good.readUInt32LE(0), 0x46434b57, 'magic');
  t.is(good.readUInt32LE(4), 1, 'format version');

  const refuse = async (bytes: Buffer, re: RegExp, code?: string) => {
    await writeFile(file, bytes);
    const e = await t.throwsAsync(readControlFile(dir));
    t.regex(e!.message, re);
    t.true(e!.message.includes(file), e!.message);
    if (code) t.is((e as NodeJS.ErrnoException).code, code);
    t.true((await readFile(file)).equals(bytes), 'the damaged file is left as it was');
  };
  const flipped = Buffer.from(good);
  flipped[20]! ^= 0x01;
  await refuse(flipped, /corrupted \(checksum/, 'WALCORE_CORRUPT');
  await refuse(good.subarray(0, good.length - 3), /corrupted/, 'WALCORE_CORRUPT');
  await refuse(Buffer.from('hello, I am not a control file'), /not a walkeeper control file/, 'WALCORE_CORRUPT');
  const v2 = Buffer.from(good);
  v2.writeUInt32LE(2, 4);
  await refuse(v2, /format version 2, this build reads version 1/, 'WALCORE_UNSUPPORTED_VERSION');
  // A valid envelope around a payload that does not hold what it must.
  await native().controlWrite(file, Buffer.from('{"system_id":"1"}'));
  const e = await t.throwsAsync(readControlFile(dir));
  t.regex(e!.message, /damaged: .* refusing to start/);
  await native().controlWrite(file, Buffer.from(JSON.stringify({ ...JSON.parse(good.subarray(12, good.length - 4).toString()), commit_lsn: '0/4000000' })));
  const e2 = await t.throwsAsync(readControlFile(dir));
  t.regex(e2!.message, /commit_lsn 0\/4000000 is above flush_lsn 0\/3000148/);
  // Writing again replaces the damaged file atomically.
  await writeControlFile(dir, { ...control, commitLsn: control.flushLsn });
  t.is(formatLsn((await readControlFile(dir))!.commitLsn), '0/3000148');
});

test('a Rust panic becomes a JS exception or a rejected promise; the process carries on', async (t) => {
  // The panic hook exists only with WALKEEPER_TEST_HOOKS=1, so run it in a child process.
  const script = `
    import { native } from './ts/native/binding.ts';
    const b = native();
    const out = [];
    try { b.__testPanic('boom on the JS thread'); } catch (e) { out.push([e.constructor.name, e.code, e.message]); }
    await b.__testPanic('boom in async work', true).catch((e) => out.push([e.constructor.name, e.code, e.message]));
    out.push(b.version());
    console.log(JSON.stringify(out));
  `;
  const { execFile } = await import('node:child_process');
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], { cwd: root, env: { ...process.env, WALKEEPER_TEST_HOOKS: '1' } }, (err, stdout, stderr) =>
      resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
    );
  });
  t.is(r.code, 0, r.stderr);
  const [sync, async, version] = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as [string[], string[], string];
  t.deepEqual(sync.slice(0, 2), ['Error', 'WALCORE_PANIC']);
  t.regex(sync[2]!, /boom on the JS thread/);
  t.deepEqual(async.slice(0, 2), ['Error', 'WALCORE_PANIC']);
  t.regex(async[2]!, /boom in async work/);
  t.is(version, native().version(), 'still serving calls after both panics');
  t.false('__testPanic' in native(), 'the hook is absent in normal processes');
});
