/**
 * One seeded run: three nodes following a primary, one receiver following
 * the nodes, object storage in some runs, and a fault schedule drawn from
 * the seed — node crashes (unfsynced writes lost), partitions, slow hosts,
 * lost connections, the primary away, full disks, object storage erring.
 * The invariants of docs/simulation.md are checked after every event.
 */
import { formatLsn, type Lsn } from '../ts/lsn.js';
import { ObjectStore, wrongBytes } from './disk.js';
import { Primary, Receiver } from './actors.js';
import { covers, segName, SimNode, type SimConfig, type Truth } from './node.js';
import { Net, World } from './world.js';

export interface RunOptions {
  seed: number;
  virtualMs: number;
}

export interface Fault {
  at: number;
  kind: 'crash' | 'partition' | 'isolate' | 'slow' | 'primary' | 'diskfull' | 's3down' | 'reset';
  target: string;
  other?: string;
  ms: number;
}

export interface RunResult {
  seed: number;
  ok: boolean;
  violation: string | null;
  digest: string;
  events: number;
  schedule: Fault[];
  recent: string[];
  stats: { walBytes: bigint; delivered: bigint; switches: number; crashes: number; commitBehind: number; offload: boolean; maxCommit: Lsn };
}

const START: Lsn = 0x1000000n;
const HEAL_MS = 35_000;
/** What must be through the cluster at the end: the upstream's WAL as of this long before it. */
const LIVENESS_LAG_MS = 5_000;
const OFFLOAD_LAG_MS = 15_000;

export function describeFault(f: Fault): string {
  const what = f.other ? `${f.target}<->${f.other}` : f.target;
  return `${(f.at / 1000).toFixed(3).padStart(8)} s  ${f.kind.padEnd(9)} ${what.padEnd(8)} for ${(f.ms / 1000).toFixed(3)} s`;
}

export async function runSeed(opts: RunOptions): Promise<RunResult> {
  const world = new World(opts.seed);
  const r = world.rng;
  const net = new Net(world);
  const nodes = 3;
  const cfg: SimConfig = {
    nodes,
    segmentSize: 64n * 1024n,
    keepBytes: BigInt(r.int(0, 4)) * 64n * 1024n,
    offload: r.chance(0.5),
    replicaWindowMs: 20_000,
    retentionEveryMs: 1000,
  };
  const truth: Truth = { maxReportedCommit: START, reportedBy: new Map() };
  const store = new ObjectStore(world);
  const primary = new Primary(net, START);
  const sim: SimNode[] = [];
  for (let i = 1; i <= nodes; i++) {
    const n = new SimNode(i, world, net, cfg, store, truth, primary.host, START);
    n.firstLsn = START;
    sim.push(n);
  }
  const rx = new Receiver(world, net, truth, sim.map((n) => n.host), START, cfg.segmentSize);
  // The ground truth of a majority, not the product's quorumSize: the invariant must not share what it checks.
  const q = Math.floor(nodes / 2) + 1;

  // The invariants every step must keep.
  world.invariant(() => {
    const c = truth.maxReportedCommit;
    let held = 0;
    for (const n of sim) if (n.disk.durable >= c) held++;
    return held >= q ? null : `commit_lsn ${formatLsn(c)} was published, but only ${held} of ${nodes} nodes hold WAL up to it durably (quorum ${q})`;
  });
  world.invariant(() => {
    for (const n of sim) {
      const s = n.stream;
      if (s && s.commitLsn > s.flushLsn) return `${n.host}: commit_lsn ${formatLsn(s.commitLsn)} above its flush_lsn ${formatLsn(s.flushLsn)}`;
      if (s && s.flushLsn > n.disk.durable) return `${n.host}: flush_lsn ${formatLsn(s.flushLsn)} above what its disk holds durably (${formatLsn(n.disk.durable)})`;
    }
    return null;
  });
  world.invariant(() => {
    // All WAL is the upstream's, so two nodes holding different bytes anywhere shows as a node holding bytes that are not.
    for (const n of sim) {
      const bad = wrongBytes(n.disk.ext);
      if (bad !== null) return `${n.host} holds bytes at ${formatLsn(bad)} that differ from the upstream's (and from every other node's)`;
    }
    return null;
  });
  const lifeStart = new Map<SimNode, number>();
  for (const n of sim) {
    n.removed = (node, from, to) => {
      const s = node.stream!;
      if (to > s.commitLsn) world.fail(`${node.host}: retention removed WAL up to ${formatLsn(to)}, above commit_lsn ${formatLsn(s.commitLsn)}`);
      if (cfg.offload) {
        for (let seg = from - (from % cfg.segmentSize); seg < to; seg += cfg.segmentSize) {
          const obj = store.objects.get(segName(seg));
          if (!obj || !covers(obj, seg, seg + cfg.segmentSize)) world.fail(`${node.host}: retention removed ${segName(seg)}, which is not in object storage`);
          else if (wrongBytes(obj) !== null) world.fail(`${node.host}: object ${segName(seg)} does not hold the node's bytes`);
        }
      }
      // The receiver streamed from this node in its present life, and is there still or left within the replica window.
      const on = rx.lastOn.get(node.host);
      const needs = on !== undefined && on.since >= (lifeStart.get(node) ?? 0) && (on.ended === null || world.now - on.ended <= cfg.replicaWindowMs);
      const next = rx.handout.next ?? START;
      if (needs && next < to && !cfg.offload) world.fail(`${node.host}: retention removed WAL up to ${formatLsn(to)} that the receiver (at ${formatLsn(next)}) still needs`);
    };
  }

  // The fault schedule, drawn before the run starts. None begins in the
  // last 35 s and none lasts over 12 s: the cluster has healed 23 s before
  // the end, and every backoff (at most 15 s) has run out 8 s before it.
  const schedule: Fault[] = [];
  const faultEnd = Math.max(1000, opts.virtualMs - HEAL_MS);
  const count = r.int(4, 4 + Math.floor(faultEnd / 1500));
  const hosts = sim.map((n) => n.host);
  for (let i = 0; i < count; i++) {
    const at = r.int(500, faultEnd);
    const kind = r.pick(['crash', 'crash', 'partition', 'isolate', 'slow', 'primary', 'primary', 'diskfull', 's3down', 'reset', 'reset'] as const);
    const target = r.pick(hosts);
    const ms = kind === 'reset' ? 0 : r.chance(0.2) ? r.int(3000, 12_000) : r.int(100, 3000);
    const f: Fault = { at, kind, target, ms };
    if (kind === 'partition') f.other = r.pick([...hosts.filter((h) => h !== target), 'pg', 'rx']);
    if (kind === 'primary') f.target = 'pg';
    if (kind === 's3down') f.target = 's3';
    schedule.push(f);
  }
  schedule.sort((a, b) => a.at - b.at);
  const byHost = new Map(sim.map((n) => [n.host, n]));
  for (const f of schedule) {
    world.at(f.at, `fault ${f.kind} ${f.target}${f.other ? '<->' + f.other : ''}`, () => {
      const n = byHost.get(f.target);
      switch (f.kind) {
        case 'crash':
          if (!n!.up) return;
          n!.crash();
          world.after(f.ms, `restart ${n!.host}`, () => {
            lifeStart.set(n!, world.now);
            n!.start();
          });
          return;
        case 'partition':
          net.cut(f.target, f.other!, world.now + f.ms);
          return;
        case 'isolate':
          for (const h of [...hosts, 'pg', 'rx']) if (h !== f.target) net.cut(f.target, h, world.now + f.ms);
          return;
        case 'slow':
          net.setSlow(f.target, r.int(10, 200));
          world.after(f.ms, `fast ${f.target}`, () => net.setSlow(f.target, 1));
          return;
        case 'primary':
          if (!primary.up) return;
          primary.crash();
          world.after(f.ms, 'primary restart', () => primary.start());
          return;
        case 'diskfull':
          n!.disk.full = true;
          world.after(f.ms, `disk space ${f.target}`, () => (n!.disk.full = false));
          return;
        case 's3down':
          store.downUntil = world.now + f.ms;
          return;
        case 'reset': {
          const peers = [...hosts, 'pg', 'rx'].filter((h) => h !== f.target);
          for (const c of net.between(f.target, r.pick(peers))) c.kill('connection reset', [r.int(0, 50), r.int(0, 50)]);
          return;
        }
      }
    });
  }

  // The primary's load: bursts of WAL, and quiet spells.
  const write = (): void => {
    const burst = r.chance(0.1);
    primary.write(burst ? r.int(16_000, 200_000) : r.int(40, 8000));
    world.after(r.chance(0.05) ? r.int(200, 2000) : r.int(5, 60), 'pg writes', write);
  };

  primary.start();
  for (const n of sim) {
    lifeStart.set(n, 0);
    n.start();
  }
  rx.start();
  world.after(1, 'pg writes', write);
  // Liveness, once healed: WAL the primary wrote 5 s before the end is on every node and past commit_lsn, and the receiver has it.
  let wanted: Lsn = START;
  world.at(opts.virtualMs - LIVENESS_LAG_MS, 'liveness mark', () => (wanted = primary.end));
  // Offload may wait out one timed-out put (5 s) and then catch up on the segments behind it.
  let wantedUp: Lsn = START;
  world.at(opts.virtualMs - OFFLOAD_LAG_MS, 'offload liveness mark', () => (wantedUp = primary.end));
  await world.run(opts.virtualMs);
  if (world.violation === null && opts.virtualMs >= HEAL_MS + 10_000) {
    for (const n of sim) {
      const c = n.stream?.commitLsn ?? null;
      if (c === null) world.fail(`${n.host} is not up at the end, though the cluster healed`);
      else if (c < wanted) world.fail(`${n.host} is stuck: commit_lsn ${formatLsn(c)} at the end, below ${formatLsn(wanted)} written ${LIVENESS_LAG_MS / 1000} s before`);
      else if (n.stream!.reportedCommitLsn === null) world.fail(`${n.host} does not know its commit_lsn at the end (it waits for a quorum at ${formatLsn(n.stream!.commit.waitingFor!)})`);
      else if (!n.ingesting) world.fail(`${n.host} does not stream from the upstream at the end, though the cluster healed (writer lock: ${n.life!.lock.heldBy ?? 'free'})`);
    }
    // Without object storage, a receiver that was away from every node longer than their horizons (replica window, wal_keep_size; a crash forgets its replicas) has lost its place, as pg_receivewal without a slot: only with the archive must it catch up.
    if (world.violation === null && cfg.offload) {
      let backup: Lsn = 0n;
      for (const n of sim) if (n.backupLsn !== null && n.backupLsn > backup) backup = n.backupLsn;
      const need = wantedUp - (wantedUp % cfg.segmentSize);
      if (backup < need) world.fail(`offload is stuck: backup_lsn ${formatLsn(backup)} at the end, below ${formatLsn(need)} (the last whole segment written ${OFFLOAD_LAG_MS / 1000} s before)`);
    }
    if (world.violation === null && cfg.offload && rx.delivered < wanted) world.fail(`the receiver is stuck at ${formatLsn(rx.delivered)}, below ${formatLsn(wanted)} written ${LIVENESS_LAG_MS / 1000} s before the end`);
  }

  return {
    seed: opts.seed,
    ok: world.violation === null,
    violation: world.violation,
    digest: world.digest(),
    events: world.events,
    schedule,
    recent: world.recent,
    stats: {
      walBytes: primary.end - START,
      delivered: rx.delivered - START,
      switches: rx.switches,
      crashes: sim.reduce((a, n) => a + n.crashes, 0),
      commitBehind: sim.reduce((a, n) => a + n.commitBehind, 0),
      offload: cfg.offload,
      maxCommit: truth.maxReportedCommit,
    },
  };
}
