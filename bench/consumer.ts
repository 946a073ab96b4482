/**
 * A minimal physical-replication consumer that discards the WAL it
 * receives: the same code measures PostgreSQL's walsender and a walkeeper
 * node. It frames messages by hand (no per-message objects), counts
 * XLogData bytes, answers keepalives that ask for a reply, and stops once
 * it has received up to `end`.
 *
 *   tsx bench/consumer.ts <host> <port> <start X/X> <end X/X> [application_name]
 * prints one JSON line: {"bytes":…, "seconds":…}
 */
import net from 'node:net';

import { formatLsn, parseLsn } from '../ts/lsn.js';
import { frontend } from '../ts/protocol/serializer.js';
import { standbyStatus } from '../ts/protocol/replication.js';

export interface ConsumeResult {
  bytes: number;
  seconds: number;
  /** When streaming started and ended (ms since the epoch, for aggregating over processes). */
  startedAt: number;
  endedAt: number;
  /** CPU (user + system) this process used while streaming, in seconds. */
  cpuSeconds: number;
  userSeconds: number;
  systemSeconds: number;
  /** Socket reads it took (bytes / reads: how full the receive queue was when it read). */
  reads: number;
}

/**
 * Reads into one reused buffer (net's `onread`) and never copies WAL: the
 * parser keeps only message headers and skips payloads, so that the
 * consumer is not what limits the measurement.
 */
export function consume(host: string, port: number, start: bigint, end: bigint, appName = 'bench-consumer', gate?: () => Promise<void>): Promise<ConsumeResult> {
  return new Promise((resolve, reject) => {
    let phase: 'startup' | 'copy' | 'done' = 'startup';
    let received = start;
    let bytes = 0;
    let reads = 0;
    let t0 = 0n;
    let startedAt = 0;
    let cpu0 = process.cpuUsage();
    // Message state: the 5-byte type+length header, then the body.
    const head = Buffer.alloc(5 + 64);
    let headHave = 0;
    let bodyLeft = 0; // bytes of the current body still to come
    let bodyLen = 0;
    let type = 0;
    /** The first bytes of the current body (for 'w' and 'k' the header fields; all of small messages). */
    const small = Buffer.alloc(1024);
    let smallHave = 0;
    const fail = (e: Error) => {
      sock.destroy();
      reject(e);
    };
    const onMessageStart = () => {
      smallHave = 0;
    };
    const onMessageEnd = () => {
      if (phase === 'copy' && type === 0x64) {
        const tag = small[0];
        if (tag === 0x77) {
          const n = bodyLen - 25;
          bytes += n;
          received = small.readBigUInt64BE(1) + BigInt(n);
          if (received >= end) {
            const secs = Number(process.hrtime.bigint() - t0) / 1e9;
            phase = 'done';
            sock.end(Buffer.concat([frontend.copyDone(), frontend.terminate()]));
            const cpu = process.cpuUsage(cpu0);
            resolve({ bytes, seconds: secs, startedAt, endedAt: performance.timeOrigin + performance.now(), cpuSeconds: (cpu.user + cpu.system) / 1e6, userSeconds: cpu.user / 1e6, systemSeconds: cpu.system / 1e6, reads });
          }
        } else if (tag === 0x6b && small[17] === 1) {
          sock.write(standbyStatus({ write: received, flush: received, apply: received, replyRequested: false }));
        }
      } else if (type === 0x5a && phase === 'startup') {
        phase = 'copy';
        const go = () => {
          t0 = process.hrtime.bigint();
          startedAt = performance.timeOrigin + performance.now();
          cpu0 = process.cpuUsage();
          sock.write(frontend.query(`START_REPLICATION ${formatLsn(start)} TIMELINE 1`));
        };
        if (gate) gate().then(go, fail);
        else go();
      } else if (type === 0x45) {
        fail(new Error(`server error: ${small.subarray(0, smallHave).toString('utf8').replace(/\0/g, ' ')}`));
      } else if (type === 0x52 && small.readInt32BE(0) !== 0) {
        fail(new Error('the server asked for a password'));
      }
    };
    const feed = (buf: Buffer, n: number) => {
      let off = 0;
      while (off < n && phase !== 'done') {
        if (bodyLeft === 0 && headHave < 5) {
          const take = Math.min(5 - headHave, n - off);
          buf.copy(head, headHave, off, off + take);
          headHave += take;
          off += take;
          if (headHave < 5) return;
          type = head[0]!;
          bodyLen = head.readInt32BE(1) - 4;
          bodyLeft = bodyLen;
          onMessageStart();
          if (bodyLeft === 0) {
            headHave = 0;
            onMessageEnd();
          }
          continue;
        }
        const take = Math.min(bodyLeft, n - off);
        if (smallHave < small.length) {
          const keep = Math.min(take, small.length - smallHave);
          buf.copy(small, smallHave, off, off + keep);
          smallHave += keep;
        }
        off += take;
        bodyLeft -= take;
        if (bodyLeft === 0) {
          headHave = 0;
          onMessageEnd();
        }
      }
    };
    const sock = net.connect({
      host,
      port,
      onread: { buffer: Buffer.alloc(1 << 20), callback: (n: number, buf: Uint8Array) => (reads++, feed(buf as Buffer, n), true) },
    });
    sock.setNoDelay(true);
    sock.on('error', fail);
    sock.on('connect', () => sock.write(frontend.startup({ user: 'postgres', database: 'replication', replication: 'true', application_name: appName })));
    sock.on('close', () => {
      if (phase !== 'done') reject(new Error(`connection closed at ${formatLsn(received)} before ${formatLsn(end)}`));
    });
  });
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const [host, port, start, end, app] = process.argv.slice(2);
  // With BENCH_CONSUMER_GATE=1: connect, print "ready", and start streaming
  // only at a line on stdin — so that N consumers stream at the same time,
  // after every process has started.
  const gate =
    process.env.BENCH_CONSUMER_GATE === '1'
      ? () =>
          new Promise<void>((resolve) => {
            process.stdout.write('ready\n');
            process.stdin.once('data', () => {
              process.stdin.pause();
              resolve();
            });
          })
      : undefined;
  consume(host!, Number(port), parseLsn(start!), parseLsn(end!), app, gate).then(
    (r) => console.log(JSON.stringify(r)),
    (e: Error) => {
      console.error(`consumer: ${e.message}`);
      process.exit(1);
    },
  );
}
