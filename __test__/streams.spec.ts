// Issue 20: many streams per node. Streams created, changed and deleted over
// HTTP (a bearer token for every change; bad input changes nothing), kept
// across a restart, and a deleted stream's clients ended (SQLSTATE 00000) and
// its slot on the upstream dropped — or, with the upstream away, named. Two
// real primaries on the same three nodes, each stream with its own quorum,
// and a node SIGKILLed under load on both: nothing either acknowledged is lost.

import { spawn } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { ReplicationClient } from '../ts/client/client.js';
import { formatLsn } from '../ts/lsn.js';
import {
  createTempDir,
  freePort,
  lsnOf,
  NodeProcess,
  pgToolPath,
  registerCleanupHooks,
  startPostgres,
  until,
  commitRecordEnds,
  runCli,
  type PgCluster,
  type TempDir,
} from './harness/index.js';

registerCleanupHooks(test);

const SEG = 1024 * 1024;
const TOKEN = 'test-token-0123456789abcdef';
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-streams-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

const conninfoOf = (pg: PgCluster) => `host=127.0.0.1 port=${pg.port} user=postgres`;

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

async function call(n: NodeProcess, method: string, p: string, opts: { token?: string | null; body?: unknown } = {}): Promise<Answer> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const token = opts.token === undefined ? TOKEN : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${n.httpUrl}${p}`, { method, headers, body: opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body) });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

const names = async (n: NodeProcess) => ((await (await fetch(`${n.httpUrl}/v1/streams`)).json()) as { name: string }[]).map((s) => s.name).sort();

async function slotsOn(pg: PgCluster): Promise<string[]> {
  return (await pg.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots ORDER BY 1')).map((r) => r.slot_name);
}

async function streaming(n: NodeProcess, stream: string): Promise<void> {
  await until(async () => (await n.status(stream))?.upstream?.state === 'streaming', `stream ${stream} to follow its upstream`, 30_000);
}

test('streams over HTTP: the token, bad input, a restart, and deletion (clients ended, slot dropped or named)', async (t) => {
  const pgA = await startPostgres({ walSegSizeMB: 1 });
  t.teardown(() => pgA.destroy());
  const pgB = await startPostgres({ walSegSizeMB: 1 });
  t.teardown(() => pgB.destroy());
  const tokenFile = path.join(tmp.path, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const dataDir = path.join(tmp.path, 'http');
  const node = new NodeProcess({ dataDir, extraArgs: ['--http-token-file', tokenFile] });
  await node.start();
  t.teardown(() => node.kill());
  t.regex(node.output, /No streams yet: follow a primary .*walkeeper import .*PUT http:\/\/127\.0\.0\.1:\d+\/v1\/streams\/<name>/, 'a node with no stream says how to add one');

  // Without the token, or with a wrong one: 401, nothing changes.
  for (const token of [null, 'wrong-token-0123456789']) {
    const r = await call(node, 'PUT', '/v1/streams/orders', { token, body: { upstream: conninfoOf(pgA) } });
    t.is(r.status, 401, `token ${token}`);
    t.regex(String(r.body.error), /bearer token/);
  }
  t.is((await call(node, 'POST', '/v1/streams/orders/suspend', { token: null })).status, 401, 'suspend needs the token too');
  t.deepEqual(await names(node), []);
  await t.throwsAsync(readFile(path.join(dataDir, 'streams.json')), undefined, 'nothing persisted');

  // Bad input: one clear error each, nothing changes.
  const bad: [string, unknown, RegExp][] = [
    ['/v1/streams/a%2Fb', { upstream: conninfoOf(pgA) }, /stream name "a\/b" is not valid/],
    [`/v1/streams/${'x'.repeat(64)}`, { upstream: conninfoOf(pgA) }, /64 characters long; at most 63/],
    ['/v1/streams/.hidden', { upstream: conninfoOf(pgA) }, /is not valid/],
    ['/v1/streams/orders', { upstream: 'host=127.0.0.1 port=notaport' }, /"upstream" is not a valid conninfo/],
    ['/v1/streams/orders', { upstreams: 'x' }, /unknown key "upstreams"/],
    ['/v1/streams/orders', {}, /does not exist: a new stream needs "upstream"/],
    ['/v1/streams/orders', '{"upstream": ', /not valid JSON/],
    ['/v1/streams/orders', { upstream: conninfoOf(pgA), slot_name: 'Bad-Slot' }, /"slot_name" must be lower-case/],
  ];
  for (const [p, body, re] of bad) {
    const r = await call(node, 'PUT', p, { body });
    t.is(r.status, 400, `${p} ${JSON.stringify(body)}`);
    t.regex(String(r.body.error), re);
  }
  t.is((await call(node, 'DELETE', '/v1/streams/nope')).status, 404, 'deleting a stream that does not exist');
  t.deepEqual(await names(node), []);

  // Created with the token: 201; it follows its primary.
  const created = await call(node, 'PUT', '/v1/streams/orders', { body: { upstream: conninfoOf(pgA) } });
  t.is(created.status, 201, JSON.stringify(created.body));
  await streaming(node, 'orders');
  await pgA.query('CREATE TABLE t (v int); INSERT INTO t VALUES (1)');
  t.deepEqual(await call(node, 'PUT', '/v1/streams/orders', { body: { upstream: conninfoOf(pgA) } }), { status: 200, body: { stream: 'orders', changed: false, upstream: conninfoOf(pgA) } }, 'the same again changes nothing');
  // A second stream of the same database system: 409, nothing changes.
  const twice = await call(node, 'PUT', '/v1/streams/orders2', { body: { upstream: conninfoOf(pgA) } });
  t.is(twice.status, 409);
  t.regex(String(twice.body.error), /stream orders on this node already holds WAL of database system \d+/);
  t.deepEqual(await names(node), ['orders']);
  // A second primary into its own stream.
  t.is((await call(node, 'PUT', '/v1/streams/billing', { body: { upstream: conninfoOf(pgB), application_name: 'wk_billing', slot_name: 'wk_billing' } })).status, 201);
  await streaming(node, 'billing');
  t.deepEqual(await slotsOn(pgB), ['wk_billing']);
  // Changing an upstream to a different system is refused while that system answers.
  const swap = await call(node, 'PUT', '/v1/streams/billing', { body: { upstream: conninfoOf(pgA) } });
  t.is(swap.status, 409);
  t.regex(String(swap.body.error), /stream billing holds WAL of database system/);
  t.deepEqual(JSON.parse(await readFile(path.join(dataDir, 'streams.json'), 'utf8')), {
    version: 1,
    streams: { billing: { upstream: conninfoOf(pgB), application_name: 'wk_billing', slot_name: 'wk_billing' }, orders: { upstream: conninfoOf(pgA) } },
  });

  // A restart keeps both, following their primaries.
  t.is(await node.stop(), 0);
  await node.start();
  t.deepEqual(await names(node), ['billing', 'orders']);
  await streaming(node, 'orders');
  await streaming(node, 'billing');

  // Deleting: without the token nothing happens; with it the clients end with 00000 and the slot goes.
  const c = await ReplicationClient.connect({ host: '127.0.0.1', port: node.pgPort, options: '-c stream=orders', applicationName: 'reader' });
  t.teardown(() => c.close().catch(() => undefined));
  const st = await node.status('orders');
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(lsnOf(st!.commit_lsn) - (lsnOf(st!.commit_lsn) % BigInt(SEG)))}`);
  copy.onXLogData = () => undefined;
  await until(async () => ((await node.status('orders'))?.replicas.length ?? 0) === 1, 'the reader to stream');
  t.is((await call(node, 'DELETE', '/v1/streams/orders', { token: null })).status, 401);
  t.deepEqual(await names(node), ['billing', 'orders']);
  const del = await call(node, 'DELETE', '/v1/streams/orders');
  t.is(del.status, 200, JSON.stringify(del.body));
  t.is(del.body.slot_dropped, 'walkeeper_1');
  t.regex(String(del.body.kept_at), /streams\.deleted\/orders\./);
  const end = await copy.done;
  t.is(end.error?.code, '00000');
  t.regex(String(end.error?.message), /^ending streaming to reader@127\.0\.0\.1:\d+ at .*: stream orders was deleted$/);
  t.deepEqual(await slotsOn(pgA), [], "the stream's slot on its primary is dropped");
  t.deepEqual(await names(node), ['billing']);
  t.is((await fetch(`${node.httpUrl}/v1/streams/orders`)).status, 404);
  const refused = await ReplicationClient.connect({ host: '127.0.0.1', port: node.pgPort, options: '-c stream=orders' }).then(
    () => null,
    (e: { code?: string }) => e.code,
  );
  t.is(refused, '3D000', 'new clients of a deleted stream are refused');
  t.deepEqual(await readdir(path.join(dataDir, 'streams')), ['billing']);

  // The upstream away: the stream goes, and the answer names the slot that remains.
  await pgB.stop();
  const away = await call(node, 'DELETE', '/v1/streams/billing?purge=true');
  t.is(away.status, 200, JSON.stringify(away.body));
  t.like(away.body, { purged: true, slot_remains: { upstream: conninfoOf(pgB), slot: 'wk_billing' } });
  t.regex(node.output, /the replication slot wk_billing remains on the upstream .*pg_drop_replication_slot\('wk_billing'\)/);
  t.deepEqual(await readdir(path.join(dataDir, 'streams')), [], 'purged');

  // An upstream that does not answer yet: the stream is pending (listed, no LSNs), and status shows it.
  const dead = `host=127.0.0.1 port=${await freePort()} user=postgres connect_timeout=1`;
  t.is((await call(node, 'PUT', '/v1/streams/later', { body: { upstream: dead } })).status, 201);
  const listed = ((await (await fetch(`${node.httpUrl}/v1/streams`)).json()) as { name: string; state: string; flush_lsn: string | null }[]).find((s) => s.name === 'later');
  t.like(listed, { state: 'pending', flush_lsn: null });
  t.is((await fetch(`${node.httpUrl}/v1/streams/later`)).status, 404, 'no status a peer or receiver could use yet');
  const cli = await runCli(['status', '--http', node.httpUrl]);
  t.is(cli.code, 0, cli.stderr);
  t.regex(cli.stdout, /^later\s+pending\s+-\s+-\s+-/m);
  t.is((await call(node, 'DELETE', '/v1/streams/later')).status, 200);
  t.deepEqual(JSON.parse(await readFile(path.join(dataDir, 'streams.json'), 'utf8')), { version: 1, streams: {} });
  t.is(await node.stop(), 0);
  await node.start();
  t.deepEqual(await names(node), [], 'deleted streams stay deleted across a restart');
});

/** Every node's flush_lsn of `stream`, once all answer. */
async function flushes(nodes: NodeProcess[], stream: string): Promise<bigint[]> {
  for (;;) {
    const st = await Promise.all(nodes.map((n) => n.status(stream)));
    if (st.every((s) => s !== null)) return st.map((s) => lsnOf(s!.flush_lsn));
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Commits in a loop, recording the xid of each COMMIT that returned (i.e. that the quorum acknowledged). */
function tracker(t: ExecutionContext, pg: PgCluster) {
  const acked: bigint[] = [];
  let stop = false;
  const run = (async () => {
    const c = await pg.connect();
    c.on('error', () => undefined);
    t.teardown(() => c.end().catch(() => undefined));
    while (!stop) {
      await c.query('BEGIN');
      const { rows } = await c.query<{ x: string }>("INSERT INTO tracked (v) VALUES (repeat('x', 200)) RETURNING txid_current()::text AS x");
      await c.query('COMMIT');
      acked.push(BigInt(rows[0]!.x));
    }
    await c.end();
  })();
  return {
    acked,
    stop: async () => {
      stop = true;
      await run;
    },
  };
}

test('two primaries on the same three nodes: each commit waits for its own quorum; SIGKILL of a node under load loses nothing on either', async (t) => {
  const conf = { synchronous_standby_names: 'ANY 2 (walkeeper_1, walkeeper_2, walkeeper_3)', synchronous_commit: 'on', wal_keep_size: '256MB', autovacuum: 'off' };
  const [pgA, pgB] = await Promise.all([startPostgres({ walSegSizeMB: 1, conf }), startPostgres({ walSegSizeMB: 1, conf })]);
  t.teardown(() => pgA!.destroy());
  t.teardown(() => pgB!.destroy());
  const nodes = [1, 2, 3].map((id) => new NodeProcess({ dataDir: path.join(tmp.path, `two${id}`), nodeId: id }));
  // Ports first: every node's --peers names the others.
  for (const n of nodes) await n.start().then(() => n.stop());
  const streams = { alpha: { upstream: conninfoOf(pgA!) }, beta: { upstream: conninfoOf(pgB!) } };
  for (const n of nodes) {
    const cfg = path.join(tmp.path, `two${n.opts.nodeId}.json`);
    await writeFile(cfg, JSON.stringify({ streams, peers: nodes.filter((m) => m !== n).map((m) => m.httpUrl) }));
    n.opts.extraArgs = ['--config', cfg];
    await n.start();
  }
  t.teardown(() => Promise.all(nodes.map((n) => n.kill())));
  for (const pg of [pgA!, pgB!]) {
    await until(async () => {
      const rep = await pg.query<{ sync_state: string }>("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'");
      return rep.length === 3 && rep.every((r) => r.sync_state === 'quorum');
    }, 'three nodes in each primary\'s quorum', 60_000);
  }

  // Each stream's own quorum: with alpha's ingest stopped on two nodes, alpha's commits wait; beta's do not.
  for (const n of nodes.slice(1)) t.is((await call(n, 'PUT', '/v1/streams/alpha', { token: null, body: {} })).status, 200);
  await pgB!.query('CREATE TABLE b (v int); INSERT INTO b VALUES (1)');
  t.pass("beta's commit completed");
  const c = await pgA!.connect();
  c.on('error', () => undefined);
  t.teardown(() => c.end().catch(() => undefined));
  const [{ pid }] = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
  let done = false;
  const insert = c.query('CREATE TABLE a (v int)').then(() => (done = true));
  await pgA!.waitSyncRep(pid);
  t.false(done, "alpha's commit waits for alpha's quorum");
  await call(nodes[1]!, 'PUT', '/v1/streams/alpha', { token: null, body: streams.alpha });
  await insert;
  t.true(done, 'and completes once a second node follows alpha again');
  await call(nodes[2]!, 'PUT', '/v1/streams/alpha', { token: null, body: streams.alpha });
  await until(async () => (await pgA!.query("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'")).length === 3, "alpha's three nodes back in its quorum", 30_000);

  // Load on both, node 2 SIGKILLed and restarted twice. Every commit a primary acknowledged
  // before a kill must be on the disks of two nodes after it: the restarted one's flush_lsn
  // (what survived the kill) and the others'.
  const from = await Promise.all([pgA!, pgB!].map(async (pg) => {
    await pg.query('CREATE TABLE IF NOT EXISTS tracked (id bigserial primary key, v text)');
    return lsnOf((await pg.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l'))[0]!.l);
  }));
  const script = path.join(tmp.path, 'load.sql');
  await writeFile(script, "INSERT INTO tracked (v) VALUES (repeat('y', 500));\n");
  const benches = [pgA!, pgB!].map((pg) => spawn(pgToolPath('pgbench'), ['-c', '2', '-T', '600', '-n', '-f', script, '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' }));
  for (const b of benches) t.teardown(() => b.kill('SIGKILL'));
  const trackers = [tracker(t, pgA!), tracker(t, pgB!)];
  const checkpoints: { acked: bigint[][]; flushes: bigint[][] }[] = [];
  for (let i = 0; i < 2; i++) {
    await new Promise((r) => setTimeout(r, 700 + Math.floor(Math.random() * 700)));
    const acked = trackers.map((tr) => [...tr.acked]);
    await nodes[1]!.kill();
    await new Promise((r) => setTimeout(r, 300));
    await nodes[1]!.start();
    checkpoints.push({ acked, flushes: [await flushes(nodes, 'alpha'), await flushes(nodes, 'beta')] });
  }
  for (const tr of trackers) await tr.stop();
  for (const b of benches) b.kill('SIGINT');
  t.true(checkpoints.every((cp) => cp.acked.every((a) => a.length > 0)), 'commits happened on both before every kill');
  let checked = 0;
  for (const [i, stream] of ['alpha', 'beta'].entries()) {
    const pg = i === 0 ? pgA! : pgB!;
    await pg.stop();
    const ends = await commitRecordEnds(pg.walDir, SEG, from[i]!);
    for (const [k, cp] of checkpoints.entries()) {
      for (const x of cp.acked[i]!) {
        const e = ends.get(x);
        if (e === undefined) {
          t.fail(`${stream}: no commit record of acknowledged xid ${x}`);
          continue;
        }
        const holders = cp.flushes[i]!.filter((f) => f >= e).length;
        if (holders < 2) t.fail(`${stream}, after kill ${k + 1}: xid ${x} was acknowledged (its commit ends ${formatLsn(e)}) but only ${holders} node(s) hold it: flush_lsn ${cp.flushes[i]!.map(formatLsn).join(', ')}`);
        checked++;
      }
    }
  }
  t.true(checked > 0);
  t.log(`acknowledged commits: alpha ${trackers[0]!.acked.length}, beta ${trackers[1]!.acked.length}; ${checked} checks over ${checkpoints.length} kills`);
});
