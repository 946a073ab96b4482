// Issue 17: offload to object storage — the pure parts (offloader choice,
// object names, retention's backup_lsn horizon, URLs, the control file) and
// a node following a real primary into a file:// archive: every complete
// segment at or below commit_lsn goes up once, zstd-compressed, identical to
// the primary's after `zstd -d`; the history file of a promotion goes up;
// local WAL is never removed above backup_lsn; the idle tail goes up as a
// partial object, which is deleted once its segment is complete there.

import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import test from 'ava';

import { formatLsn, type Lsn } from '../ts/lsn.js';
import { retentionHorizon } from '../ts/cluster/retention.js';
import { electOffloader, streamHash, type OffloadCandidate } from '../ts/offload/policy.js';
import { parseObjectName, partialObject, segmentName } from '../ts/offload/names.js';
import { parseRemoteStorageUrl, RemoteStorageUrlError } from '../ts/remote/remote_storage.js';
import { FileStorage } from '../ts/remote/file.js';
import { decodeControl, encodeControl } from '../ts/wal/control_file.js';
import { zstdCompress, zstdDecompress } from '../ts/wal/compress.js';
import {
  basebackup,
  createTempDir,
  lsnOf,
  registerCleanupHooks,
  startPostgres,
  startStandby,
  startTestNode,
  until,
  type PgCluster,
  type TempDir,
  type TestNode,
} from './harness/index.js';

registerCleanupHooks(test);
const run = promisify(execFile);
const conninfoOf = (pg: PgCluster) => `host=127.0.0.1 port=${pg.port} user=postgres`;

const SEG = 1024 * 1024;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-offload-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

const M = (nodeId: number, commit: bigint | null, oldest: bigint | null, heardAt: number | null = 1000): OffloadCandidate => ({ nodeId, commitLsn: commit, oldestLsn: oldest, heardAt });

test('offloader choice: live, caught-up members holding WAL back to backup_lsn, by node id, hash(stream) mod n', (t) => {
  const now = 1500;
  const self = M(1, 0x9000000n, 0x1000000n, null);
  const peers = [M(3, 0x9000000n, 0x1000000n), M(2, 0x9000000n, 0x1000000n)];
  const e = electOffloader('main', self, peers, 0x2000000n, now);
  t.deepEqual(e.eligible, [1, 2, 3]);
  t.is(e.offloader, [1, 2, 3][streamHash('main') % 3]);
  t.false(e.gap);
  // Every member computes the same answer from the same statuses.
  t.is(electOffloader('main', M(2, 0x9000000n, 0x1000000n, null), [M(1, 0x9000000n, 0x1000000n), M(3, 0x9000000n, 0x1000000n)], 0x2000000n, now).offloader, e.offloader);
  // Different streams spread over the members.
  const chosen = new Set(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].map((s) => electOffloader(s, self, peers, null, now).offloader));
  t.true(chosen.size > 1, 'streams are spread over the members');
  // A member not heard from for 3 s is out; so is one that lags > 128 MiB, and one whose oldest WAL is above backup_lsn.
  t.deepEqual(electOffloader('main', self, [M(2, 0x9000000n, 0x1000000n, now - 3001), M(3, 0x9000000n, 0x1000000n)], null, now).eligible, [1, 3]);
  t.deepEqual(electOffloader('main', self, [M(2, 0x9000000n - (128n << 20n) - 1n, 0n), M(3, 0x9000000n, 0x1000000n)], null, now).eligible, [1, 3]);
  t.deepEqual(electOffloader('main', self, [M(2, 0x9000000n, 0x5000000n)], 0x2000000n, now).eligible, [1]);
  t.deepEqual(electOffloader('main', M(1, 0x9000000n, null, null), [M(2, 0x9000000n, 0x1000000n)], null, now).eligible, [2], 'no WAL, no offload');
  // A member restarted and not knowing its commit_lsn yet is out, whether it is this node or a peer (each sees the same), even on a young cluster where 0/0 would be "caught up".
  t.deepEqual(electOffloader('main', M(1, null, 0x1000000n, null), [M(2, 0x2000000n, 0x1000000n)], null, now).eligible, [2]);
  t.deepEqual(electOffloader('main', M(2, 0x2000000n, 0x1000000n, null), [M(1, null, 0x1000000n)], null, now).eligible, [2]);
  // Nobody holds backup_lsn any more: the caught-up members go on (the archive has a gap), flagged.
  const g = electOffloader('main', M(1, 0x9000000n, 0x5000000n, null), [M(2, 0x9000000n, 0x6000000n)], 0x2000000n, now);
  t.deepEqual([g.eligible, g.gap], [[1, 2], true]);
  t.is(streamHash('main'), streamHash('main'));
});

test('object names: PostgreSQL file names under <stream>/<system id>/, parsed back', (t) => {
  t.is(segmentName(1, 3n, 16 << 20), '000000010000000000000003');
  t.is(segmentName(2, 0x1ffn, 1 << 20), '0000000200000000000001FF', '1 MiB segments: 4096 per xlogid');
  t.is(segmentName(2, 0x1001n, 1 << 20), '000000020000000100000001');
  t.deepEqual(parseObjectName('000000010000000000000003.zst'), { kind: 'segment', segment: '000000010000000000000003', compressed: true });
  t.deepEqual(parseObjectName('000000010000000000000003'), { kind: 'segment', segment: '000000010000000000000003', compressed: false });
  t.deepEqual(parseObjectName('00000002.history'), { kind: 'history', tli: 2 });
  const p = partialObject('000000010000000000000004', 0x43a2f18n, 2);
  t.is(p, '000000010000000000000004.00000000043A2F18.n2.partial.zst');
  t.deepEqual(parseObjectName(p), { kind: 'partial', segment: '000000010000000000000004', end: 0x43a2f18n, nodeId: 2 });
  t.is(parseObjectName('backup_label'), null);
});

test('retention with remote storage: nothing above backup_lsn goes, and nothing at all before the first upload', (t) => {
  const base = { commitLsn: 0x9000000n, flushLsn: 0xa000000n, slots: [], replicas: [], keepBytes: 0n };
  t.is(retentionHorizon(base).lsn, 0x9000000n, 'without remote storage: commit_lsn');
  t.deepEqual(retentionHorizon({ ...base, backupLsn: 0x4000000n }), { lsn: 0x4000000n, heldBy: 'backup_lsn 0/4000000 (not yet in object storage)' });
  t.deepEqual(retentionHorizon({ ...base, backupLsn: null }), { lsn: 0n, heldBy: 'backup_lsn (nothing offloaded yet)' });
  t.is(retentionHorizon({ ...base, backupLsn: 0xa000000n }).lsn, 0x9000000n, 'backup_lsn past commit_lsn holds nothing more');
});

test('remote storage URLs: s3:// with an endpoint from the flag or the SDK variables, file:///dir; anything else is one clear error', (t) => {
  t.deepEqual(parseRemoteStorageUrl('s3://wal-bucket/prod/pg', null, {}), { kind: 's3', bucket: 'wal-bucket', prefix: 'prod/pg', endpoint: null });
  t.deepEqual(parseRemoteStorageUrl('s3://wal-bucket', 'http://127.0.0.1:9000', {}), { kind: 's3', bucket: 'wal-bucket', prefix: '', endpoint: 'http://127.0.0.1:9000' });
  t.is((parseRemoteStorageUrl('s3://wal-bucket/x', null, { AWS_ENDPOINT_URL: 'http://a:1' }) as { endpoint: string }).endpoint, 'http://a:1');
  t.is((parseRemoteStorageUrl('s3://wal-bucket/x', null, { AWS_ENDPOINT_URL: 'http://a:1', AWS_ENDPOINT_URL_S3: 'http://b:2' }) as { endpoint: string }).endpoint, 'http://b:2');
  t.deepEqual(parseRemoteStorageUrl('file:///mnt/archive/', null, {}), { kind: 'file', dir: '/mnt/archive' });
  for (const [url, msg] of [
    ['s3:/bucket', /not an S3 bucket name/],
    ['s3://Bad_Bucket/x', /not an S3 bucket name/],
    ['s3://key:secret@bucket/x', /without credentials/],
    ['gs://bucket/x', /must be s3:\/\/bucket\/prefix or file:\/\/\/dir/],
    ['file://host/dir', /absolute directory/],
    ['/just/a/path', /must be s3:\/\/bucket\/prefix or file:\/\/\/dir/],
  ] as const) {
    t.throws(() => parseRemoteStorageUrl(url, null, {}), { instanceOf: RemoteStorageUrlError, message: msg }, url);
  }
  t.throws(() => parseRemoteStorageUrl('s3://bucket/x', 'ftp://h:1', {}), { message: /endpoint must be http/ });
});

test('control file: backup_lsn and the partial uploads survive a round trip; files from before offload read as none', (t) => {
  const c = { systemId: 7n, pgVersion: 15, segmentSize: SEG, tli: 1, flushLsn: 0x3000000n, commitLsn: 0x2000000n, firstLsn: 0x1000000n, slots: {} };
  const full = { ...c, backupLsn: 0x2000000n, partialUploads: [{ name: 'a.partial.zst', state: 'uploaded' as const }, { name: 'b.partial.zst', state: 'deleting' as const }] };
  t.deepEqual(decodeControl(encodeControl(full), 'x'), full);
  const old = JSON.parse(encodeControl(c).toString()) as Record<string, unknown>;
  t.deepEqual(old.backup_lsn, undefined, 'a stream without offload writes no backup_lsn');
  t.deepEqual(decodeControl(Buffer.from(JSON.stringify(old)), 'x'), c);
  t.deepEqual(decodeControl(encodeControl({ ...c, backupLsn: null, partialUploads: [] }), 'x'), c);
  const bad = { ...old, partial_uploads: [{ name: 'x', state: 'maybe' }] };
  t.throws(() => decodeControl(Buffer.from(JSON.stringify(bad)), 'ctl'), { message: /control file ctl is damaged: partial upload .* is malformed/ });
});

test('zstd through the core: the zstd CLI reads what we write and we read what it writes; damage and oversize are refused', async (t) => {
  const raw = Buffer.alloc(SEG);
  for (let i = 0; i < raw.length; i += 97) raw[i] = i & 0xff;
  const z = await zstdCompress(raw, 3);
  t.true(z.length * 3 < raw.length);
  const dir = path.join(tmp.path, 'zstd');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'a.zst'), z);
  await run('zstd', ['-q', '-d', '-f', path.join(dir, 'a.zst'), '-o', path.join(dir, 'a')]);
  t.true((await readFile(path.join(dir, 'a'))).equals(raw), 'zstd -d gives the bytes back');
  await writeFile(path.join(dir, 'b'), raw);
  await run('zstd', ['-q', '-19', '-f', path.join(dir, 'b'), '-o', path.join(dir, 'b.zst')]);
  t.true((await zstdDecompress(await readFile(path.join(dir, 'b.zst')), SEG)).equals(raw), 'we read what the zstd CLI wrote');
  await t.throwsAsync(zstdDecompress(z.subarray(0, z.length - 5), SEG), { code: 'WALCORE_CORRUPT', message: /truncated/ } as never);
  await t.throwsAsync(zstdDecompress(z, SEG - 1), { code: 'WALCORE_CORRUPT', message: /exceeds/ } as never);
});

async function primaryCommitted(pg: PgCluster): Promise<Lsn> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

async function fill(pg: PgCluster, mib: number): Promise<void> {
  await pg.query('CREATE TABLE IF NOT EXISTS filler (g int, v text)');
  await pg.query(`INSERT INTO filler SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, ${mib * 900}) g`);
}

/** Objects in a file:// archive of `stream`, by name. */
async function archive(root: string, n: TestNode): Promise<Map<string, Buffer>> {
  const s = n.node.stream();
  const dir = path.join(root, s.name, s.systemId.toString());
  const out = new Map<string, Buffer>();
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    // (an object may be deleted between the listing and the read)
    const b = await readFile(path.join(dir, f)).catch(() => null);
    if (b) out.set(f, b);
  }
  return out;
}

test('a node offloads to file://: each committed segment once, identical to the primary after zstd -d; the promotion history; never removed locally above backup_lsn; the idle tail as a partial object until its segment is up', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '256MB' } });
  t.teardown(() => pg.destroy());
  await pg.query('CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g');
  const bb = await basebackup(pg);
  const up = await startStandby(bb, { primaryConninfo: conninfoOf(pg), conf: { wal_keep_size: '256MB' } });
  t.teardown(() => up.destroy());
  const root = path.join(tmp.path, 'archive');
  const node = await startTestNode({
    upstream: conninfoOf(up),
    dataDir: path.join(tmp.path, 'n1'),
    remoteStorage: `file://${root}`,
    offload: { intervalMs: 100, partialAfterMs: 1500 },
    retention: { keepBytes: BigInt(SEG), replicaWindowMs: 0, intervalMs: 100 },
  });
  t.teardown(() => node.stop());
  await until(() => node.node.streams.has('main'), 'the stream to exist');
  const s = node.node.stream();

  // While it runs: no local segment above backup_lsn is ever removed.
  const violations: string[] = [];
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const o = s.oldestLsn;
      const b = s.backupLsn;
      if (o !== null && s.removedSegments > 0 && (b === null || o > b - (b % BigInt(SEG)))) violations.push(`oldest ${formatLsn(o)} above backup_lsn ${b === null ? 'none' : formatLsn(b)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();

  await fill(pg, 8);
  await pg.query('SELECT pg_switch_wal()');
  await fill(pg, 1);
  const end1 = await primaryCommitted(pg);
  await up.waitReplayed(end1, 60_000);
  await until(() => s.commitLsn >= end1, 'the node to commit the load');
  const segEnd = end1 - (end1 % BigInt(SEG));
  await until(() => (s.backupLsn ?? 0n) >= segEnd, `backup_lsn to reach ${formatLsn(segEnd)}`, 60_000);

  // Promote the upstream: the node follows onto timeline 2, and 00000002.history goes up at once.
  await up.promote();
  await up.query('INSERT INTO t SELECT g FROM generate_series(1, 5000) g');
  await until(() => s.tli === 2, 'the node to follow onto timeline 2', 60_000);
  await until(async () => (await archive(root, node)).has('00000002.history'), 'the history file in the archive', 30_000);
  const objects = await archive(root, node);
  t.is(objects.get('00000002.history')!.toString(), (await readFile(path.join(up.walDir, '00000002.history'))).toString());

  // Every complete segment up to backup_lsn is there once, and equals the primary's (TLI 1 segments).
  const first = [...objects.keys()].filter((k) => k.endsWith('.zst') && !k.includes('partial')).sort();
  t.true(first.length >= 8, `${first.length} segments offloaded`);
  for (const name of first) {
    const seg = name.slice(0, 24);
    const plain = await zstdDecompress(objects.get(name)!, SEG);
    const original = await readFile(path.join(seg.startsWith('00000001') ? pg.walDir : up.walDir, seg));
    t.true(plain.equals(original), `${seg} differs from the primary's`);
  }
  t.deepEqual(first, [...new Set(first)]);
  // Segment numbers are contiguous from the first one offloaded.
  const nums = first.map((n) => Number.parseInt(n.slice(16, 24), 16));
  t.deepEqual(nums, nums.map((_, i) => nums[0]! + i), 'no hole in the sequence');

  // The idle tail: after the quiet period a partial object holds the segment up to commit_lsn, zeros after.
  await up.query('INSERT INTO t SELECT g FROM generate_series(1, 100) g');
  const tail = await primaryCommitted(up);
  await until(() => s.commitLsn >= tail, 'the node to commit the tail');
  await until(async () => [...(await archive(root, node)).keys()].some((k) => k.endsWith('.partial.zst')), 'a partial object', 30_000);
  const partialName = [...(await archive(root, node)).keys()].find((k) => k.endsWith('.partial.zst'))!;
  const pn = parseObjectName(partialName);
  t.is(pn?.kind, 'partial');
  const pend = (pn as { end: bigint }).end;
  t.true(pend >= tail, `the partial object reaches commit_lsn (${formatLsn(pend)} ≥ ${formatLsn(tail)})`);
  const pbytes = await zstdDecompress((await archive(root, node)).get(partialName)!, SEG);
  const within = Number(pend % BigInt(SEG));
  const onDisk = await readFile(path.join(up.walDir, partialName.slice(0, 24)));
  t.true(pbytes.subarray(0, within).equals(onDisk.subarray(0, within)), 'the partial object holds the committed WAL');
  t.true(pbytes.subarray(within).every((b) => b === 0), 'and zeros after commit_lsn');
  t.deepEqual(s.partialUploads.map((p) => p.state), ['uploaded']);

  // The segment completes: it goes up whole and the partial object is deleted.
  await up.query('SELECT pg_switch_wal()');
  await up.query('INSERT INTO t SELECT g FROM generate_series(1, 100) g');
  const after = await primaryCommitted(up);
  await until(() => s.commitLsn >= after, 'the node to commit past the switch');
  await until(async () => {
    const keys = [...(await archive(root, node)).keys()];
    return keys.includes(`${partialName.slice(0, 24)}.zst`) && !keys.some((k) => k.endsWith('.partial.zst'));
  }, 'the whole segment up and the partial object gone', 30_000);
  t.deepEqual(s.partialUploads, []);

  watching = false;
  await watcher;
  t.deepEqual(violations, []);
  t.true(s.removedSegments > 0, 'retention did remove segments below backup_lsn');

  // What the node reports.
  const j = (await (await fetch(`${node.httpUrl}/v1/streams/main`)).json()) as Record<string, any>;
  t.is(j.backup_lsn, formatLsn(s.backupLsn!));
  t.is(j.offload.location, `file://${root}`);
  t.true(j.offload.active);
  t.true(j.offload.healthy);
  const metrics = await (await fetch(`${node.httpUrl}/metrics`)).text();
  t.regex(metrics, new RegExp(`walkeeper_backup_lsn\\{[^}]*stream="main"[^}]*\\} ${Number(s.backupLsn)}`));
  t.regex(metrics, /walkeeper_offload_objects_total\{[^}]*kind="segment"[^}]*\} (\d+)/);
  t.regex(metrics, /walkeeper_offload_objects_total\{[^}]*kind="history"[^}]*\} 1/);
  t.regex(metrics, /walkeeper_offloader\{[^}]*\} 1/);
});

test('file:// storage: put is whole or nothing, list by prefix, delete; a crash leftover is cleaned', async (t) => {
  const root = path.join(tmp.path, 'fs');
  const fs = new FileStorage(root);
  await fs.put('s/1/a.zst', Buffer.from('hello'));
  await fs.put('s/1/b.zst', Buffer.from('world!'));
  await fs.put('s/2/c.zst', Buffer.from('x'));
  t.deepEqual(await fs.list('s/1/'), [{ key: 's/1/a.zst', size: 5 }, { key: 's/1/b.zst', size: 6 }]);
  t.deepEqual((await fs.get('s/1/b.zst'))?.toString(), 'world!');
  t.is(await fs.get('s/1/none'), null);
  await fs.delete('s/1/a.zst');
  await fs.delete('s/1/a.zst');
  t.deepEqual((await fs.list('s/')).map((o) => o.key), ['s/1/b.zst', 's/2/c.zst']);
  await writeFile(path.join(root, 's', '1', 'd.zst.tmp-abc'), 'half');
  t.deepEqual((await fs.list('s/1/')).map((o) => o.key), ['s/1/b.zst'], 'a temporary file is not an object');
  t.is(await fs.abortIncomplete('s/1/', new Date(Date.now() + 1000)), 1);
  t.deepEqual(await readdir(path.join(root, 's', '1')), ['b.zst']);
  await t.throwsAsync(fs.put('s/../x', Buffer.alloc(1)), { message: /bad object key/ });
});
