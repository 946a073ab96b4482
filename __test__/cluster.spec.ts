// Issue 6 acceptance a and b: three nodes follow one primary, finding each
// other with --peers (a) or through a real etcd (b). Under load commit_lsn
// follows the second highest flush; with two nodes killed the survivor's
// commit_lsn stops — regular clients get nothing beyond it while a recovery
// client gets up to flush_lsn, and IDENTIFY_SYSTEM answers each accordingly;
// with the two back, commit_lsn catches up. With etcd, etcd is also stopped
// in the middle: commit_lsn stays where the last known statuses put it while
// the nodes keep flushing, and moves again when etcd is back.
// Acceptance c: peer recovery while the primary is down.

import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';

import test, { type ExecutionContext } from 'ava';

import { formatLsn, parseLsn, segmentStart, type Lsn } from '../ts/lsn.js';
import { memberStatusJson } from '../ts/http/api.js';
import { readControlFile } from '../ts/wal/control_file.js';
import { ReplicationClient } from '../ts/client/client.js';
import {
  compareWalDirs,
  createTempDir,
  freePort,
  lsnOf,
  NodeProcess,
  registerCleanupHooks,
  runPgTool,
  startPostgres,
  startTestNode,
  until,
  type PgCluster,
  type StreamStatus,
  type TempDir,
} from './harness/index.js';
import { etcdAvailable, startEtcd, type EtcdServer } from './harness/etcd.js';

const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

registerCleanupHooks(test);

const SEG = 1024 * 1024;
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-cluster-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

interface ClusterStatus extends StreamStatus {
  cluster: {
    members: number;
    quorum: number;
    follow_peers: 'flush' | 'heartbeat' | null;
    followed_by: { flush: number; heartbeat: number };
    peers: { peer: string; node_id: number | null; flush_lsn: string | null; error: string | null }[];
  };
}

async function primaryFlush(pg: PgCluster): Promise<Lsn> {
  const [r] = await pg.query<{ l: string }>('SELECT pg_current_wal_flush_lsn()::text AS l');
  return lsnOf(r!.l);
}

async function pgbench(pg: PgCluster, args: string[]): Promise<void> {
  await runPgTool('pgbench', [...args, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true, timeoutMs: 120_000 });
}

async function status(n: NodeProcess): Promise<ClusterStatus> {
  const s = (await n.status()) as ClusterStatus | null;
  if (!s) throw new Error(`node at ${n.httpUrl} does not answer`);
  return s;
}

/** Three node processes that know each other's HTTP URLs before any starts. */
export async function threeNodes(dir: string, upstream: string, extra: (i: number) => string[] = () => []): Promise<NodeProcess[]> {
  const nodes: NodeProcess[] = [];
  for (let i = 1; i <= 3; i++) {
    const n = new NodeProcess({ dataDir: `${dir}/n${i}`, nodeId: i, upstream, env: { WALKEEPER_LOG_LEVEL: 'info' } });
    n.pgPort = await freePort();
    n.httpPort = await freePort();
    nodes.push(n);
  }
  nodes.forEach((n, i) => {
    n.opts.extraArgs = [...(extra(i + 1).length ? extra(i + 1) : ['--peers', nodes.filter((m) => m !== n).map((m) => m.httpUrl).join(',')])];
  });
  return nodes;
}

/** What a client sees: IDENTIFY_SYSTEM's xlogpos, and how far a stream from `from` gets within `ms`. */
async function clientView(n: NodeProcess, applicationName: string, from: Lsn, ms: number): Promise<{ xlogpos: Lsn; received: Lsn }> {
  const c = await ReplicationClient.connect({ host: '127.0.0.1', port: n.pgPort, applicationName });
  try {
    const sys = await c.identifySystem();
    const copy = c.startReplication(`START_REPLICATION ${formatLsn(from)} TIMELINE 1`);
    let received = from;
    copy.onXLogData = (m) => {
      if (m.start !== received) throw new Error(`gap: expected ${formatLsn(received)}, got ${formatLsn(m.start)}`);
      received = m.start + BigInt(m.data.length);
    };
    copy.onKeepalive = (k) => {
      if (k.replyRequested) copy.sendStatus({ write: received, flush: received, apply: 0n });
    };
    await copy.started;
    await new Promise((r) => setTimeout(r, ms));
    await copy.end().catch(() => undefined);
    return { xlogpos: sys.xlogpos, received };
  } finally {
    c.close();
  }
}

/** A primary (1 MiB segments) and three started node processes, all stopped when the test ends. `extra(i)`: node i's own flags instead of --peers. */
async function primaryAndThreeNodes(t: ExecutionContext, name: string, extra?: (i: number) => string[]): Promise<{ pg: PgCluster; nodes: [NodeProcess, NodeProcess, NodeProcess] }> {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB', max_wal_senders: '10' } });
  t.teardown(() => pg.destroy());
  const nodes = await threeNodes(`${tmp.path}/${name}`, `host=127.0.0.1 port=${pg.port} user=postgres`, extra);
  t.teardown(() => Promise.all(nodes.map((n) => n.kill())).then(() => undefined));
  await Promise.all(nodes.map((n) => n.start()));
  return { pg, nodes: nodes as [NodeProcess, NodeProcess, NodeProcess] };
}

async function scenario(t: ExecutionContext, mode: 'peers' | 'etcd'): Promise<void> {
  let etcd: EtcdServer | null = null;
  if (mode === 'etcd') {
    etcd = await startEtcd(`${tmp.path}/${mode}`);
    t.teardown(() => etcd!.stop());
  }
  const { pg, nodes } = await primaryAndThreeNodes(t, mode, () => (etcd ? ['--broker', etcd.endpoint] : []));
  const [n1, n2, n3] = nodes;

  await pgbench(pg, ['-i', '-q', '-s', '1']);
  const settled = async (which: NodeProcess[], what: string) => {
    const target = await primaryFlush(pg);
    await until(
      async () => {
        for (const n of which) {
          const s = await n.status();
          if (!s || parseLsn(s.flush_lsn) < target || s.commit_lsn !== s.flush_lsn) return false;
        }
        return true;
      },
      `${what}: flush_lsn = commit_lsn ≥ ${formatLsn(target)}`,
      60_000,
    );
  };
  await settled(nodes, 'all three');
  // (a quorum of two needs only one peer heard: node 1 may still be waiting for the other's first status)
  await until(async () => (await status(n1)).cluster.peers.every((p) => p.node_id !== null), 'node 1 to hear both peers', 30_000);
  const first = await status(n1);
  t.is(first.cluster.members, 3);
  t.is(first.cluster.quorum, 2);
  t.deepEqual(first.cluster.peers.map((p) => p.node_id).sort(), [2, 3]);
  t.is(first.cluster.follow_peers, etcd ? null : 'heartbeat', 'no client yet: peers send a heartbeat (etcd: every put is watched, nothing to ask)');

  // Under load: at every sample, commit_lsn ≤ flush_lsn, and commit_lsn is
  // at most the second highest flush the node knows (its own and its peers').
  const samples: string[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      for (const n of nodes) {
        const s = await status(n);
        const flushes = [parseLsn(s.flush_lsn), ...s.cluster.peers.map((p) => (p.flush_lsn ? parseLsn(p.flush_lsn) : 0n))].sort((a, b) => (a > b ? -1 : 1));
        const commit = parseLsn(s.commit_lsn);
        if (commit > parseLsn(s.flush_lsn) || commit > flushes[1]!) samples.push(`node ${s.node_id}: commit ${s.commit_lsn}, flushes ${flushes.map(formatLsn).join(' ')}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await pgbench(pg, ['-c', '2', '-T', '3']);
  sampling = false;
  await sampler;
  t.deepEqual(samples, [], 'commit_lsn never above the second highest known flush');
  await settled(nodes, 'after the load');

  if (etcd) {
    // walkeeper fetch finds the nodes through etcd: a committed segment, exactly the primary's.
    const c = parseLsn((await status(n1)).commit_lsn);
    const segno = c / BigInt(SEG) - 1n;
    const name = `00000001${(segno / 4096n).toString(16).toUpperCase().padStart(8, '0')}${(segno % 4096n).toString(16).toUpperCase().padStart(8, '0')}`;
    const dir = `${tmp.path}/etcd-fetch`;
    await mkdir(dir, { recursive: true });
    const fetched = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'fetch', '--broker', etcd!.endpoint, name, `${dir}/RECOVERYXLOG`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (b: Buffer) => (err += b.toString()));
      p.on('close', (code) => resolve({ code, err }));
    });
    t.is(fetched.code, 0, fetched.err);
    t.true((await readFile(`${dir}/RECOVERYXLOG`)).equals(await readFile(`${pg.walDir}/${name}`)), `${name} through --broker equals the primary's`);

    // etcd away: the nodes keep following the primary, but commit_lsn stays
    // where the members' last known flushes put it.
    await etcd.stop();
    await pgbench(pg, ['-c', '2', '-t', '200']);
    const target = await primaryFlush(pg);
    await until(async () => (await Promise.all(nodes.map(status))).every((s) => parseLsn(s.flush_lsn) >= target), 'the nodes to flush without etcd', 60_000);
    for (const s of await Promise.all(nodes.map(status))) {
      const flushes = [parseLsn(s.flush_lsn), ...s.cluster.peers.map((p) => parseLsn(p.flush_lsn ?? '0/0'))].sort((a, b) => (a > b ? -1 : 1));
      t.is(parseLsn(s.commit_lsn), flushes[1]! < parseLsn(s.flush_lsn) ? flushes[1]! : parseLsn(s.flush_lsn), `node ${s.node_id}: commit_lsn is what the last known statuses prove`);
      t.true(parseLsn(s.commit_lsn) < parseLsn(s.flush_lsn), `node ${s.node_id}: commit_lsn ${s.commit_lsn} stopped below flush ${s.flush_lsn}`);
    }
    // etcd back: picked up without a restart.
    await etcd.start();
    await settled(nodes, 'with etcd back');
  }

  // One node down: two of three still make a quorum.
  await n3.kill();
  await pgbench(pg, ['-c', '2', '-t', '300']);
  await settled([n1, n2], 'with node 3 down');

  // Two down: the survivor keeps flushing what the primary sends, but commit_lsn stops.
  await n2.kill();
  await pgbench(pg, ['-c', '2', '-t', '300']);
  const end = await primaryFlush(pg);
  await until(async () => parseLsn((await status(n1)).flush_lsn) >= end, 'node 1 to flush the new WAL', 60_000);
  const stuck = await status(n1);
  const commit = parseLsn(stuck.commit_lsn);
  const flush = parseLsn(stuck.flush_lsn);
  t.true(commit < flush, `commit ${stuck.commit_lsn} stays below flush ${stuck.flush_lsn}`);
  const p2 = stuck.cluster.peers.find((p) => p.node_id === 2)!;
  const p3 = stuck.cluster.peers.find((p) => p.node_id === 3)!;
  const second = [parseLsn(p2.flush_lsn!), parseLsn(p3.flush_lsn!), flush].sort((a, b) => (a > b ? -1 : 1))[1]!;
  t.is(commit, second, 'commit_lsn is the second highest of the last known flushes');
  await new Promise((r) => setTimeout(r, 1000));
  t.is((await status(n1)).commit_lsn, stuck.commit_lsn, 'and it does not move');

  const from = segmentStart(commit, SEG) - BigInt(SEG);
  const regular = await clientView(n1, 'regular', from, 1500);
  t.is(regular.xlogpos, commit, 'IDENTIFY_SYSTEM to a regular client: commit_lsn');
  t.is(regular.received, commit, 'a regular client gets exactly up to commit_lsn, nothing beyond');
  const recovery = await clientView(n1, 'walkeeper_recovery', from, 1500);
  // (the primary may have written a little more meanwhile: a running-xacts record)
  const flushNow = parseLsn((await status(n1)).flush_lsn);
  t.true(recovery.xlogpos >= flush && recovery.xlogpos <= flushNow, `IDENTIFY_SYSTEM to a recovery client: flush_lsn (${formatLsn(recovery.xlogpos)})`);
  t.true(recovery.received >= flush && recovery.received <= flushNow, `a recovery client gets up to flush_lsn (${formatLsn(recovery.received)})`);
  t.true(recovery.received > commit);

  // The two come back: commit_lsn catches up with everything.
  await Promise.all([n2.start(), n3.start()]);
  await settled(nodes, 'after the restart');
  t.true(parseLsn((await status(n1)).commit_lsn) >= end);
}

test('three nodes with --peers: commit_lsn is the second highest flush; two killed → it stops, regular clients get nothing beyond it, a recovery client gets flush_lsn; back → catches up', async (t) => {
  await scenario(t, 'peers');
});

test('three nodes with --broker on a real etcd: the same, and an etcd restart in the middle is picked up without restarting the nodes', async (t) => {
  if (!etcdAvailable()) return t.fail('etcd is not installed (apt-get install etcd-server); .ci/run installs it');
  await scenario(t, 'etcd');
});

test('peer recovery: a node down during the load, then the primary stopped; restarted, it catches up to the peers’ flush_lsn from them, byte-identical; with the primary back it follows the primary again', async (t) => {
  const { pg, nodes } = await primaryAndThreeNodes(t, 'recovery');
  const [n1, n2, n3] = nodes;
  await pgbench(pg, ['-i', '-q', '-s', '1']);
  const caughtUp = async (which: NodeProcess[], target: Lsn) =>
    until(async () => (await Promise.all(which.map(status))).every((s) => parseLsn(s.flush_lsn) >= target), `flush ≥ ${formatLsn(target)}`, 60_000);
  await caughtUp(nodes, await primaryFlush(pg));

  await n2.kill();
  await pgbench(pg, ['-c', '2', '-t', '1000']);
  await pg.query('CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 20) AS v FROM generate_series(1, 5000) g');
  const end = await primaryFlush(pg);
  await caughtUp([n1, n3], end);
  await pg.stop('fast');
  const peerFlush = parseLsn((await status(n1)).flush_lsn);
  const behind = peerFlush;

  await n2.start();
  const s2 = await status(n2);
  t.true(parseLsn(s2.flush_lsn) < behind, `node 2 restarted behind (${s2.flush_lsn} < ${formatLsn(behind)})`);
  await until(async () => parseLsn((await status(n2)).flush_lsn) >= peerFlush, `node 2 to recover up to ${formatLsn(peerFlush)} from its peers`, 60_000);
  t.regex(n2.output, /recovering WAL from peers/);
  t.regex(n2.output, /recovering from peer/);
  t.is((await status(n2)).flush_lsn, formatLsn(peerFlush), 'exactly the peers’ flush_lsn');
  // Byte-identical to the primary's WAL (which is what the peers hold).
  t.deepEqual(await compareWalDirs(`${tmp.path}/recovery/n2/streams/main`, pg.walDir, { segSize: SEG, endLsn: peerFlush, segments: 'ours', partialTail: 'ignore' }), []);
  // Metrics show it: the recovery receiver's switch, fsyncs, bytes received, the LSNs.
  const m = await (await fetch(`${n2.httpUrl}/metrics`)).text();
  t.regex(m, /walkeeper_receiver_switches_total\{stream="main",reason="NoExistingConnection",node_id="2"\} [1-9]/);
  t.regex(m, /walkeeper_fsync_seconds_count\{[^}]*stream="main"[^}]*\} [1-9]/);
  t.regex(m, /walkeeper_wal_received_bytes_total\{stream="main",node_id="2"\} [1-9]/);
  t.true(m.includes(`walkeeper_flush_lsn{stream="main",node_id="2"} ${Number(peerFlush)}`), 'flush_lsn gauge');
  // Members now agree: node 2's flush counts for commit_lsn again.
  await until(async () => (await status(n1)).commit_lsn === formatLsn(peerFlush), 'commit_lsn at the recovered flush');

  // The primary back: node 2 follows it again, from where recovery left off.
  await pg.start();
  await until(async () => (await status(n2)).upstream?.state === 'streaming', 'node 2 to stream from the primary again', 60_000);
  await pgbench(pg, ['-c', '2', '-t', '300']);
  await caughtUp(nodes, await primaryFlush(pg));
  await pg.query('SELECT pg_switch_wal()');
  await pg.query('CHECKPOINT');
  const last = await primaryFlush(pg);
  await caughtUp([n2], last);
  t.deepEqual(await compareWalDirs(`${tmp.path}/recovery/n2/streams/main`, pg.walDir, { segSize: SEG, endLsn: last, segments: 'ours', partialTail: 'ignore' }), []);
});

test('a node killed under load reports no commit_lsn after its restart until a quorum has flushed up to the end of its WAL, and never less than before', async (t) => {
  const { pg, nodes } = await primaryAndThreeNodes(t, 'restart-commit');
  const [n1, n2, n3] = nodes;
  const dir = `${tmp.path}/restart-commit/n1/streams/main`;
  await pgbench(pg, ['-i', '-q', '-s', '1']);
  // Kill node 1 while commit_lsn moves, until its control file (written a second late) is behind what it reported.
  let reported = 0n;
  let control = 0n;
  for (let attempt = 0; attempt < 5 && !(control < reported); attempt++) {
    if (attempt > 0) await n1.start();
    const load = pgbench(pg, ['-c', '2', '-T', '3']);
    await new Promise((r) => setTimeout(r, 1500));
    reported = parseLsn((await status(n1)).commit_lsn);
    await n1.kill();
    await load;
    control = (await readControlFile(dir))!.commitLsn;
  }
  t.true(control < reported, `the control file's commit_lsn ${formatLsn(control)} is behind the ${formatLsn(reported)} node 1 reported`);
  // Its peers away, node 1 comes back alone: it cannot know commit_lsn, and says so rather than report the control file's.
  await n2.kill();
  await n3.kill();
  await n1.start();
  const seen: (string | null)[] = [];
  let polling = true;
  const poll = (async () => {
    // (one more look after polling stops: the value that ended the wait is among those checked)
    for (;;) {
      const stop = !polling;
      seen.push(((await n1.status()) as { commit_lsn: string | null } | null)?.commit_lsn ?? null);
      if (stop) break;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const alone = (await status(n1)) as unknown as { commit_lsn: string | null; commit_lsn_unknown_below: string | null; flush_lsn: string };
  t.is(alone.commit_lsn, null);
  t.true(parseLsn(alone.commit_lsn_unknown_below!) >= reported, `it waits for a quorum at ${alone.commit_lsn_unknown_below}, the end of its WAL, at least the ${formatLsn(reported)} reported`);
  // A peer back: the quorum catches up with that end, and commit_lsn is reported again, at least what it was.
  await n2.start();
  await until(async () => ((await status(n1)) as unknown as { commit_lsn: string | null }).commit_lsn !== null, 'node 1 to know its commit_lsn again', 60_000);
  polling = false;
  await poll;
  const values = seen.filter((v): v is string => v !== null);
  t.true(seen.some((v) => v === null), 'not known at first');
  t.true(values.length > 0, 'known at last');
  for (const v of values) t.true(parseLsn(v) >= reported, `reported ${v}, not below ${formatLsn(reported)}`);
  t.regex(n1.output, /commit_lsn not known yet after a restart/);
  t.regex(n1.output, /commit_lsn known again/);
});

test('peers push each flush only to a node where a client waits on commit_lsn; the others get a heartbeat', async (t) => {
  const { pg, nodes } = await primaryAndThreeNodes(t, 'demand');
  const [n1, n2] = nodes;
  const follows = async () =>
    (await Promise.all(nodes.map((n) => n.status() as Promise<ClusterStatus | null>))).map((s) =>
      s ? `${s.cluster.follow_peers} (followed: ${s.cluster.followed_by.flush} flush, ${s.cluster.followed_by.heartbeat} heartbeat)` : 'no stream yet',
    );
  const idle = Array(3).fill('heartbeat (followed: 0 flush, 2 heartbeat)');
  await until(async () => JSON.stringify(await follows()) === JSON.stringify(idle), 'no client anywhere: every node follows its peers by heartbeat', 30_000);

  // A recovery client is served up to flush_lsn (and then ended): it does not wait on the quorum.
  const rc = await ReplicationClient.connect({ host: '127.0.0.1', port: n2.pgPort, applicationName: 'walkeeper_recovery' });
  const rsys = await rc.identifySystem();
  const rcopy = rc.startReplication(`START_REPLICATION ${formatLsn(segmentStart(rsys.xlogpos, SEG))} TIMELINE 1`);
  await rcopy.started;
  await until(() => /"client":"walkeeper_recovery@[^"]*".*"msg":"replication ended"/.test(n2.output), 'the recovery client to be served');
  t.notRegex(n2.output, /peers push every flush/, 'a recovery client changes nothing');
  t.deepEqual(await follows(), idle);
  rc.close();

  // A regular client on node 1: its peers push every flush to it, and it gets all the primary flushes as they come.
  const c = await ReplicationClient.connect({ host: '127.0.0.1', port: n1.pgPort, applicationName: 'a_standby' });
  const sys = await c.identifySystem();
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(segmentStart(sys.xlogpos, SEG))} TIMELINE 1`);
  let received = 0n;
  copy.onXLogData = (m) => (received = m.start + BigInt(m.data.length));
  copy.onKeepalive = (k) => {
    if (k.replyRequested) copy.sendStatus({ write: received, flush: received, apply: 0n });
  };
  await copy.started;
  const serving = ['flush (followed: 0 flush, 2 heartbeat)', 'heartbeat (followed: 1 flush, 1 heartbeat)', 'heartbeat (followed: 1 flush, 1 heartbeat)'];
  t.is((await status(n1)).cluster.follow_peers, 'flush', 'node 1 asks for every flush as soon as the client starts');
  await until(async () => JSON.stringify(await follows()) === JSON.stringify(serving), 'the peers to push every flush to node 1 (only)');
  await pgbench(pg, ['-i', '-q', '-s', '1']);
  await pgbench(pg, ['-c', '2', '-t', '200']);
  const target = await primaryFlush(pg);
  await until(() => received >= target, `the client to receive up to ${formatLsn(target)}`, 30_000);
  t.deepEqual(await follows(), serving);
  // Where those commits' time went on node 1: its flushes waiting for the quorum, and the caught-up client's sender waking for them.
  const m = await (await fetch(`${n1.httpUrl}/metrics`)).text();
  const count = (name: string) => Number(new RegExp(`^${name}_count\\{[^}]*stream="main"[^}]*\\} (\\d+)$`, 'm').exec(m)?.[1] ?? 0);
  t.true(count('walkeeper_ack_delay_seconds') > 0, "the primary's wait for each acknowledged flush was measured");
  t.true(count('walkeeper_commit_wait_seconds') > 0, 'flushes waited for the quorum and were measured');
  t.true(count('walkeeper_send_delay_seconds') > 0, "the client's sender woke for new WAL and was measured");

  // Gone: after the grace (5 s) node 1 goes back to the heartbeat.
  await copy.end().catch(() => undefined);
  c.close();
  t.is((await status(n1)).cluster.follow_peers, 'flush', 'still every flush right after the client left (it may come straight back)');
  await until(async () => JSON.stringify(await follows()) === JSON.stringify(idle), 'every node back on the heartbeat', 20_000);
  // And with nobody asking for every flush, commit_lsn still gets to the end everywhere.
  await pgbench(pg, ['-c', '2', '-t', '100']);
  const end = await primaryFlush(pg);
  await until(async () => (await Promise.all(nodes.map(status))).every((s) => parseLsn(s.commit_lsn) >= end), `commit_lsn ≥ ${formatLsn(end)} on every node`, 30_000);

  const bad = await fetch(`${n1.httpUrl}/v1/streams/main?watch=commit`);
  t.is(bad.status, 400);
  t.regex(((await bad.json()) as { error: string }).error, /watch must be flush or heartbeat, not "commit"/);
});

test('a peer reporting another system id, nonsense LSNs or malformed status is ignored with a logged error and cannot move commit_lsn', async (t) => {
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  // The lying peer: a plain HTTP server (a real node cannot be made to lie).
  let body: unknown = {};
  const fake = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => fake.close(() => r())));
  const fakeUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
  const node = await startTestNode({ upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, dataDir: `${tmp.path}/liar`, peers: [fakeUrl] });
  t.teardown(() => node.stop());
  await pgbench(pg, ['-i', '-q', '-s', '1']);
  await until(async () => node.node.streams.has('main') && node.node.stream('main').flushLsn >= (await primaryFlush(pg)), 'the node to follow', 30_000);
  const s = node.node.stream('main');
  const start = s.commitLsn;
  t.true(s.flushLsn > start);
  const valid = () => ({ ...memberStatusJson(node.node, s), node_id: 9, flush_lsn: 'FF/0', commit_lsn: 'FF/0' });
  const errors = (re: RegExp) => node.logs.filter((l) => typeof l.msg === 'string' && re.test(l.msg)).length;

  body = { ...valid(), system_id: '12345' };
  await until(() => errors(/peer status ignored: reports database system 12345/) > 0, 'the other system to be reported');
  body = { ...valid(), flush_lsn: '0/100', commit_lsn: '0/200' };
  await until(() => errors(/peer status ignored: reports commit_lsn 0\/200 above its flush_lsn 0\/100/) > 0, 'the nonsense LSNs to be reported');
  body = { ...valid(), flush_lsn: 'not an LSN' };
  await until(() => node.logs.some((l) => l.msg === 'peer status ignored' && l.stream === 'main' && /flush_lsn is not an LSN/.test(String(l.err))), 'the malformed status to be reported');
  body = '{ not json';
  await new Promise((r) => setTimeout(r, 600));
  // A document over several lines (as a node answers without ?watch), and a broken one.
  body = JSON.stringify({ ...valid(), system_id: '777' }, null, 2);
  await until(() => errors(/peer status ignored: reports database system 777/) > 0, 'a multi-line document to be read whole');
  body = '{\n  "node_id": 9,\n  not json\n}\n';
  await new Promise((r) => setTimeout(r, 600));
  t.true(node.node.streams.has('main'), 'the node is still up');
  t.is(s.commitLsn, start, 'none of them moved commit_lsn');

  // A sound report of a flush below ours: commit_lsn = that (two members, both must have it).
  const peerFlush = s.flushLsn - 1000n;
  body = { ...valid(), flush_lsn: formatLsn(peerFlush), commit_lsn: formatLsn(peerFlush) };
  await until(() => s.commitLsn === peerFlush, 'a sound status to count');
  // And a lower one later cannot take it back.
  body = { ...valid(), flush_lsn: formatLsn(start), commit_lsn: formatLsn(start) };
  await new Promise((r) => setTimeout(r, 600));
  t.is(s.commitLsn, peerFlush);
});
