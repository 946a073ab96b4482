// A fault-injecting TCP forwarder for tests: make an upstream appear late
// (listen on a reserved port only when wanted), cut or refuse connections,
// stall or throttle the bytes in flight, or point new connections elsewhere.
//
//   const proxy = await startTcpProxy({ host: '127.0.0.1', port: up.port });
//   proxy.stall();            // bytes both ways are held (connections stay open)
//   proxy.resume();           // ... and delivered, in order
//   proxy.slow(64 * 1024);    // target -> client at ~64 KiB/s per connection
//   proxy.cut();              // every open connection goes away
//   proxy.refuse(true);       // new connections are reset at once
//   proxy.retarget(other);    // new connections go to `other`
//
// 'up' is client -> target, 'down' is target -> client. Half-closes (FIN)
// are forwarded in order after the bytes before them; an error or reset on
// one side resets the other.

import net from 'node:net';

export type ProxyDirection = 'up' | 'down' | 'both';

export interface TcpProxyTarget {
  host: string;
  port: number;
}

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  /** 'host:port' of the listening side. */
  readonly address: string;
  /** Where new connections go (see retarget()). */
  readonly target: TcpProxyTarget;
  /** TCP connections accepted so far, refused ones included. */
  readonly accepted: number;
  /** Connections reset on arrival because refuse(true) was on. */
  readonly refused: number;
  /** Connections currently forwarded (client side or target side still open). */
  readonly open: number;
  /** Bytes handed on client -> target so far (all connections). */
  readonly bytesUp: number;
  /** Bytes handed on target -> client so far (all connections). */
  readonly bytesDown: number;
  /** Bytes read from the client and not yet handed to the target (stalled or waiting), all connections. */
  readonly heldUp: number;
  /** Bytes read from the target and not yet handed to the client (stalled, throttled or waiting), all connections. */
  readonly heldDown: number;
  /** Which directions are stalled now. */
  readonly stalled: { up: boolean; down: boolean };
  /** Stops forwarding both ways on every current and new connection; bytes (and FINs) are held, connections stay open. */
  stall(): void;
  /** stall() for one direction ('down': target -> client) or both; adds to what is already stalled. */
  stallDirection(dir: ProxyDirection): void;
  /** Forwards again what was held, in order (default: both directions). */
  resume(dir?: ProxyDirection): void;
  /** Throttles target -> client to about this many bytes per second per connection (token bucket); null: unthrottled. Applies at once to current connections. */
  slow(bytesPerSecond: number | null): void;
  /** Destroys every open connection (both sides; held bytes are dropped); keeps listening. 'reset' sends a TCP RST to both peers instead of a FIN. */
  cut(mode?: 'close' | 'reset'): void;
  /** While on, new connections are accepted and reset at once (a host whose port refuses). */
  refuse(on: boolean): void;
  /** New connections go to this target from now on; open ones keep theirs. */
  retarget(target: TcpProxyTarget): void;
  /** Stops listening and destroys every open connection; resolves once both sides of each are closed. Idempotent. */
  close(): Promise<void>;
}

/** Above this many held bytes in one direction of one connection, reading from its source pauses (the rest waits in the kernel). */
const HIGH_WATER = 1 << 20;
const LOW_WATER = HIGH_WATER / 2;

interface Control {
  stalled: { up: boolean; down: boolean };
  rate: number | null;
  bytes: { up: number; down: number };
  held: { up: number; down: number };
}

const noop = (): void => undefined;

/** RST when possible, else a plain destroy; never throws, never leaves an unhandled 'error'. */
function resetSocket(s: net.Socket): void {
  if (s.destroyed) return;
  try {
    if (s.connecting) s.destroy();
    else s.resetAndDestroy();
  } catch {
    s.destroy();
  }
}

/** Token bucket size: 50 ms worth of bytes, at least one byte, at most 64 KiB. */
function burst(rate: number): number {
  return Math.max(1, Math.min(64 * 1024, Math.floor(rate / 20)));
}

/** One direction of one connection: reads from src, holds, writes to dst. */
class Pump {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  /** src sent FIN. */
  ended = false;
  /** dst.end() was called. */
  endSent = false;
  private pausedSrc = false;
  private waitingDrain = false;
  private timer: NodeJS.Timeout | null = null;
  private tokens = 0;
  private refilledAt = 0;
  private bucketRate: number | null = null;

  constructor(
    private readonly dir: 'up' | 'down',
    private readonly src: net.Socket,
    private readonly dst: net.Socket,
    private readonly ctl: Control,
    private readonly dead: () => boolean,
  ) {
    src.on('data', (chunk: Buffer) => this.onData(chunk));
    src.on('end', () => {
      this.ended = true;
      this.flush();
    });
  }

  private onData(chunk: Buffer): void {
    if (this.dead()) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    this.ctl.held[this.dir] += chunk.length;
    if (this.queued >= HIGH_WATER && !this.pausedSrc) {
      this.pausedSrc = true;
      this.src.pause();
    }
    this.flush();
  }

  /** Forgets the held bytes (the connection is gone). */
  drop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.ctl.held[this.dir] -= this.queued;
    this.queued = 0;
    this.queue.length = 0;
  }

  /** The rate changed: start a fresh bucket and look again. */
  rethrottle(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.bucketRate = null;
    this.flush();
  }

  private takeTokens(rate: number, want: number): number {
    const now = performance.now();
    if (this.bucketRate !== rate) {
      this.bucketRate = rate;
      this.tokens = burst(rate);
      this.refilledAt = now;
    }
    this.tokens = Math.min(burst(rate), this.tokens + ((now - this.refilledAt) * rate) / 1000);
    this.refilledAt = now;
    const need = Math.min(burst(rate), want);
    if (this.tokens < need) {
      const ms = Math.max(1, Math.ceil(((need - this.tokens) * 1000) / rate));
      this.timer = setTimeout(() => {
        this.timer = null;
        this.flush();
      }, ms);
      return 0;
    }
    const n = Math.min(Math.floor(this.tokens), want);
    this.tokens -= n;
    return n;
  }

  flush(): void {
    if (this.dead() || this.timer || this.waitingDrain || this.ctl.stalled[this.dir] || this.dst.destroyed) return;
    while (this.queue.length > 0) {
      let chunk = this.queue[0]!;
      const rate = this.dir === 'down' ? this.ctl.rate : null;
      if (rate !== null) {
        const n = this.takeTokens(rate, chunk.length);
        if (n === 0) return;
        if (n < chunk.length) {
          this.queue[0] = chunk.subarray(n);
          chunk = chunk.subarray(0, n);
        } else {
          this.queue.shift();
        }
      } else {
        this.queue.shift();
      }
      this.queued -= chunk.length;
      this.ctl.held[this.dir] -= chunk.length;
      this.ctl.bytes[this.dir] += chunk.length;
      const more = this.dst.write(chunk);
      if (this.pausedSrc && this.queued < LOW_WATER) {
        this.pausedSrc = false;
        this.src.resume();
      }
      if (!more) {
        this.waitingDrain = true;
        this.dst.once('drain', () => {
          this.waitingDrain = false;
          this.flush();
        });
        return;
      }
    }
    if (this.ended && !this.endSent) {
      this.endSent = true;
      this.dst.end();
    }
  }
}

class Connection {
  private dead = false;
  private closedSockets = 0;
  private readonly up: Pump;
  private readonly down: Pump;

  constructor(
    readonly client: net.Socket,
    readonly upstream: net.Socket,
    ctl: Control,
    private readonly onGone: (c: Connection) => void,
  ) {
    const isDead = (): boolean => this.dead;
    let upstreamConnected = false;
    upstream.once('connect', () => (upstreamConnected = true));
    this.up = new Pump('up', client, upstream, ctl, isDead);
    this.down = new Pump('down', upstream, client, ctl, isDead);
    for (const [s, from] of [
      [client, this.up],
      [upstream, this.down],
    ] as const) {
      // An error on one side (RST, refused connect) takes the other side
      // down too. With a plain destroy, not an RST: Node 20's
      // resetAndDestroy() on a socket whose peer already failed leaves a
      // request pending that makes the process spin at exit
      // (Environment::CleanupHandles). Explicit cut('reset') still sends RSTs.
      // A target that refuses the connection still resets the client (nothing is pending on it then).
      s.on('error', () => this.abort(s === upstream && !upstreamConnected ? 'reset' : 'close'));
      s.on('close', (hadError) => {
        // A clean close comes after this side's FIN and our end(); anything
        // else (destroyed, reset) takes the other side along.
        if (hadError || !from.ended) this.abort('close');
        if (++this.closedSockets === 2) this.gone();
      });
    }
  }

  flush(): void {
    this.up.flush();
    this.down.flush();
  }

  rethrottle(): void {
    this.down.rethrottle();
  }

  abort(mode: 'close' | 'reset'): void {
    if (this.dead) return;
    this.dead = true;
    this.up.drop();
    this.down.drop();
    if (mode === 'reset') {
      resetSocket(this.client);
      resetSocket(this.upstream);
    } else {
      this.client.destroy();
      this.upstream.destroy();
    }
  }

  private gone(): void {
    this.dead = true;
    this.up.drop();
    this.down.drop();
    this.onGone(this);
  }
}

/**
 * Listens on host:port (default 127.0.0.1 and a free port) and forwards each
 * connection to `target`.
 */
export async function startTcpProxy(target: TcpProxyTarget, listen: { host?: string; port?: number } = {}): Promise<TcpProxy> {
  const host = listen.host ?? '127.0.0.1';
  let to: TcpProxyTarget = { host: target.host, port: target.port };
  const conns = new Set<Connection>();
  const ctl: Control = { stalled: { up: false, down: false }, rate: null, bytes: { up: 0, down: 0 }, held: { up: 0, down: 0 } };
  let accepted = 0;
  let refused = 0;
  let refusing = false;
  let closing = false;
  let allGone: (() => void) | null = null;
  const gone = (c: Connection): void => {
    conns.delete(c);
    if (conns.size === 0) allGone?.();
  };

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    accepted++;
    client.on('error', noop);
    if (refusing || closing) {
      refused++;
      resetSocket(client);
      return;
    }
    const upstream = net.connect({ host: to.host, port: to.port, allowHalfOpen: true });
    upstream.on('error', noop);
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    conns.add(new Connection(client, upstream, ctl, gone));
  });
  server.on('error', noop);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: listen.port ?? 0, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.unref();
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('startTcpProxy: unexpected address');
  let closed: Promise<void> | null = null;

  const cut = (mode: 'close' | 'reset' = 'close'): void => {
    for (const c of [...conns]) c.abort(mode);
  };
  const setStall = (dir: ProxyDirection, on: boolean): void => {
    if (dir === 'up' || dir === 'both') ctl.stalled.up = on;
    if (dir === 'down' || dir === 'both') ctl.stalled.down = on;
    if (!on) for (const c of conns) c.flush();
  };

  return {
    host,
    port: addr.port,
    address: `${host}:${addr.port}`,
    get target() {
      return { ...to };
    },
    get accepted() {
      return accepted;
    },
    get refused() {
      return refused;
    },
    get open() {
      return conns.size;
    },
    get bytesUp() {
      return ctl.bytes.up;
    },
    get bytesDown() {
      return ctl.bytes.down;
    },
    get heldUp() {
      return ctl.held.up;
    },
    get heldDown() {
      return ctl.held.down;
    },
    get stalled() {
      return { ...ctl.stalled };
    },
    stall() {
      setStall('both', true);
    },
    stallDirection(dir) {
      setStall(dir, true);
    },
    resume(dir = 'both') {
      setStall(dir, false);
    },
    slow(bytesPerSecond) {
      if (bytesPerSecond !== null && !(bytesPerSecond > 0)) throw new RangeError(`slow: bytesPerSecond must be positive or null, got ${bytesPerSecond}`);
      ctl.rate = bytesPerSecond;
      for (const c of conns) c.rethrottle();
    },
    cut,
    refuse(on) {
      refusing = on;
    },
    retarget(t) {
      to = { host: t.host, port: t.port };
    },
    close(): Promise<void> {
      closed ??= (async () => {
        closing = true;
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        const drained = conns.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => (allGone = resolve));
        cut();
        // Sockets destroyed mid-stall can take a while to report 'close';
        // a test's teardown must not hang on them.
        await Promise.race([Promise.all([stopped, drained]), new Promise((r) => setTimeout(r, 2000).unref())]);
      })();
      return closed;
    },
  };
}
