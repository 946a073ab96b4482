/**
 * Simulated time and network. Time moves only here: the run is a queue of
 * events ordered by (virtual ms, insertion order), each a plain callback;
 * nothing waits on a real clock or socket. The network is connections
 * between hosts with a delay per message (FIFO per direction, as TCP), lost
 * connections, partitions between hosts and slow hosts. Every event that
 * runs is logged into a SHA-256 digest, so a replay can prove it took the
 * same path.
 */
import { createHash, type Hash } from 'node:crypto';

import { Prng } from './prng.js';

interface Ev {
  at: number;
  seq: number;
  label: string;
  fn: () => void;
  dead: boolean;
}

export interface Timer {
  cancel(): void;
}

export class World {
  now = 0;
  readonly rng: Prng;
  private heap: Ev[] = [];
  private seq = 0;
  private readonly hash: Hash = createHash('sha256');
  /** The last events, printed with a failure. */
  readonly recent: string[] = [];
  events = 0;
  violation: string | null = null;
  /** Set by code that started a promise chain (the writer lock): the loop lets microtasks run before the next event. */
  asyncPending = false;
  private readonly checks: (() => string | null)[] = [];

  constructor(readonly seed: number) {
    this.rng = new Prng(seed);
  }

  at(time: number, label: string, fn: () => void): Timer {
    const ev: Ev = { at: Math.max(time, this.now), seq: this.seq++, label, fn, dead: false };
    this.push(ev);
    return { cancel: () => (ev.dead = true) };
  }

  after(ms: number, label: string, fn: () => void): Timer {
    return this.at(this.now + ms, label, fn);
  }

  /** Registers an invariant, checked after every event; returns why it is broken, or null. */
  invariant(check: () => string | null): void {
    this.checks.push(check);
  }

  /** Records a broken invariant (the run stops after this event). */
  fail(why: string): void {
    this.violation ??= `at ${(this.now / 1000).toFixed(4)} s: ${why}`;
  }

  /** Something that is part of the run's path but not an event (a decision), into the digest. */
  note(text: string): void {
    this.hash.update(text);
    this.hash.update('\n');
    this.recent.push(`${(this.now / 1000).toFixed(4).padStart(9)} s  ${text}`);
    if (this.recent.length > 60) this.recent.shift();
  }

  digest(): string {
    return this.hash.copy().digest('hex');
  }

  async run(untilMs: number): Promise<void> {
    while (this.heap.length > 0 && this.violation === null) {
      const ev = this.pop();
      if (ev.dead) continue;
      if (ev.at > untilMs) break;
      this.now = ev.at;
      this.events++;
      this.note(ev.label);
      try {
        ev.fn();
      } catch (err) {
        this.fail(`exception in "${ev.label}": ${(err as Error).stack ?? String(err)}`);
      }
      if (this.asyncPending) {
        this.asyncPending = false;
        // setImmediate runs after every microtask queued so far, and those they queue.
        await new Promise<void>((r) => setImmediate(r));
      }
      for (const c of this.checks) {
        const why = c();
        if (why !== null) {
          this.fail(why);
          break;
        }
      }
    }
    if (this.violation === null) this.now = untilMs;
  }

  private push(ev: Ev): void {
    const h = this.heap;
    h.push(ev);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): Ev {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function before(a: Ev, b: Ev): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

/** One side of a connection: what it is told. */
export interface Side<M> {
  message(m: M): void;
  closed(why: string): void;
}

export class Conn<M> {
  open = true;
  private lastAt = [0, 0];
  /** Handlers: [0] the side that connected, [1] the side that accepted. */
  sides: [Side<M> | null, Side<M> | null] = [null, null];

  constructor(
    private readonly net: Net,
    readonly id: number,
    readonly hosts: [string, string],
    readonly what: string,
  ) {}

  /** Sends from side `from` (0 or 1); lost if the connection dies first. */
  send(from: 0 | 1, m: M): void {
    if (!this.open) return;
    const to = (1 - from) as 0 | 1;
    const w = this.net.world;
    const at = Math.max(this.lastAt[to]!, w.now + this.net.delay(this.hosts[from], this.hosts[to]));
    this.lastAt[to] = at;
    w.at(at, `msg ${this.what}#${this.id} ${this.hosts[from]}>${this.hosts[to]}`, () => {
      if (!this.open) return;
      this.sides[to]?.message(m);
    });
  }

  /** Closes from side `from`: the other side hears after a delay. */
  close(from: 0 | 1, why: string): void {
    if (!this.open) return;
    this.open = false;
    this.net.forget(this);
    const to = (1 - from) as 0 | 1;
    const other = this.sides[to];
    const w = this.net.world;
    w.after(this.net.delay(this.hosts[from], this.hosts[to]), `close ${this.what}#${this.id} ${this.hosts[to]}`, () => other?.closed(why));
  }

  /** Dies under both sides (a partition, a reset): each hears after its own delay. */
  kill(why: string, heardAfter: [number, number]): void {
    if (!this.open) return;
    this.open = false;
    this.net.forget(this);
    const w = this.net.world;
    for (const i of [0, 1] as const) {
      const s = this.sides[i];
      if (s) w.after(heardAfter[i], `lost ${this.what}#${this.id} ${this.hosts[i]}`, () => s.closed(why));
    }
  }

  /** Gone on one side without a word (that host crashed): the other hears after `after`. */
  vanish(host: string, after: number): void {
    if (!this.open) return;
    this.open = false;
    this.net.forget(this);
    const i = this.hosts[0] === host ? 1 : 0;
    const s = this.sides[i];
    if (s) this.net.world.after(after, `lost ${this.what}#${this.id} ${this.hosts[i]}`, () => s.closed(`${host} went away`));
  }
}

export type Accept = (conn: Conn<unknown>, what: string) => Side<unknown> | null;

export class Net {
  private nextId = 1;
  private readonly conns = new Set<Conn<unknown>>();
  private readonly listeners = new Map<string, Accept>();
  private readonly cuts = new Map<string, number>();
  private readonly slow = new Map<string, number>();

  constructor(readonly world: World) {}

  /** Base one-way delay (ms) between two hosts: 0.05–0.5 ms, now and then 20 ms more, times the slower host's factor. */
  delay(a: string, b: string): number {
    const r = this.world.rng;
    let d = 0.05 + r.float() * 0.45;
    if (r.chance(0.01)) d += r.float() * 20;
    return d * Math.max(this.slow.get(a) ?? 1, this.slow.get(b) ?? 1);
  }

  listen(host: string, accept: Accept | null): void {
    if (accept) this.listeners.set(host, accept);
    else this.listeners.delete(host);
  }

  reachable(a: string, b: string): boolean {
    return (this.cuts.get(pair(a, b)) ?? 0) <= this.world.now;
  }

  /**
   * Opens a connection from `from` to `to`. The client side is given at
   * once; it hears `opened` or `closed` later.
   */
  connect<M>(from: string, to: string, what: string, client: Side<M> & { opened(): void }): Conn<M> {
    const c = new Conn<M>(this, this.nextId++, [from, to], what);
    c.sides[0] = client;
    this.conns.add(c as Conn<unknown>);
    const w = this.world;
    const d = this.delay(from, to);
    w.after(d, `connect ${what}#${c.id} ${from}>${to}`, () => {
      if (!c.open) return;
      const accept = this.listeners.get(to);
      const server = this.reachable(from, to) && accept ? accept(c as Conn<unknown>, what) : null;
      if (!server) {
        // Refused (a host down answers with a reset; a cut path times out).
        c.kill(this.reachable(from, to) ? 'connection refused' : 'connection timed out', [this.reachable(from, to) ? d : 1000 + w.rng.int(0, 2000), 0]);
        return;
      }
      c.sides[1] = server as Side<M>;
      w.after(d, `opened ${what}#${c.id}`, () => {
        if (c.open) client.opened();
      });
    });
    return c;
  }

  forget(c: Conn<unknown>): void {
    this.conns.delete(c);
  }

  /** The path between a and b is cut until `untilMs`; connections over it die, heard within 0.1–3 s. */
  cut(a: string, b: string, untilMs: number): void {
    this.cuts.set(pair(a, b), untilMs);
    const r = this.world.rng;
    for (const c of [...this.conns]) {
      if (pair(c.hosts[0], c.hosts[1]) === pair(a, b)) c.kill('network partition', [r.int(100, 3000), r.int(100, 3000)]);
    }
  }

  setSlow(host: string, factor: number): void {
    if (factor === 1) this.slow.delete(host);
    else this.slow.set(host, factor);
  }

  /** A host crashed: its connections vanish; the other sides hear within 0–2 s (a reset, or a timeout). */
  crash(host: string): void {
    this.listeners.delete(host);
    const r = this.world.rng;
    for (const c of [...this.conns]) if (c.hosts[0] === host || c.hosts[1] === host) c.vanish(host, r.chance(0.5) ? 1 : r.int(100, 2000));
  }

  /** Every connection between two hosts, from either side. */
  between(a: string, b: string): Conn<unknown>[] {
    return [...this.conns].filter((c) => pair(c.hosts[0], c.hosts[1]) === pair(a, b));
  }
}

function pair(a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}
