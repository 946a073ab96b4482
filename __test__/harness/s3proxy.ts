// An HTTP fault proxy in front of an S3 server: forwards requests as they
// are (SigV4 signs the Host header the client used, which RGW accepts for
// path-style requests), and on demand answers 500 InternalError or 503
// SlowDown, resets the connection in the middle of the request body or of
// the response body, stalls (never answers), or refuses every connection
// (an outage) until told otherwise.

import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type S3FaultKind = '500' | '503' | 'reset-request' | 'reset-response' | 'stall';

export interface S3Fault {
  kind: S3FaultKind;
  /** Which requests it applies to (default: every request). */
  match?: (method: string, path: string) => boolean;
  /** How many matching requests get it (default 1). */
  count?: number;
}

export interface S3Proxy {
  endpoint: string;
  /** Queues a fault for the next matching requests. */
  inject(fault: S3Fault): void;
  /** On: every connection is reset at once. */
  outage(on: boolean): void;
  /** Every request seen, with what was done to it. */
  readonly requests: { method: string; path: string; fault: S3FaultKind | 'outage' | null; status: number | null }[];
  /** Requests currently held by a stall. */
  readonly stalled: number;
  close(): Promise<void>;
}

const xmlError = (code: string, message: string) =>
  `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message><RequestId>fault-proxy</RequestId></Error>`;

export async function startS3Proxy(target: string): Promise<S3Proxy> {
  const t = new URL(target);
  const faults: (S3Fault & { left: number })[] = [];
  const requests: S3Proxy['requests'] = [];
  let down = false;
  const held = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const p = req.url ?? '/';
    const f = faults.find((x) => x.left > 0 && (x.match ? x.match(method, p) : true));
    const entry: S3Proxy['requests'][number] = { method, path: p, fault: f?.kind ?? null, status: null };
    requests.push(entry);
    if (f) f.left--;
    if (f?.kind === '500' || f?.kind === '503') {
      req.resume();
      req.on('end', () => {
        const [code, msg] = f.kind === '500' ? ['InternalError', 'injected'] : ['SlowDown', 'Please reduce your request rate.'];
        entry.status = Number(f.kind);
        res.writeHead(entry.status, { 'content-type': 'application/xml' });
        res.end(xmlError(code, msg));
      });
      return;
    }
    if (f?.kind === 'stall') {
      req.resume();
      held.add(res);
      res.on('close', () => held.delete(res));
      return;
    }
    let seen = 0;
    const up = http.request({ host: t.hostname, port: t.port, method, path: p, headers: req.headers }, (ur) => {
      entry.status = ur.statusCode ?? null;
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      if (f?.kind === 'reset-response') {
        let sent = 0;
        ur.on('data', (b: Buffer) => {
          if (sent === 0 && b.length > 1) res.write(b.subarray(0, b.length >> 1));
          sent += b.length;
          res.socket?.destroy();
          ur.destroy();
        });
        ur.on('end', () => res.socket?.destroy());
        return;
      }
      ur.pipe(res);
    });
    up.on('error', () => res.socket?.destroy());
    req.on('data', (b: Buffer) => {
      seen += b.length;
      if (f?.kind === 'reset-request' && seen > 0) {
        // Half the body went out: the server never gets the rest, the client sees a reset.
        up.destroy();
        req.socket.destroy();
        return;
      }
      up.write(b);
    });
    req.on('end', () => {
      if (f?.kind === 'reset-request' && seen === 0) {
        up.destroy();
        req.socket.destroy();
        return;
      }
      up.end();
    });
  });
  server.on('connection', (sock) => {
    if (down) {
      requests.push({ method: '-', path: '-', fault: 'outage', status: null });
      sock.destroy();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    inject(fault) {
      faults.push({ ...fault, left: fault.count ?? 1 });
    },
    outage(on) {
      down = on;
      if (on) server.closeAllConnections();
    },
    requests,
    get stalled() {
      return held.size;
    },
    async close() {
      for (const r of held) r.socket?.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
