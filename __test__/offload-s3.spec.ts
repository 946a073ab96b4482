// Issue 17 against a real S3 server (Ceph RGW): three nodes follow a primary
// under pgbench and offload to RGW — every complete segment up to
// commit_lsn appears once, identical after decompression to the primary's;
// one offloader at a time, and another within seconds after it is
// SIGKILLed, without a gap; the promotion's history file goes up. With the
// gateway down, local WAL stays, the status says why, and it is offloaded
// and removed once the gateway returns.

import path from 'node:path';

import test, { type ExecutionContext } from 'ava';
import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';

import { formatLsn, parseLsn, type Lsn } from '../ts/lsn.js';
import { zstdDecompress } from '../ts/wal/compress.js';
import {
  basebackup,
  createTempDir,
  freePort,
  lsnOf,
  NodeProcess,
  registerCleanupHooks,
  runPgTool,
  startPostgres,
  startStandby,
  startTestNode,
  until,
  type PgCluster,
  type TempDir,
} from './harness/index.js';
import { startRgw, type Rgw } from './harness/ceph.js';
import { readFile } from 'node:fs/promises';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
const BUCKET = 'wal';
let tmp: TempDir;
let rgw: Rgw;
let s3: S3Client;
test.before(async () => {
  tmp = await createTempDir('walkeeper-offload-s3-');
  rgw = await startRgw();
  await rgw.createBucket(BUCKET);
  s3 = rgw.client();
});
test.after.always(async () => {
  s3?.destroy();
  await rgw?.stop();
  await tmp?.cleanup();
});

const conninfoOf = (pg: { port: number }) => `host=127.0.0.1 port=${pg.port} user=postgres`;

async function flushOf(pg: PgCluster): Promise<Lsn> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

/** Keys (relative to `prefix`) and sizes in the bucket. */
async function objects(prefix: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let token: string | undefined;
  do {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }));
    for (const c of r.Contents ?? []) out.set(c.Key!.slice(prefix.length), c.Size ?? 0);
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return out;
}

async function getObject(key: string): Promise<Buffer> {
  const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await r.Body!.transformToByteArray());
}

interface OffloadView {
  backup_lsn: string | null;
  commit_lsn: string;
  system_id: string;
  offload: { active: boolean; healthy: boolean; last_error: string | null; offloader_node_id: number | null; lag_bytes: number } | null;
}

async function view(n: NodeProcess): Promise<OffloadView | null> {
  return (await n.status()) as unknown as OffloadView | null;
}

/** Every complete segment (by name) below `end` in the bucket equals the file in one of `walDirs`, and the sequence has no hole. */
async function checkArchive(t: ExecutionContext, prefix: string, end: Lsn, walDirs: string[]): Promise<string[]> {
  const objs = await objects(prefix);
  const segs = [...objs.keys()].filter((k) => /^[0-9A-F]{24}\.zst$/.test(k)).sort();
  const nums = segs.map((k) => Number.parseInt(k.slice(8, 16), 16) * 4096 + Number.parseInt(k.slice(16, 24), 16));
  // (one segment number may appear on two timelines: the switch segment)
  const uniq = [...new Set(nums)];
  t.deepEqual(uniq, uniq.map((_, i) => uniq[0]! + i), 'no hole in the segment sequence');
  t.true((uniq.at(-1)! + 1) * SEG >= Number(end - (end % BigInt(SEG))), `the archive reaches ${formatLsn(end)}`);
  for (const k of segs) {
    const plain = await zstdDecompress(await getObject(prefix + k), SEG);
    let matched = false;
    for (const d of walDirs) {
      const orig = await readFile(path.join(d, k.slice(0, 24))).catch(() => null);
      if (orig) {
        t.true(plain.equals(orig), `${k} holds exactly the primary's bytes`);
        matched = true;
        break;
      }
    }
    t.true(matched, `${k} is a segment the primary has`);
  }
  return segs;
}

test('three nodes offload to RGW under pgbench: one offloader at a time, a handover after SIGKILL without a gap, every segment once and identical, the promotion history', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB', max_wal_senders: '10' } });
  t.teardown(() => pg.destroy());
  await pg.query('CREATE TABLE marks (n int)');
  const up = await startStandby(await basebackup(pg), { primaryConninfo: conninfoOf(pg), conf: { wal_keep_size: '512MB', max_wal_senders: '10' } });
  t.teardown(() => up.destroy());
  const nodes: NodeProcess[] = [];
  for (let i = 1; i <= 3; i++) {
    const n = new NodeProcess({ dataDir: path.join(tmp.path, `c${i}`), nodeId: i, upstream: conninfoOf(up), env: { ...rgw.env, WALKEEPER_LOG_LEVEL: 'info' } });
    n.pgPort = await freePort();
    n.httpPort = await freePort();
    nodes.push(n);
  }
  for (const n of nodes) {
    n.opts.extraArgs = ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(','), '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', rgw.endpoint, '--offload-partial-after', '0'];
  }
  t.teardown(() => Promise.all(nodes.map((n) => n.kill())).then(() => undefined));
  await Promise.all(nodes.map((n) => n.start()));

  // Sample who offloads, every second, until the end.
  const samples: number[][] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const active: number[] = [];
      for (const [i, n] of nodes.entries()) if (n.running && (await view(n).catch(() => null))?.offload?.active) active.push(i + 1);
      samples.push(active);
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  t.teardown(() => {
    sampling = false;
  });

  await runPgTool('pgbench', ['-i', '-q', '-s', '3', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 120_000 });
  await until(async () => (await Promise.all(nodes.map(view))).some((v) => v?.offload?.active === true && v.backup_lsn !== null), 'an offloader to upload', 30_000);
  const before = (await Promise.all(nodes.map(view))).findIndex((v) => v?.offload?.active);
  t.true(before >= 0);
  const killed = nodes[before]!;
  // Kill it while WAL keeps coming.
  const load = runPgTool('pgbench', ['-c', '2', '-T', '8', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 120_000 });
  await new Promise((r) => setTimeout(r, 1500));
  await killed.kill();
  const killedAt = Date.now();
  const others = nodes.filter((n) => n !== killed);
  await until(async () => (await Promise.all(others.map(view))).some((v) => v?.offload?.active), 'another node to take over', 30_000);
  const handover = Date.now() - killedAt;
  t.log(`handover after ${handover} ms`);
  t.true(handover < 15_000, `another node offloads within seconds (${handover} ms)`);
  await load;
  await killed.start();

  // Promote the upstream: the history file goes up.
  const end1 = await flushOf(pg);
  await up.waitReplayed(end1, 60_000);
  await pg.stop();
  await up.promote();
  await up.query('INSERT INTO marks SELECT g FROM generate_series(1, 1000) g');
  await up.query('SELECT pg_switch_wal()');
  await up.query('INSERT INTO marks VALUES (0)');
  const end2 = await flushOf(up);
  const sysid = (await view(nodes[0]!))!.system_id;
  const prefix = `cluster/main/${sysid}/`;
  await until(async () => (await objects(prefix)).has('00000002.history'), 'the promotion history in the bucket', 60_000);
  await until(async () => (await Promise.all(nodes.map(view))).every((v) => v?.backup_lsn && parseLsn(v.backup_lsn) >= end2 - (end2 % BigInt(SEG))), `every node's backup_lsn at ${formatLsn(end2)}`, 60_000);
  sampling = false;
  await sampler;

  const two = samples.filter((s) => s.length > 1);
  t.true(samples.length >= 10, `${samples.length} samples`);
  t.deepEqual(two, [], 'never two offloaders in one sample');
  const segs = await checkArchive(t, prefix, end2, [pg.walDir, up.walDir]);
  t.true(segs.length >= 20, `${segs.length} segments in the bucket`);
  t.is((await getObject(`${prefix}00000002.history`)).toString(), await readFile(path.join(up.walDir, '00000002.history'), 'utf8'));
  const mp = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  t.deepEqual(mp.Uploads ?? [], [], 'no incomplete multipart upload left');
  // Each node's metrics: uploads counted where they happened, and backup_lsn exported.
  let uploaded = 0;
  for (const n of nodes) {
    const m = await (await fetch(`${n.httpUrl}/metrics`)).text();
    t.regex(m, /walkeeper_backup_lsn\{[^}]*stream="main"[^}]*\} [1-9]/);
    uploaded += [...m.matchAll(/walkeeper_offload_objects_total\{[^}]*kind="segment"[^}]*\} (\d+)/g)].reduce((a, x) => a + Number(x[1]), 0);
  }
  t.true(uploaded >= 1, 'uploads counted');
});

test('with the gateway down, WAL stays on the node and the status says why; when it returns, the WAL is offloaded and then removed', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  Object.assign(process.env, rgw.env);
  const node = await startTestNode({
    upstream: conninfoOf(pg),
    dataDir: path.join(tmp.path, 'down'),
    remoteStorage: `s3://${BUCKET}/down`,
    remoteEndpoint: rgw.endpoint,
    offload: { intervalMs: 200, partialAfterMs: 0, objectTimeoutMs: 3000 },
    retention: { keepBytes: BigInt(SEG), replicaWindowMs: 0, intervalMs: 200 },
  });
  t.teardown(() => node.stop());
  await pg.query('CREATE TABLE f (g int, v text)');
  await until(() => node.node.streams.has('main'), 'the stream');
  const s = node.node.stream();
  await pg.query('INSERT INTO f SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 2000) g');
  const e0 = await flushOf(pg);
  await until(() => (s.backupLsn ?? 0n) >= e0 - (e0 % BigInt(SEG)) && s.commitLsn >= e0, 'the first WAL offloaded');

  await rgw.stopGateway();
  t.teardown(() => rgw.startGateway());
  const held = s.backupLsn!;
  await pg.query('INSERT INTO f SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 8000) g');
  const e1 = await flushOf(pg);
  await until(() => s.commitLsn >= e1, 'the node to commit the load');
  const j = async () => (await (await fetch(`${node.httpUrl}/v1/streams/main`)).json()) as { offload: { healthy: boolean; last_error: string | null; lag_bytes: number } };
  await until(async () => !(await j()).offload.healthy, 'the status to say the store fails', 30_000);
  const st = (await j()).offload;
  t.regex(st.last_error ?? '', /upload 0000000100000000000000[0-9A-F]{2}\.zst: .*ECONNREFUSED/);
  t.true(st.lag_bytes > 4 * SEG, `lag reported (${st.lag_bytes} bytes)`);
  await new Promise((r) => setTimeout(r, 1000));
  t.is(s.backupLsn, held, 'backup_lsn does not move while the store is down');
  t.true(s.oldestLsn! <= held, `nothing above backup_lsn ${formatLsn(held)} was removed (oldest ${formatLsn(s.oldestLsn!)})`);
  t.true(s.flushLsn - s.oldestLsn! > 4n * BigInt(SEG), 'WAL accumulates beyond wal_keep_size');
  const warn = node.logs.filter((l) => l.msg === 'object storage fails: WAL accumulates locally until it answers');
  t.is(warn.length, 1, 'one log line for the state change');
  t.is(warn[0]!.stream, 'main', 'naming the stream');

  await rgw.startGateway();
  await until(() => (s.backupLsn ?? 0n) >= e1 - (e1 % BigInt(SEG)), 'the backlog offloaded', 60_000);
  await until(() => s.oldestLsn! >= e1 - (e1 % BigInt(SEG)) - 2n * BigInt(SEG), 'the offloaded WAL removed locally', 30_000);
  t.true((await j()).offload.healthy);
  t.is(node.logs.filter((l) => l.msg === 'object storage answers again: offload continues').length, 1);
  await checkArchive(t, `down/main/${s.systemId}/`, e1, [pg.walDir]);
});
