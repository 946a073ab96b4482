import net from 'node:net';

function listenOnce(host: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ host, port: 0, exclusive: true }, () => resolve(srv));
  });
}

function closeServer(srv: net.Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

/** A TCP port that was free on `host` (default 127.0.0.1) a moment ago. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = await listenOnce(host);
  const addr = srv.address();
  await closeServer(srv);
  if (addr === null || typeof addr === 'string') throw new Error('freePort: unexpected address ' + String(addr));
  return addr.port;
}

/** `n` distinct ports that were free at the same moment. */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) servers.push(await listenOnce(host));
    return servers.map((s) => {
      const a = s.address();
      if (a === null || typeof a === 'string') throw new Error('freePorts: unexpected address');
      return a.port;
    });
  } finally {
    await Promise.all(servers.map(closeServer));
  }
}
