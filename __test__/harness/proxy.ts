// A plain TCP forwarder for tests: make an upstream appear late (listen on a
// reserved port only when wanted), or cut every connection through it.

import net from 'node:net';

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Destroys every open connection (both sides); keeps listening. */
  cut(): void;
  /** Stops listening and destroys every open connection. Idempotent. */
  close(): Promise<void>;
}

/**
 * Listens on host:port (default 127.0.0.1 and a free port) and forwards each
 * connection to `target`.
 */
export async function startTcpProxy(target: { host: string; port: number }, listen: { host?: string; port?: number } = {}): Promise<TcpProxy> {
  const host = listen.host ?? '127.0.0.1';
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted++;
    const upstream = net.connect({ host: target.host, port: target.port });
    sockets.add(client);
    sockets.add(upstream);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: listen.port ?? 0, exclusive: true }, () => resolve());
  });
  server.unref();
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('startTcpProxy: unexpected address');
  let closed: Promise<void> | null = null;
  const cut = (): void => {
    for (const s of sockets) s.destroy();
    sockets.clear();
  };
  return {
    host,
    port: addr.port,
    get accepted() {
      return accepted;
    },
    cut,
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        cut();
      });
      return closed;
    },
  };
}
