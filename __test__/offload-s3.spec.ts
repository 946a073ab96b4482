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
import { startS3Proxy } from './harness/s3proxy.js';
import { readFile } from 'node:fs/promises';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
const BUCKET = 'wal';
let tmp: TempDir;
let rgw: Rgw;
let s3: S3Client;
test.before(async () => {
  tmp = await createTempDir('walkeeper-offload-s3-');
  // (https too: the three-node test offloads over TLS, as to AWS; the others over http)
  rgw = await startRgw({ tls: true });
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

test('three nodes offload to RGW over https under pgbench: one offloader at a time, a handover after SIGKILL without a gap, every segment once and identical, the promotion history', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB', max_wal_senders: '10' } });
  t.teardown(() => pg.destroy());
  await pg.query('CREATE TABLE marks (n int)');
  const up = await startStandby(await basebackup(pg), { primaryConninfo: conninfoOf(pg), conf: { wal_keep_size: '512MB', max_wal_senders: '10' } });
  t.teardown(() => up.destroy());
  const nodes: NodeProcess[] = [];
  for (let i = 1; i <= 3; i++) {
    const n = new NodeProcess({ dataDir: path.join(tmp.path, `c${i}`), nodeId: i, upstream: conninfoOf(up), env: { ...rgw.env, NODE_EXTRA_CA_CERTS: rgw.caFile!, WALKEEPER_LOG_LEVEL: 'info' } });
    n.pgPort = await freePort();
    n.httpPort = await freePort();
    nodes.push(n);
  }
  for (const n of nodes) {
    n.opts.extraArgs = ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(','), '--remote-storage', `s3://${BUCKET}/cluster`, '--remote-endpoint', rgw.tlsEndpoint!, '--offload-partial-after', '0'];
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

test.serial('with the gateway down, WAL stays on the node and the status says why; when it returns, the WAL is offloaded and then removed', async (t) => {
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

/** While it runs: the object of the segment just below backup_lsn is complete in the store at every sample. */
function watchBackupLsn(get: () => Lsn | null, prefix: string, tli = 1): { stop(): Promise<string[]> } {
  const bad: string[] = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      const b = get();
      if (b !== null && b > 0n) {
        const segno = b / BigInt(SEG) - 1n;
        const name = `${tli.toString(16).toUpperCase().padStart(8, '0')}${(segno / 4096n).toString(16).toUpperCase().padStart(8, '0')}${(segno % 4096n).toString(16).toUpperCase().padStart(8, '0')}.zst`;
        if (!(await objects(prefix + name)).has('')) bad.push(`backup_lsn ${formatLsn(b)} but ${name} is not in the store`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    async stop() {
      on = false;
      await loop;
      return bad;
    },
  };
}

test('faults between the node and S3 — 500, 503 SlowDown, a reset mid-body, a stalled request, a outage — end with the archive complete and identical; backup_lsn never passes an incomplete object', async (t) => {
  const proxy = await startS3Proxy(rgw.endpoint);
  t.teardown(() => proxy.close());
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  Object.assign(process.env, rgw.env);
  const node = await startTestNode({
    upstream: conninfoOf(pg),
    dataDir: path.join(tmp.path, 'faults'),
    remoteStorage: `s3://${BUCKET}/faults`,
    remoteEndpoint: proxy.endpoint,
    offload: { intervalMs: 200, partialAfterMs: 0, objectTimeoutMs: 2000 },
    retention: { keepBytes: BigInt(SEG), replicaWindowMs: 0, intervalMs: 200 },
  });
  t.teardown(() => node.stop());
  await pg.query('CREATE TABLE f (g int, v text)');
  await until(() => node.node.streams.has('main'), 'the stream');
  const s = node.node.stream();
  const prefix = `faults/main/${s.systemId}/`;
  const watch = watchBackupLsn(() => s.backupLsn, prefix);
  const isSegmentPut = (m: string, p: string) => m === 'PUT' && /\.zst(\?|$)/.test(p);
  for (const kind of ['500', '503', 'reset-request', 'stall'] as const) proxy.inject({ kind, match: isSegmentPut, count: 2 });
  for (let i = 0; i < 6; i++) await pg.query('INSERT INTO f SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 1500) g');
  const e1 = await flushOf(pg);
  await until(() => (s.backupLsn ?? 0n) >= e1 - (e1 % BigInt(SEG)), 'the WAL offloaded through the faults', 90_000).catch((e) => {
    t.log(proxy.requests.slice(0, 40).map((r) => `${r.method} ${r.path.slice(0, 80)} ${r.fault} ${r.status}`).join('\n'));
    t.log(node.logs.filter((l) => l.component === 'offload').slice(-20).map((l) => JSON.stringify(l)).join('\n'));
    throw e;
  });
  for (const kind of ['500', '503', 'reset-request', 'stall']) t.is(proxy.requests.filter((r) => r.fault === kind).length, 2, `two requests got ${kind}`);

  // A longer outage: WAL waits on the node, then goes up.
  proxy.outage(true);
  for (let i = 0; i < 4; i++) await pg.query('INSERT INTO f SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 1500) g');
  const e2 = await flushOf(pg);
  await until(() => s.commitLsn >= e2, 'the node to commit during the outage');
  await new Promise((r) => setTimeout(r, 3000));
  t.true((s.backupLsn ?? 0n) < e2 - (e2 % BigInt(SEG)), 'nothing more offloaded during the outage');
  t.true(proxy.requests.some((r) => r.fault === 'outage'), 'the node kept trying');
  proxy.outage(false);
  await until(() => (s.backupLsn ?? 0n) >= e2 - (e2 % BigInt(SEG)), 'the backlog offloaded after the outage', 90_000);
  t.deepEqual(await watch.stop(), []);
  await checkArchive(t, prefix, e2, [pg.walDir]);
  const m = await (await fetch(`${node.httpUrl}/metrics`)).text();
  const errors = Number(/walkeeper_offload_errors_total\{[^}]*\} (\d+)/.exec(m)?.[1]);
  t.true(errors >= 8, `errors counted (${errors})`);
});

test('the offloader SIGKILLed in the middle of a multipart upload: no incomplete upload remains after it restarts, the object is complete and identical, backup_lsn was never ahead', async (t) => {
  const proxy = await startS3Proxy(rgw.endpoint);
  t.teardown(() => proxy.close());
  // 16 MiB segments of incompressible WAL: each object is larger than one part (8 MiB).
  const pg = await startPostgres({ conf: { wal_keep_size: '1GB' } });
  t.teardown(() => pg.destroy());
  const n = new NodeProcess({ dataDir: path.join(tmp.path, 'mp'), nodeId: 1, upstream: conninfoOf(pg), env: { ...rgw.env, WALKEEPER_LOG_LEVEL: 'info' }, extraArgs: ['--remote-storage', `s3://${BUCKET}/mp`, '--remote-endpoint', proxy.endpoint, '--offload-partial-after', '0'] });
  t.teardown(() => n.kill());
  await n.start();
  const isPart = (m: string, p: string) => m === 'PUT' && /[?&]partNumber=/.test(p);
  proxy.inject({ kind: 'stall', match: isPart, count: 1 });
  await pg.query('CREATE TABLE r (b bytea)');
  await pg.query("INSERT INTO r SELECT decode(string_agg(md5(random()::text || g::text || i::text), ''), 'hex') FROM generate_series(1, 40) g, generate_series(1, 65536) i GROUP BY g");
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('INSERT INTO r VALUES (NULL)');
  const end = await flushOf(pg);
  await until(() => proxy.stalled > 0, 'a part upload in flight', 60_000);
  const before = await view(n);
  await n.kill();
  const sysid = before!.system_id;
  const prefix = `mp/main/${sysid}/`;
  const open1 = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  t.true((open1.Uploads ?? []).length >= 1, 'the kill left an incomplete multipart upload');
  if (before?.backup_lsn) {
    const b = parseLsn(before.backup_lsn);
    t.true((await objects(prefix)).size >= Number(b / BigInt(16 * SEG)) - 1, 'backup_lsn was not ahead of the objects');
  }
  await n.start();
  await until(async () => {
    const v = await view(n);
    return v?.backup_lsn !== null && v?.backup_lsn !== undefined && parseLsn(v.backup_lsn) >= end - (end % BigInt(16 * SEG));
  }, 'the node to offload everything after the restart', 120_000);
  const open2 = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  t.deepEqual(open2.Uploads ?? [], [], 'no incomplete multipart upload remains');
  const objs = await objects(prefix);
  const big = [...objs.entries()].filter(([, size]) => size > 8 * SEG);
  t.true(big.length >= 1, 'some objects went up in parts');
  for (const [k] of [...objs.entries()].filter(([k]) => k.endsWith('.zst'))) {
    const plain = await zstdDecompress(await getObject(prefix + k), 16 * SEG);
    t.true(plain.equals(await readFile(path.join(pg.walDir, k.slice(0, 24)))), `${k} identical`);
  }
});
