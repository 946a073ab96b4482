import net from 'node:net';

// Ports are picked below Linux's ephemeral range (32768–60999 by default):
// a port the kernel hands out for listen(0) is also one it may hand to any
// process's next outgoing connection, so between "free" and the server's own
// listen() it could be taken (EADDRINUSE, seen with three nodes that must
// know each other's ports before any starts). Below the range only another
// listener can collide, and picks are random and remembered per process.
const LOW = 15000;
const HIGH = 32000;
const given = new Set<number>();

function tryListen(host: string, port: number): Promise<net.Server | null> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(null));
    srv.listen({ host, port, exclusive: true }, () => resolve(srv));
  });
}

function closeServer(srv: net.Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

async function reserve(host: string): Promise<net.Server> {
  for (let i = 0; i < 200; i++) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW));
    if (given.has(port)) continue;
    const srv = await tryListen(host, port);
    if (srv) {
      given.add(port);
      return srv;
    }
  }
  throw new Error(`freePort: no free port in ${LOW}-${HIGH} on ${host}`);
}

/** A TCP port that was free on `host` (default 127.0.0.1) a moment ago. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = await reserve(host);
  const port = (srv.address() as net.AddressInfo).port;
  await closeServer(srv);
  return port;
}

/** `n` distinct ports that were free at the same moment. */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) servers.push(await reserve(host));
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map(closeServer));
  }
}
