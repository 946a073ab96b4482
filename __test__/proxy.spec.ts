// The fault-injecting TCP proxy (harness/proxy.ts), checked with plain
// node:net servers: it forwards bytes and half-closes in order, and stall,
// cut, refuse, slow and retarget do what they say.

import { randomBytes } from 'node:crypto';
import net from 'node:net';

import test, { type ExecutionContext } from 'ava';

import { startTcpProxy, type TcpProxy } from './harness/proxy.js';
import { until } from './harness/wait.js';

interface Server {
  port: number;
  /** Bytes each accepted connection received, by connection (1-based order). */
  received: Buffer[];
  ended: boolean[];
  close(): Promise<void>;
}

/**
 * A TCP server for the tests. Default: echo (everything back, FIN after FIN).
 * `greeting`: sends these bytes on connect, then FIN. `prefix`: echo with this
 * prefix on each connection's first reply (tells servers apart).
 */
async function server(t: ExecutionContext, opts: { greeting?: Buffer; prefix?: string } = {}): Promise<Server> {
  const sockets = new Set<net.Socket>();
  const received: Buffer[] = [];
  const ended: boolean[] = [];
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    const i = received.length;
    received.push(Buffer.alloc(0));
    ended.push(false);
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    if (opts.greeting) {
      s.end(opts.greeting);
      s.resume();
      return;
    }
    let first = true;
    s.on('data', (d: Buffer) => {
      received[i] = Buffer.concat([received[i]!, d]);
      if (first && opts.prefix) s.write(opts.prefix);
      first = false;
      s.write(d);
    });
    s.on('end', () => {
      ended[i] = true;
      s.end();
    });
  });
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const res: Server = {
    port: (srv.address() as net.AddressInfo).port,
    received,
    ended,
    close: () =>
      new Promise<void>((ok) => {
        for (const s of sockets) s.destroy();
        srv.close(() => ok());
      }),
  };
  t.teardown(() => res.close());
  return res;
}

async function proxyTo(t: ExecutionContext, s: { port: number }): Promise<TcpProxy> {
  const p = await startTcpProxy({ host: '127.0.0.1', port: s.port });
  t.teardown(() => p.close());
  return p;
}

interface Client {
  socket: net.Socket;
  data(): Buffer;
  /** Resolves when the client's socket closed: with the error, if any. */
  closed: Promise<Error | null>;
  /** Resolves when the server's FIN arrived. */
  ended: Promise<void>;
  /** Resolves once at least n bytes arrived. */
  atLeast(n: number, ms?: number): Promise<void>;
}

async function client(t: ExecutionContext, port: number): Promise<Client> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  let size = 0;
  let error: Error | null = null;
  socket.on('data', (d: Buffer) => {
    chunks.push(d);
    size += d.length;
  });
  socket.on('error', (e) => (error = e));
  const closed = new Promise<Error | null>((ok) => socket.on('close', () => ok(error)));
  const ended = new Promise<void>((ok) => socket.on('end', ok));
  t.teardown(() => socket.destroy());
  await new Promise<void>((ok, fail) => {
    socket.once('connect', ok);
    socket.once('error', fail);
  });
  return {
    socket,
    data: () => Buffer.concat(chunks),
    closed,
    ended,
    atLeast: (n, ms) => until(() => size >= n, `${n} bytes (have ${size})`, ms),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('forwards both ways (8 MiB through an echo server, in order), counts bytes and connections, forwards FIN', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  t.is(p.address, `127.0.0.1:${p.port}`);
  t.deepEqual(p.target, { host: '127.0.0.1', port: echo.port });
  const c = await client(t, p.port);
  const payload = randomBytes(8 << 20);
  c.socket.end(payload);
  await c.ended;
  t.true(c.data().equals(payload));
  t.true(echo.received[0]!.equals(payload));
  t.true(echo.ended[0], 'the client FIN reached the server');
  t.is(p.bytesUp, payload.length);
  t.is(p.bytesDown, payload.length);
  t.is(await c.closed, null);
  t.is(p.accepted, 1);
  await until(() => p.open === 0, 'the connection to go');
  t.is(p.heldUp + p.heldDown, 0);
});

test('stall() holds the bytes of current and new connections, both ways, FIN included; resume() delivers them in order', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  const c1 = await client(t, p.port);
  c1.socket.write('before ');
  await c1.atLeast(7);
  p.stall();
  t.deepEqual(p.stalled, { up: true, down: true });
  const parts = [randomBytes(100_000), Buffer.from(' middle '), randomBytes(300_000)];
  for (const b of parts) c1.socket.write(b);
  c1.socket.end();
  const c2 = await client(t, p.port);
  c2.socket.write('second connection');

  const total = parts.reduce((n, b) => n + b.length, 0);
  await until(() => p.heldUp === total + 17, 'everything held');
  await sleep(200);
  t.is(c1.data().toString(), 'before ');
  t.is(echo.received[0]!.length, 7, 'nothing went up');
  t.false(echo.ended[0]!, 'the FIN is held too');
  t.is(c2.data().length, 0);
  t.is(p.bytesUp, 7);
  t.is(p.open, 2, 'stalled connections stay open');

  p.resume();
  await c1.ended;
  t.true(c1.data().equals(Buffer.concat([Buffer.from('before '), ...parts])));
  await c2.atLeast(17);
  t.is(c2.data().toString(), 'second connection');
  t.is(p.heldUp + p.heldDown, 0);
});

test('stallDirection: down holds only target -> client, up holds only client -> target; resume(dir) releases one', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  const c = await client(t, p.port);

  p.stallDirection('down');
  t.deepEqual(p.stalled, { up: false, down: true });
  c.socket.write('ping');
  await until(() => echo.received[0]?.toString() === 'ping', 'the server to get ping');
  await until(() => p.heldDown === 4, 'the echo held');
  t.is(c.data().length, 0);
  p.resume('down');
  await c.atLeast(4);
  t.is(c.data().toString(), 'ping');

  p.stallDirection('up');
  p.stallDirection('down');
  p.resume('down');
  t.deepEqual(p.stalled, { up: true, down: false });
  c.socket.write('pong');
  await until(() => p.heldUp === 4, 'pong held');
  await sleep(100);
  t.is(echo.received[0]!.toString(), 'ping');
  p.resume();
  await c.atLeast(8);
  t.is(c.data().toString(), 'pingpong');
});

test('cut() closes every open connection and keeps listening; cut("reset") resets them', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  const a = await client(t, p.port);
  const b = await client(t, p.port);
  await until(() => p.open === 2, 'two connections');
  p.stall();
  a.socket.write('held, then dropped');
  await until(() => p.heldUp > 0, 'bytes held');
  p.cut();
  await a.closed;
  await b.closed;
  await until(() => p.open === 0, 'no open connections');
  t.is(p.heldUp, 0, 'held bytes are dropped');
  p.resume();

  const c = await client(t, p.port);
  c.socket.write('still here');
  await c.atLeast(10);
  t.is(c.data().toString(), 'still here');
  p.cut('reset');
  const err = await c.closed;
  t.is((err as NodeJS.ErrnoException | null)?.code, 'ECONNRESET');
  t.is(p.accepted, 3);
});

test('refuse(true) resets new connections at once (open ones go on); refuse(false) accepts again', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  const old = await client(t, p.port);
  p.refuse(true);
  const r = net.connect({ host: '127.0.0.1', port: p.port });
  let got = 0;
  r.on('data', (d: Buffer) => (got += d.length));
  const err = await new Promise<Error | null>((ok) => {
    let e: Error | null = null;
    r.on('error', (x) => (e = x));
    r.on('close', () => ok(e));
  });
  t.is((err as NodeJS.ErrnoException | null)?.code, 'ECONNRESET');
  t.is(got, 0);
  t.is(p.refused, 1);
  t.is(echo.received.length, 1, 'a refused connection never reaches the target');
  old.socket.write('old one works');
  await old.atLeast(13);

  p.refuse(false);
  const c = await client(t, p.port);
  c.socket.write('hi');
  await c.atLeast(2);
  t.is(c.data().toString(), 'hi');
  t.is(p.accepted, 3);
});

test('slow() throttles target -> client to roughly its rate, far slower than unthrottled, everything in order; slow(null) lifts it at once', async (t) => {
  const payload = randomBytes(128 * 1024);
  const src = await server(t, { greeting: payload });
  const p = await proxyTo(t, src);

  let t0 = performance.now();
  const fast = await client(t, p.port);
  await fast.ended;
  const unthrottled = performance.now() - t0;
  t.true(fast.data().equals(payload));

  p.slow(128 * 1024); // about a second for 128 KiB
  t0 = performance.now();
  const slow = await client(t, p.port);
  await slow.ended;
  const throttled = performance.now() - t0;
  t.log(`unthrottled ${unthrottled.toFixed(1)} ms, at 128 KiB/s ${throttled.toFixed(1)} ms`);
  t.true(slow.data().equals(payload));
  t.true(throttled > 500, `${throttled} ms`);
  t.true(throttled > 5 * unthrottled, `${throttled} ms vs ${unthrottled} ms`);
  t.is(p.bytesUp, 0);
  t.is(p.bytesDown, 2 * payload.length);

  // 1 KiB/s would take two minutes: lift it midway.
  p.slow(1024);
  const crawl = await client(t, p.port);
  await sleep(300);
  t.true(crawl.data().length < 16 * 1024, `${crawl.data().length} bytes in 300 ms at 1 KiB/s`);
  t.true(p.heldDown > 0);
  p.slow(null);
  await crawl.ended;
  t.true(crawl.data().equals(payload));
  t.throws(() => p.slow(0), { instanceOf: RangeError });
});

test('retarget() sends new connections to the new target; open ones stay where they are', async (t) => {
  const a = await server(t, { prefix: 'A:' });
  const b = await server(t, { prefix: 'B:' });
  const p = await proxyTo(t, a);
  const c1 = await client(t, p.port);
  c1.socket.write('1');
  await c1.atLeast(3);
  p.retarget({ host: '127.0.0.1', port: b.port });
  t.deepEqual(p.target, { host: '127.0.0.1', port: b.port });
  const c2 = await client(t, p.port);
  c2.socket.write('2');
  await c2.atLeast(3);
  c1.socket.write('3');
  await c1.atLeast(4);
  t.is(c1.data().toString(), 'A:13');
  t.is(c2.data().toString(), 'B:2');
});

test('a target that refuses resets the client; close() ends everything, stops listening, and is idempotent', async (t) => {
  const echo = await server(t);
  const p = await proxyTo(t, echo);
  const live = await client(t, p.port);
  const gone = await server(t);
  await gone.close();
  p.retarget({ host: '127.0.0.1', port: gone.port });
  const c = await client(t, p.port);
  t.is(((await c.closed) as NodeJS.ErrnoException | null)?.code, 'ECONNRESET');
  await until(() => p.open === 1, 'only the live connection');

  p.stall();
  live.socket.write('x');
  await Promise.all([p.close(), p.close()]);
  await live.closed;
  t.is(p.open, 0);
  const e = await t.throwsAsync(client(t, p.port));
  t.is((e as NodeJS.ErrnoException).code, 'ECONNREFUSED');
});
