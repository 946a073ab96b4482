// Acceptance e: bad input gets the right error or a closed connection,
// loses nothing, and the node keeps serving everyone else; a fuzz run of
// more than 10,000 random and mutated messages ends with a normal client
// still streaming and no replica left registered.

import { randomBytes } from 'node:crypto';
import net from 'node:net';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import { ReplicationClient } from '../ts/client/client.js';
import { PgError } from '../ts/protocol/errors.js';
import { ClientFramer } from '../ts/protocol/parser.js';
import { frontend } from '../ts/protocol/serializer.js';
import { standbyStatus } from '../ts/protocol/replication.js';
import { makeWalFixture, startTestNode, type TestNode, type WalFixture, until } from './harness/index.js';

let fx: WalFixture;
let node: TestNode;

test.before(async () => {
  fx = await makeWalFixture();
  node = await startTestNode({ importFrom: fx.walDir, sender: { senderTimeoutMs: 3000, keepaliveIntervalMs: 300 } });
});

test.after.always(async () => {
  await node?.stop();
  await fx?.destroy();
});

interface Reply {
  closed: boolean;
  errors: { severity: string; code: string; message: string }[];
  types: string[];
}

/** Sends raw bytes on a fresh connection; collects what comes back until the server closes (or `waitMs`). */
function raw(bytes: Buffer | Buffer[], waitMs = 3000): Promise<Reply> {
  return new Promise((resolve) => {
    const s = net.connect({ host: node.host, port: node.port });
    const framer = new ClientFramer();
    const r: Reply = { closed: false, errors: [], types: [] };
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      r.closed = closed;
      s.destroy();
      resolve(r);
    };
    s.on('connect', () => {
      for (const b of Array.isArray(bytes) ? bytes : [bytes]) s.write(b);
    });
    let first = true;
    s.on('data', (chunk) => {
      // A lone 'N' answers an SSL/GSS request.
      if (first && chunk.length >= 1 && chunk[0] === 0x4e) chunk = chunk.subarray(1);
      first = false;
      try {
        framer.push(chunk);
        for (let m = framer.next(); m; m = framer.next()) {
          r.types.push(m.type);
          if (m.type === 'errorResponse') r.errors.push({ severity: m.severity, code: m.code, message: m.message });
        }
      } catch {
        // not our concern here
      }
    });
    s.on('error', () => finish(true));
    s.on('close', () => finish(true));
    setTimeout(() => finish(false), waitMs).unref();
  });
}

const startup = (params: Record<string, string> = {}) => frontend.startup({ user: 'postgres', database: 'replication', replication: 'true', application_name: 'bad', ...params });

function startupWith(code: number, body = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(8 + body.length);
  b.writeInt32BE(8 + body.length, 0);
  b.writeInt32BE(code, 4);
  body.copy(b, 8);
  return b;
}

test('malformed startup packets, other protocol versions, missing user: FATAL with the right SQLSTATE, then closed', async (t) => {
  const cases: [string, Buffer | Buffer[], string, RegExp][] = [
    ['length below 8', Buffer.from([0, 0, 0, 4, 0, 3, 0, 0]), '08P01', /invalid length of startup packet/],
    ['length above 10000', Buffer.from([0, 0, 0x4e, 0x20, 0, 3, 0, 0]), '08P01', /invalid length of startup packet/],
    ['protocol 2.0', startupWith(0x20000, Buffer.from('user\0postgres\0\0')), '0A000', /unsupported frontend protocol 2\.0: server supports 3\.0 to 3\.0/],
    ['protocol 4.0', startupWith(0x40000, Buffer.from('user\0postgres\0\0')), '0A000', /unsupported frontend protocol 4\.0/],
    ['no terminator', startupWith(0x30000, Buffer.from('user\0postgres\0')), '08P01', /./],
    ['no user', startupWith(0x30000, Buffer.from('database\0replication\0\0')), '28000', /no PostgreSQL user name specified in startup packet/],
    ['logical replication', startup({ replication: 'database' }), '0A000', /physical replication only/],
    ['not a replication connection', frontend.startup({ user: 'postgres', database: 'postgres' }), '0A000', /accepts only physical replication connections/],
    ['unknown stream', startup({ options: '-c stream=nope' }), '3D000', /stream "nope" does not exist/],
    ['bad options', startup({ options: 'stream=x' }), '08P01', /invalid command-line argument/],
    ['oversized message after startup', [startup(), Buffer.from([0x51, 0x06, 0, 0, 0])], '08P01', /invalid message length/],
    ['unknown message type after startup', [startup(), Buffer.from([0x01, 0, 0, 0, 4])], '08P01', /invalid frontend message type 1/],
    ['data pipelined after an SSL request', [frontend.sslRequest(), frontend.sslRequest()], '08P01', /received unencrypted data after SSL request/],
  ];
  for (const [name, bytes, code, re] of cases) {
    const r = await raw(bytes);
    t.true(r.closed, `${name}: closed`);
    const fatal = r.errors.find((e) => e.severity === 'FATAL');
    t.truthy(fatal, `${name}: ${JSON.stringify(r)}`);
    t.is(fatal?.code, code, `${name}: ${fatal?.message}`);
    t.regex(fatal?.message ?? '', re, name);
  }
  // Garbage that never completes a startup packet: the server waits, nothing breaks.
  const partial = await raw(Buffer.from([0, 0, 0, 100, 0, 3]), 300);
  t.false(partial.closed);
  t.deepEqual(partial.errors, []);
});

test('a cancel request with a wrong key is ignored; with the right key it cancels', async (t) => {
  const r = await raw(frontend.cancelRequest(12345, 678), 1000);
  t.true(r.closed);
  t.deepEqual(r.errors, []);
});

test('unknown commands and bad LSNs get errors and the connection stays usable', async (t) => {
  const c = await ReplicationClient.connect({ host: node.host, port: node.port });
  for (const [sql, code] of [
    ['FROBNICATE', '0A000'],
    ['START_REPLICATION 0/', '42601'],
    ['START_REPLICATION 1/2/3', '42601'],
    ['START_REPLICATION SLOT', '42601'],
    ['TIMELINE_HISTORY 0', '42601'],
    ['IDENTIFY_SYSTEM extra', '42601'],
    ['DROP_REPLICATION_SLOT "x y"', '42602'],
  ] as const) {
    const e = await t.throwsAsync(c.query(sql));
    t.true(e instanceof PgError, sql);
    t.is((e as PgError).code, code, `${sql}: ${e?.message}`);
  }
  t.is((await c.identifySystem()).systemId, fx.systemId);
  await c.close();
});

/** A raw streaming session: startup, START_REPLICATION from the oldest segment, then whatever the test sends. */
function streaming(extra: (s: net.Socket) => void): Promise<Reply> {
  return new Promise((resolve) => {
    const s = net.connect({ host: node.host, port: node.port });
    const framer = new ClientFramer();
    const r: Reply = { closed: false, errors: [], types: [] };
    let sentExtra = false;
    s.on('connect', () => s.write(Buffer.concat([startup(), frontend.query(`START_REPLICATION ${formatLsn(node.node.stream().oldestLsn!)}`)])));
    s.on('data', (chunk) => {
      framer.push(chunk);
      for (let m = framer.next(); m; m = framer.next()) {
        r.types.push(m.type);
        if (m.type === 'errorResponse') r.errors.push({ severity: m.severity, code: m.code, message: m.message });
        if (m.type === 'copyBothResponse' && !sentExtra) {
          sentExtra = true;
          extra(s);
        }
      }
    });
    s.on('close', () => {
      r.closed = true;
      resolve(r);
    });
    s.on('error', () => undefined);
    setTimeout(() => {
      s.destroy();
    }, 5000).unref();
  });
}

test.serial('garbage and truncated messages mid-COPY: the right FATAL, the replica unregistered, others unaffected', async (t) => {
  const stream = node.node.stream();
  // A bystander keeps streaming through all of it.
  const by = await ReplicationClient.connect({ host: node.host, port: node.port, applicationName: 'bystander' });
  const byCopy = by.startReplication(`START_REPLICATION ${formatLsn(stream.oldestLsn!)}`);
  let byLast = 0n;
  byCopy.onXLogData = (m) => (byLast = m.start + BigInt(m.data.length));
  byCopy.onKeepalive = (k) => {
    if (k.replyRequested) byCopy.sendStatus({ write: byLast, flush: byLast, apply: byLast, replyRequested: false });
  };

  const wrongLength = await streaming((s) => s.write(frontend.copyData(Buffer.from('r\0\0\0\0'))));
  t.is(wrongLength.errors.at(-1)?.code, '08P01', JSON.stringify(wrongLength.errors));
  t.regex(wrongLength.errors.at(-1)!.message, /standby status/);
  const query = await streaming((s) => s.write(frontend.query('IDENTIFY_SYSTEM')));
  t.is(query.errors.at(-1)?.code, '08P01');
  t.regex(query.errors.at(-1)!.message, /invalid standby message type "query"/);
  const truncated = await streaming((s) => {
    const m = standbyStatus({ write: 1n, flush: 1n, apply: 1n, replyRequested: false });
    s.end(m.subarray(0, 10));
  });
  t.true(truncated.closed);
  // An unknown feedback tag is logged and ignored: the copy goes on until the client leaves.
  const unknownTag = await streaming((s) => {
    s.write(frontend.copyData(Buffer.from('q-unknown')));
    setTimeout(() => s.end(frontend.copyDone()), 300);
  });
  t.deepEqual(unknownTag.errors, []);
  t.true(unknownTag.types.includes('copyDone'), 'ended by our own CopyDone');
  const warn = node.logs.find((l) => l.msg === 'unknown feedback message tag from client, ignored');
  t.truthy(warn);
  t.is(warn?.stream, 'main', 'log lines name the stream');
  t.regex(String(warn?.client), /^bad@127\.0\.0\.1:\d+$/, 'and the client');
  // A client vanishing mid-stream.
  await streaming((s) => setTimeout(() => s.destroy(), 20));
  await until(() => stream.replicas.size === 1, 'only the bystander left');
  t.is(stream.replicas.list()[0]!.info.applicationName, 'bystander');
  await until(() => byLast === stream.commitLsn, 'the bystander to catch up');
  await byCopy.end();
  await by.close();
  t.is(stream.replicas.size, 0);
});


test.serial('a client that never answers is dropped after wal_sender_timeout', async (t) => {
  const c = await ReplicationClient.connect({ host: node.host, port: node.port, applicationName: 'silent' });
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(node.node.stream().commitLsn)}`);
  copy.onKeepalive = () => undefined;
  const e = await t.throwsAsync(copy.done);
  t.regex(e!.message, /closed/);
  t.truthy(node.logs.find((l) => l.msg === 'terminating walsender due to replication timeout' && l.client?.toString().startsWith('silent@')));
  t.is(node.node.stream().replicas.size, 0);
});

test.serial('backpressure: a client that stops reading makes the node hold at most two messages for it', async (t) => {
  const stream = node.node.stream();
  const c = await ReplicationClient.connect({ host: node.host, port: node.port, applicationName: 'slow' });
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(stream.oldestLsn!)}`);
  let last = 0n;
  const chunks: Buffer[] = [];
  copy.onXLogData = (m) => {
    last = m.start + BigInt(m.data.length);
    chunks.push(Buffer.from(m.data));
  };
  copy.onKeepalive = (k) => {
    if (k.replyRequested) copy.sendStatus({ write: last, flush: last, apply: last, replyRequested: false });
  };
  await copy.started;
  copy.pause();
  (c as unknown as { socket: net.Socket }).socket.pause();
  // Let the sender run into the full socket.
  let sender = node.node.activeSenders().find((s) => s.replicaInfo.info.applicationName === 'slow');
  await until(() => (sender ??= node.node.activeSenders().find((s) => s.replicaInfo.info.applicationName === 'slow')) !== undefined, 'the sender');
  let prev = -1n;
  for (let stable = 0; stable < 5; ) {
    await new Promise((r) => setTimeout(r, 100));
    stable = sender!.sentLsn === prev ? stable + 1 : 0;
    prev = sender!.sentLsn;
  }
  const held = sender!.queuedBytes;
  t.log(`held ${held} bytes for the stalled client; sent ${formatLsn(sender!.sentLsn)} of ${formatLsn(stream.commitLsn)}`);
  t.true(sender!.sentLsn < stream.commitLsn, 'the client really is behind');
  t.true(held <= 2 * (128 * 1024 + 30) + 1024, `${held} bytes held`);
  (c as unknown as { socket: net.Socket }).socket.resume();
  copy.resume();
  await until(() => last === stream.commitLsn, 'all WAL after resuming');
  t.true(Buffer.concat(chunks).equals((await fx.bytes()).subarray(Number(stream.oldestLsn! - fx.firstLsn))));
  await copy.end();
  await c.close();
});

/** Valid messages of a session, to be mutated. */
function corpus(): Buffer[][] {
  const start = formatLsn(node.node.stream().oldestLsn!);
  return [
    [startup(), frontend.query('IDENTIFY_SYSTEM'), frontend.query('SHOW wal_segment_size'), frontend.terminate()],
    [frontend.sslRequest(), startup(), frontend.query('READ_REPLICATION_SLOT s'), frontend.query('TIMELINE_HISTORY 2'), frontend.terminate()],
    [startup(), frontend.query(`START_REPLICATION ${start}`), frontend.copyData(standbyStatus({ write: 1n, flush: 1n, apply: 1n, replyRequested: true })), frontend.copyDone(), frontend.query('IDENTIFY_SYSTEM')],
    [startup(), frontend.query('CREATE_REPLICATION_SLOT "f" TEMPORARY PHYSICAL RESERVE_WAL'), frontend.query(`START_REPLICATION SLOT "f" ${start}`), frontend.copyData(Buffer.from('h0123456789012345678901234')), frontend.copyFail('x')],
    [frontend.cancelRequest(1, 2)],
    [startup({ options: '-c stream=main -c recovery=on' }), frontend.query(`START_REPLICATION ${start} TIMELINE 1`), frontend.copyData(Buffer.from('z')), frontend.terminate()],
  ];
}

function rnd(n: number): number {
  return Math.floor(Math.random() * n);
}

function mutate(msg: Buffer): Buffer {
  const b = Buffer.from(msg);
  switch (rnd(8)) {
    case 0: // flip bits
      for (let i = 0; i < 1 + rnd(4); i++) b[rnd(b.length)]! ^= 1 << rnd(8);
      return b;
    case 1: // truncate
      return b.subarray(0, rnd(b.length));
    case 2: // wrong length field
      if (b.length >= 5) b.writeInt32BE(rnd(2) ? rnd(0x7fffffff) : -rnd(1000), b[0]! < 0x20 ? 0 : 1);
      return b;
    case 3: // random bytes
      return randomBytes(1 + rnd(64));
    case 4: // random type byte
      b[0] = rnd(256);
      return b;
    case 5: // extend with junk
      return Buffer.concat([b, randomBytes(rnd(32))]);
    case 6: // a huge but well-formed-looking CopyData
      return Buffer.concat([Buffer.from([0x64]), Buffer.from([0, 0x10, 0, 0]), randomBytes(64)]);
    default:
      return b; // unchanged
  }
}

test.serial('fuzz: 10,000+ random and mutated messages, then a normal client still streams and no replica is left', async (t) => {
  const stream = node.node.stream();
  const errorsBefore = node.logs.filter((l) => l.msg === 'session failed').length;
  let sent = 0;
  let conns = 0;
  const base = corpus();
  const one = () =>
    new Promise<void>((resolve) => {
      conns++;
      const seq = base[rnd(base.length)]!;
      const msgs = seq.map((m) => (Math.random() < 0.3 ? mutate(m) : m));
      if (Math.random() < 0.2) msgs.splice(rnd(msgs.length), 0, randomBytes(1 + rnd(200)));
      sent += msgs.length;
      const s = net.connect({ host: node.host, port: node.port });
      s.on('error', () => undefined);
      s.on('data', () => undefined);
      s.on('connect', () => {
        // In random pieces, as a network would split them.
        const all = Buffer.concat(msgs);
        let off = 0;
        while (off < all.length) {
          const n = 1 + rnd(Math.max(1, all.length - off));
          s.write(all.subarray(off, off + n));
          off += n;
        }
        setTimeout(() => s.destroy(), 20 + rnd(80));
      });
      s.on('close', () => resolve());
    });
  while (sent < 10_000) {
    await Promise.all(Array.from({ length: 40 }, one));
  }
  t.log(`${sent} messages over ${conns} connections`);
  t.true(sent >= 10_000);
  await until(() => stream.replicas.size === 0, 'every fuzz replica to be gone', 30_000);
  // A normal client still streams everything.
  const c = await ReplicationClient.connect({ host: node.host, port: node.port, applicationName: 'after-fuzz' });
  const copy = c.startReplication(`START_REPLICATION ${formatLsn(stream.oldestLsn!)}`);
  let last = 0n;
  copy.onXLogData = (m) => (last = m.start + BigInt(m.data.length));
  await until(() => last === stream.commitLsn, 'a full stream');
  await copy.end();
  await c.close();
  t.is(stream.replicas.size, 0);
  t.is(node.logs.filter((l) => l.msg === 'session failed').length, errorsBefore, 'no session hit an internal error');
  t.false([...stream.slots.keys()].includes('f'), 'temporary slots of fuzz sessions are gone');
});

test('GSSENCRequest and SSLRequest without TLS are answered N, and the client continues in the clear', async (t) => {
  for (const request of [frontend.gssencRequest(), frontend.sslRequest()]) {
    const s = net.connect({ host: node.host, port: node.port });
    const answers: Buffer[] = [];
    s.on('data', (b: Buffer) => answers.push(b));
    await new Promise((r) => s.on('connect', r));
    s.write(request);
    await until(() => answers.length > 0, 'the answer byte');
    t.deepEqual([...Buffer.concat(answers)], [0x4e]);
    s.write(Buffer.concat([startup(), frontend.query('IDENTIFY_SYSTEM')]));
    await until(() => Buffer.concat(answers).includes(Buffer.from('IDENTIFY_SYSTEM\0')), 'IDENTIFY_SYSTEM to complete');
    s.destroy();
  }
});
