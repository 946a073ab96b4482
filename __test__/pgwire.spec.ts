// The wire codec on exact bytes: every serializer against hand-written
// byte strings, the framers fed one byte at a time, and malformed input.

import test, { type ExecutionContext } from 'ava';

import { Reader } from '../ts/protocol/buffer_reader.js';
import { Writer } from '../ts/protocol/buffer_writer.js';
import { PgError, ProtocolError } from '../ts/protocol/errors.js';
import type { BackendMessage, FrontendMessage, StartupPacket } from '../ts/protocol/messages.js';
import {
  ClientFramer,
  errorFromNotice,
  parseBackendMessage,
  parsePasswordMessage,
  parseSASLInitialResponse,
  parseStartupPacket,
  ServerFramer,
} from '../ts/protocol/parser.js';
import {
  dateToPgTime,
  decodeHotStandbyFeedback,
  decodeKeepalive,
  decodeNeonFeedback,
  decodeStandbyStatus,
  decodeXLogData,
  hotStandbyFeedback,
  keepalive,
  neonFeedback,
  pgNow,
  pgTimeToDate,
  standbyStatus,
  xlogData,
  xlogDataHeader,
} from '../ts/protocol/replication.js';
import { backend, frontend } from '../ts/protocol/serializer.js';

/** Bytes from hex with any spacing, plus 'text' segments in single quotes: h`5a 00 'ab' 00`. */
function h(strings: TemplateStringsArray, ...values: unknown[]): Buffer {
  const src = strings.reduce((acc, s, i) => acc + s + (i < values.length ? String(values[i]) : ''), '');
  const out: number[] = [];
  const re = /'([^']*)'|([0-9a-fA-F]{2})|(\s+)/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(src)) !== null) {
    if (m[1] !== undefined) out.push(...Buffer.from(m[1], 'utf8'));
    else if (m[2] !== undefined) out.push(parseInt(m[2], 16));
    last = re.lastIndex;
  }
  if (last !== src.length) throw new Error(`bad hex at ${last}: ${src.slice(last, last + 10)}`);
  return Buffer.from(out);
}

const hex = (b: Buffer): string => b.toString('hex').replace(/(..)/g, '$1 ').trim();

function bytesIs(t: ExecutionContext, actual: Buffer, expected: Buffer): void {
  t.is(hex(actual), hex(expected));
}

function isProtocolError(t: ExecutionContext, fn: () => unknown, message?: RegExp): ProtocolError {
  const e = t.throws(fn, { instanceOf: ProtocolError, ...(message ? { message } : {}) });
  t.is(e?.code, '08P01');
  t.is(e?.severity, 'FATAL');
  return e as ProtocolError;
}

// ------------------------------------------------------------------ Writer

test('Writer: every field type, big-endian, flush with and without a code', (t) => {
  const w = new Writer(16);
  const msg = w
    .int8(-1)
    .int8(0x41)
    .int16(-2)
    .int16(0xfffe)
    .int32(-3)
    .uint32(0xfffffffd)
    .int64(-4n)
    .uint64(0xfffffffffffffffcn)
    .cstring('hé')
    .string('xy')
    .bytes(Buffer.from([1, 2]))
    .flush('Q');
  bytesIs(
    t,
    msg,
    h`51 00 00 00 2a  ff 41  ff fe  ff fe  ff ff ff fd  ff ff ff fd
      ff ff ff ff ff ff ff fc  ff ff ff ff ff ff ff fc  68 c3 a9 00  'xy'  01 02`,
  );
  // reset after flush; untyped message
  bytesIs(t, w.int32(80877103).flush(), h`00 00 00 08 04 d2 16 2f`);
  bytesIs(t, w.flush('c'), h`63 00 00 00 04`);
});

test('Writer: grows past its initial size; flush returns independent buffers', (t) => {
  const w = new Writer(16);
  const big = Buffer.alloc(100_000, 7);
  const a = w.bytes(big).int8(1).flush('d');
  t.is(a.length, 5 + 100_001);
  t.is(a.readInt32BE(1), 100_005);
  t.is(a[a.length - 1], 1);
  const b = w.cstring('x').flush('C');
  bytesIs(t, b, h`43 00 00 00 06 78 00`);
  t.is(a[5], 7, 'the first message was not overwritten');
});

test('Writer: out-of-range values and NUL in C strings throw', (t) => {
  const w = new Writer();
  t.throws(() => w.int32(2 ** 31), { instanceOf: RangeError });
  t.throws(() => w.uint32(-1), { instanceOf: RangeError });
  t.throws(() => w.uint64(-1n), { instanceOf: RangeError });
  t.throws(() => w.cstring('a\0b'), { instanceOf: TypeError });
  t.throws(() => w.flush('ab'), { instanceOf: TypeError });
});

// ------------------------------------------------------------------ Reader

test('Reader: reads every type and views without copying', (t) => {
  const buf = h`ff 41 ff fe ff ff ff fd ff ff ff fd ff ff ff ff ff ff ff fc ff ff ff ff ff ff ff fc 'hé' 00 01 02 03`;
  const r = new Reader(buf);
  t.is(r.uint8(), 255);
  t.is(r.int8(), 0x41);
  t.is(r.int16(), -2);
  t.is(r.int32(), -3);
  t.is(r.uint32(), 0xfffffffd);
  t.is(r.int64(), -4n);
  t.is(r.uint64(), 0xfffffffffffffffcn);
  t.is(r.cstring(), 'hé');
  t.is(r.remaining, 3);
  const b = r.bytes(1);
  t.is(b[0], 1);
  b[0] = 9;
  t.is(buf[buf.length - 3], 9, 'bytes() is a view');
  bytesIs(t, r.rest(), h`02 03`);
  t.is(r.remaining, 0);
  t.notThrows(() => r.end());
});

test('Reader: reading past the end throws ProtocolError naming the field', (t) => {
  isProtocolError(t, () => new Reader(h`00 01 02`).int32('backend pid'), /backend pid/);
  isProtocolError(t, () => new Reader(h`00`).int16(), /int16/);
  isProtocolError(t, () => new Reader(h`01 02 03 04 05 06 07`).uint64('walEnd'), /walEnd/);
  isProtocolError(t, () => new Reader(h`'abc'`).cstring('parameter name'), /parameter name/);
  isProtocolError(t, () => new Reader(h`01 02`).bytes(3, 'MD5 salt'), /MD5 salt/);
  isProtocolError(t, () => new Reader(Buffer.alloc(0)).uint8('tag'), /tag/);
  isProtocolError(t, () => new Reader(h`01 02`).end('Terminate'), /Terminate/);
});

// -------------------------------------------------------- backend serializer

test('backend: authentication messages', (t) => {
  bytesIs(t, backend.authenticationOk(), h`52 00 00 00 08 00 00 00 00`);
  bytesIs(t, backend.authenticationCleartextPassword(), h`52 00 00 00 08 00 00 00 03`);
  bytesIs(t, backend.authenticationMD5Password(h`de ad be ef`), h`52 00 00 00 0c 00 00 00 05 de ad be ef`);
  t.throws(() => backend.authenticationMD5Password(h`01 02 03`), { instanceOf: RangeError });
  // length field 23, as captured from a real server
  bytesIs(t, backend.authenticationSASL(['SCRAM-SHA-256']), h`52 00 00 00 17 00 00 00 0a 'SCRAM-SHA-256' 00 00`);
  bytesIs(t, backend.authenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']), h`52 00 00 00 2a 00 00 00 0a 'SCRAM-SHA-256-PLUS' 00 'SCRAM-SHA-256' 00 00`);
  bytesIs(t, backend.authenticationSASLContinue('r=abc'), h`52 00 00 00 0d 00 00 00 0b 'r=abc'`);
  bytesIs(t, backend.authenticationSASLContinue(Buffer.from('r=abc')), h`52 00 00 00 0d 00 00 00 0b 'r=abc'`);
  bytesIs(t, backend.authenticationSASLFinal('v=x'), h`52 00 00 00 0b 00 00 00 0c 'v=x'`);
  // fixed messages are fresh buffers
  const ok = backend.authenticationOk();
  ok[0] = 0;
  t.is(backend.authenticationOk()[0], 0x52);
});

test('backend: ParameterStatus, BackendKeyData, ReadyForQuery', (t) => {
  bytesIs(t, backend.parameterStatus('a', 'b'), h`53 00 00 00 08 'a' 00 'b' 00`);
  bytesIs(t, backend.parameterStatus('integer_datetimes', 'on'), h`53 00 00 00 19 'integer_datetimes' 00 'on' 00`);
  bytesIs(t, backend.backendKeyData(1234, -1), h`4b 00 00 00 0c 00 00 04 d2 ff ff ff ff`);
  bytesIs(t, backend.readyForQuery(), h`5a 00 00 00 05 49`);
  bytesIs(t, backend.readyForQuery('T'), h`5a 00 00 00 05 54`);
  bytesIs(t, backend.readyForQuery('E'), h`5a 00 00 00 05 45`);
});

test('backend: RowDescription, DataRow, CommandComplete, EmptyQueryResponse', (t) => {
  bytesIs(
    t,
    backend.rowDescription([{ name: 'a', typeOid: 25, typeLen: -1, typeMod: -1 }]),
    h`54 00 00 00 1a 00 01  'a' 00  00 00 00 00  00 00  00 00 00 19  ff ff  ff ff ff ff  00 00`,
  );
  bytesIs(
    t,
    backend.rowDescription([
      { name: 'systemid', typeOid: 25, typeLen: -1, typeMod: -1 },
      { name: 'timeline', typeOid: 23, typeLen: 4, typeMod: -1, tableOid: 7, columnAttr: 2, format: 1 },
    ]),
    h`54 00 00 00 3c 00 02
      'systemid' 00  00 00 00 00  00 00  00 00 00 19  ff ff  ff ff ff ff  00 00
      'timeline' 00  00 00 00 07  00 02  00 00 00 17  00 04  ff ff ff ff  00 01`,
  );
  bytesIs(t, backend.rowDescription([]), h`54 00 00 00 06 00 00`);
  bytesIs(
    t,
    backend.dataRow(['ab', null, Buffer.from([1, 2]), '']),
    h`44 00 00 00 1a 00 04  00 00 00 02 'ab'  ff ff ff ff  00 00 00 02 01 02  00 00 00 00`,
  );
  bytesIs(t, backend.dataRow(['é']), h`44 00 00 00 0c 00 01 00 00 00 02 c3 a9`);
  bytesIs(t, backend.commandComplete('SHOW'), h`43 00 00 00 09 'SHOW' 00`);
  bytesIs(t, backend.commandComplete('START_REPLICATION'), h`43 00 00 00 16 'START_REPLICATION' 00`);
  bytesIs(t, backend.emptyQueryResponse(), h`49 00 00 00 04`);
});

test('backend: ErrorResponse / NoticeResponse field layout (S V C M D H, then NUL)', (t) => {
  bytesIs(
    t,
    backend.errorResponse({ severity: 'ERROR', code: '0A000', message: 'm', detail: 'd', hint: 'h' }),
    h`45 00 00 00 23  53 'ERROR' 00  56 'ERROR' 00  43 '0A000' 00  4d 'm' 00  44 'd' 00  48 'h' 00  00`,
  );
  bytesIs(
    t,
    backend.errorResponse(new PgError('42704', 'replication slot "x" does not exist')),
    h`45 00 00 00 3f  'S' 'ERROR' 00  'V' 'ERROR' 00  'C' '42704' 00  'M' 'replication slot "x" does not exist' 00  00`,
  );
  bytesIs(
    t,
    backend.errorResponse(new ProtocolError('invalid message length')),
    h`45 00 00 00 32  'S' 'FATAL' 00  'V' 'FATAL' 00  'C' '08P01' 00  'M' 'invalid message length' 00  00`,
  );
  bytesIs(
    t,
    backend.errorResponse(new PgError('XX000', 'x', { detail: 'd' })),
    h`45 00 00 00 20  'S' 'ERROR' 00  'V' 'ERROR' 00  'C' 'XX000' 00  'M' 'x' 00  'D' 'd' 00  00`,
  );
  bytesIs(
    t,
    backend.noticeResponse({ severity: 'WARNING', code: '01000', message: 'w' }),
    h`4e 00 00 00 21  'S' 'WARNING' 00  'V' 'WARNING' 00  'C' '01000' 00  'M' 'w' 00  00`,
  );
});

test('backend: an encoder that throws half-way does not corrupt the next message', (t) => {
  t.throws(() => backend.parameterStatus('ok', 'bad\0value'), { instanceOf: TypeError });
  bytesIs(t, backend.readyForQuery(), h`5a 00 00 00 05 49`);
});

test('backend: CopyBothResponse, CopyData, CopyDone, SSL answers', (t) => {
  bytesIs(t, backend.copyBothResponse(), h`57 00 00 00 07 00 00 00`);
  bytesIs(t, backend.copyData(h`01 02 03`), h`64 00 00 00 07 01 02 03`);
  bytesIs(t, backend.copyData(Buffer.alloc(0)), h`64 00 00 00 04`);
  bytesIs(t, backend.copyDone(), h`63 00 00 00 04`);
  bytesIs(t, backend.sslResponse('N'), h`4e`);
  bytesIs(t, backend.sslResponse('S'), h`53`);
});

// ------------------------------------------------------- frontend serializer

test('frontend: untyped startup-phase packets', (t) => {
  bytesIs(
    t,
    frontend.startup({ user: 'u', database: 'd' }),
    h`00 00 00 1b 00 03 00 00 'user' 00 'u' 00 'database' 00 'd' 00 00`,
  );
  bytesIs(t, frontend.startup({}), h`00 00 00 09 00 03 00 00 00`);
  bytesIs(t, frontend.sslRequest(), h`00 00 00 08 04 d2 16 2f`);
  bytesIs(t, frontend.gssencRequest(), h`00 00 00 08 04 d2 16 30`);
  bytesIs(t, frontend.cancelRequest(1, -2), h`00 00 00 10 04 d2 16 2e 00 00 00 01 ff ff ff fe`);
});

test('frontend: typed messages', (t) => {
  bytesIs(t, frontend.query('SELECT 1'), h`51 00 00 00 0d 'SELECT 1' 00`);
  bytesIs(t, frontend.query(''), h`51 00 00 00 05 00`);
  bytesIs(t, frontend.password('pw'), h`70 00 00 00 07 'pw' 00`);
  bytesIs(
    t,
    frontend.saslInitialResponse('SCRAM-SHA-256', 'n,,n=,r=x'),
    h`70 00 00 00 1f 'SCRAM-SHA-256' 00 00 00 00 09 'n,,n=,r=x'`,
  );
  bytesIs(t, frontend.saslInitialResponse('M', null), h`70 00 00 00 0a 'M' 00 ff ff ff ff`);
  bytesIs(t, frontend.saslResponse('c=biws'), h`70 00 00 00 0a 'c=biws'`);
  bytesIs(t, frontend.copyData(h`aa bb`), h`64 00 00 00 06 aa bb`);
  bytesIs(t, frontend.copyDone(), h`63 00 00 00 04`);
  bytesIs(t, frontend.copyFail('no'), h`66 00 00 00 07 'no' 00`);
  bytesIs(t, frontend.terminate(), h`58 00 00 00 04`);
});

// -------------------------------------------------------- replication payloads

test('keepalive: complete CopyData message, payload exactly 18 bytes', (t) => {
  const m = keepalive(0x1_0000_0000n | 0x3000000n, 5n, true);
  bytesIs(t, m, h`64 00 00 00 16  6b  00 00 00 01 03 00 00 00  00 00 00 00 00 00 00 05  01`);
  t.is(m.length - 5, 18);
  t.deepEqual(decodeKeepalive(m.subarray(5)), { walEnd: 0x103000000n, sendTime: 5n, replyRequested: true });
  bytesIs(t, keepalive(0n, -1n, false), h`64 00 00 00 16 6b 00 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff 00`);
  isProtocolError(t, () => decodeKeepalive(h`6b 00`), /exactly 18/);
  isProtocolError(t, () => decodeKeepalive(Buffer.concat([m.subarray(5), h`00`])), /exactly 18/);
  isProtocolError(t, () => decodeKeepalive(h`77 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00`), /tag/);
});

test('standby status update: 34-byte payload', (t) => {
  const m = standbyStatus({ write: 0x10n, flush: 0x20n, apply: 0x30n, sendTime: 0x40n, replyRequested: false });
  bytesIs(
    t,
    m,
    h`64 00 00 00 26  72  00 00 00 00 00 00 00 10  00 00 00 00 00 00 00 20
      00 00 00 00 00 00 00 30  00 00 00 00 00 00 00 40  00`,
  );
  t.deepEqual(decodeStandbyStatus(m.subarray(5)), { write: 0x10n, flush: 0x20n, apply: 0x30n, sendTime: 0x40n, replyRequested: false });
  const now = standbyStatus({ write: 1n, flush: 0n, apply: 0n, replyRequested: true });
  const d = decodeStandbyStatus(now.subarray(5));
  t.true(d.replyRequested);
  t.true(d.sendTime > 0n && d.sendTime <= pgNow());
  isProtocolError(t, () => decodeStandbyStatus(m.subarray(5, 38)), /exactly 34/);
});

test('hot standby feedback: 25-byte payload', (t) => {
  const m = hotStandbyFeedback({ sendTime: 1n, xmin: 2, xminEpoch: 3, catalogXmin: 0xfffffffe, catalogXminEpoch: 5 });
  bytesIs(t, m, h`64 00 00 00 1d  68  00 00 00 00 00 00 00 01  00 00 00 02  00 00 00 03  ff ff ff fe  00 00 00 05`);
  t.deepEqual(decodeHotStandbyFeedback(m.subarray(5)), { sendTime: 1n, xmin: 2, xminEpoch: 3, catalogXmin: 0xfffffffe, catalogXminEpoch: 5 });
  isProtocolError(t, () => decodeHotStandbyFeedback(m.subarray(5, 29)), /exactly 25/);
});

test('XLogData: encode, header-only encode, decode', (t) => {
  const m = xlogData(0x3000000n, 0x3000002n, 3n, h`aa bb`);
  bytesIs(
    t,
    m,
    h`64 00 00 00 1f  77  00 00 00 00 03 00 00 00  00 00 00 00 03 00 00 02  00 00 00 00 00 00 00 03  aa bb`,
  );
  bytesIs(t, Buffer.concat([xlogDataHeader(0x3000000n, 0x3000002n, 3n, 2), h`aa bb`]), m);
  t.is(xlogDataHeader(0n, 0n, 0n, 1000).length, 30);
  const d = decodeXLogData(m.subarray(5));
  t.is(d.start, 0x3000000n);
  t.is(d.end, 0x3000002n);
  t.is(d.sendTime, 3n);
  bytesIs(t, d.data, h`aa bb`);
  t.is(decodeXLogData(m.subarray(5, 30)).data.length, 0);
  isProtocolError(t, () => decodeXLogData(m.subarray(5, 29)), /at least 25/);
  isProtocolError(t, () => decodeXLogData(h`6b 00`), /tag/);
});

test('Neon pageserver feedback: encode and decode, aliases, unknown keys skipped', (t) => {
  const m = neonFeedback({
    currentTimelineSize: 1n,
    lastReceivedLsn: 2n,
    diskConsistentLsn: 3n,
    remoteConsistentLsn: 4n,
    replyTime: -5n,
  });
  const kv = (k: string, v: string): string => `'${k}' 00 00 00 00 08 ${v}`;
  const body = h`05
    ${kv('current_timeline_size', '00 00 00 00 00 00 00 01')}
    ${kv('ps_writelsn', '00 00 00 00 00 00 00 02')}
    ${kv('ps_flushlsn', '00 00 00 00 00 00 00 03')}
    ${kv('ps_applylsn', '00 00 00 00 00 00 00 04')}
    ${kv('ps_replytime', 'ff ff ff ff ff ff ff fb')}`;
  t.is(body.length, 1 + 22 + 12 + 12 + 12 + 13 + 5 * 12);
  const lenHex = body.length.toString(16).padStart(16, '0').replace(/(..)/g, '$1 ');
  const msgLenHex = (4 + 1 + 8 + body.length).toString(16).padStart(8, '0').replace(/(..)/g, '$1 ');
  bytesIs(t, m, Buffer.concat([h`64 ${msgLenHex} 7a ${lenHex}`, body]));
  t.deepEqual(decodeNeonFeedback(m.subarray(5)), {
    currentTimelineSize: 1n,
    lastReceivedLsn: 2n,
    diskConsistentLsn: 3n,
    remoteConsistentLsn: 4n,
    replyTime: -5n,
  });

  // newer key names, an unknown key of odd length, a missing field
  const alt = h`7a 00 00 00 00 00 00 00 00  04
    ${kv('last_received_lsn', '00 00 00 00 00 00 00 0a')}
    'future_key' 00 00 00 00 03 01 02 03
    ${kv('disk_consistent_lsn', '00 00 00 00 00 00 00 0b')}
    ${kv('replytime', '00 00 00 00 00 00 00 0c')}`;
  t.deepEqual(decodeNeonFeedback(alt), {
    currentTimelineSize: undefined,
    lastReceivedLsn: 0xan,
    diskConsistentLsn: 0xbn,
    remoteConsistentLsn: undefined,
    replyTime: 0xcn,
  });

  isProtocolError(t, () => decodeNeonFeedback(m.subarray(5, m.length - 3)), /ps_replytime/);
  isProtocolError(t, () => decodeNeonFeedback(h`7a 00 00 00`), /length/);
  isProtocolError(t, () => decodeNeonFeedback(h`7a 00 00 00 00 00 00 00 00 01 'ps_writelsn' 00 00 00 00 04 00 00 00 01`), /4-byte value/);
  isProtocolError(t, () => decodeNeonFeedback(h`7a 00 00 00 00 00 00 00 00 01 'k' 00 ff ff ff ff`), /negative/);
  isProtocolError(t, () => decodeNeonFeedback(h`7a 00 00 00 00 00 00 00 00 01 'k' 00 00 00 00 09 00`), /"k"/);
  isProtocolError(t, () => decodeNeonFeedback(h`72`), /tag/);
});

test('PostgreSQL time: epoch 2000-01-01 UTC, microseconds', (t) => {
  t.is(pgTimeToDate(0n).toISOString(), '2000-01-01T00:00:00.000Z');
  t.is(pgTimeToDate(1_500_000n).toISOString(), '2000-01-01T00:00:01.500Z');
  t.is(dateToPgTime(new Date('2000-01-02T00:00:00Z')), 86_400_000_000n);
  const before = BigInt(Date.now()) * 1000n - 946_684_800_000_000n;
  const now = pgNow();
  t.true(now >= before && now - before < 5_000_000n);
  t.true(Math.abs(pgTimeToDate(now).getTime() - Date.now()) < 5000);
});

// ------------------------------------------------------------ ServerFramer

function feedBytewise(push: (b: Buffer) => void, bytes: Buffer, onByte: () => void): void {
  for (let i = 0; i < bytes.length; i++) {
    push(bytes.subarray(i, i + 1));
    onByte();
  }
}

test('ServerFramer: a whole client session fed one byte at a time', (t) => {
  const stream = Buffer.concat([
    frontend.sslRequest(),
    frontend.startup({ user: 'postgres', database: 'replication', replication: 'true', application_name: 'pg_receivewal' }),
    frontend.password('secret'),
    frontend.saslInitialResponse('SCRAM-SHA-256', 'n,,n=,r=abc'),
    frontend.query('IDENTIFY_SYSTEM'),
    standbyStatus({ write: 1n, flush: 2n, apply: 3n, sendTime: 4n }), // a complete CopyData message
    frontend.copyDone(),
    frontend.copyFail('oops'),
    h`53 00 00 00 04`, // Sync: not one of ours
    frontend.terminate(),
  ]);
  const f = new ServerFramer();
  const startups: StartupPacket[] = [];
  const msgs: FrontendMessage[] = [];
  feedBytewise((b) => f.push(b), stream, () => {
    if (startups.length < 2) {
      const p = f.nextStartup();
      if (p) startups.push(p);
    } else {
      for (let m = f.next(); m; m = f.next()) msgs.push(m);
    }
  });
  t.is(f.buffered, 0);
  t.deepEqual(startups, [
    { kind: 'ssl' },
    {
      kind: 'startup',
      major: 3,
      minor: 0,
      params: { user: 'postgres', database: 'replication', replication: 'true', application_name: 'pg_receivewal' },
    },
  ]);
  t.is(msgs.length, 8);
  t.is(msgs[0]!.type, 'password');
  t.is(parsePasswordMessage((msgs[0] as { payload: Buffer }).payload), 'secret');
  const sasl = parseSASLInitialResponse((msgs[1] as { payload: Buffer }).payload);
  t.is(sasl.mechanism, 'SCRAM-SHA-256');
  t.is(sasl.data?.toString(), 'n,,n=,r=abc');
  t.deepEqual(msgs[2], { type: 'query', sql: 'IDENTIFY_SYSTEM' });
  t.is(msgs[3]!.type, 'copyData');
  t.deepEqual(decodeStandbyStatus((msgs[3] as { data: Buffer }).data), { write: 1n, flush: 2n, apply: 3n, sendTime: 4n, replyRequested: false });
  t.deepEqual(msgs[4], { type: 'copyDone' });
  t.deepEqual(msgs[5], { type: 'copyFail', message: 'oops' });
  t.is(msgs[6]!.type, 'other');
  t.is((msgs[6] as { code: string }).code, 'S');
  t.is((msgs[6] as { payload: Buffer }).payload.length, 0);
  t.deepEqual(msgs[7], { type: 'terminate' });
});

test('ServerFramer: messages in one chunk, raw access, and views that stay valid', (t) => {
  const f = new ServerFramer();
  const a = frontend.copyData(Buffer.alloc(3000, 0xaa));
  const b = frontend.copyData(Buffer.alloc(3000, 0xbb));
  // a complete, b split in three pieces
  f.push(Buffer.concat([a, b.subarray(0, 10)]));
  const ra = f.nextRaw()!;
  t.is(ra.code, 0x64);
  t.is(ra.payload.length, 3000);
  t.is(f.nextRaw(), null);
  t.is(f.buffered, 10);
  f.push(b.subarray(10, 2000));
  t.is(f.nextRaw(), null);
  f.push(Buffer.concat([b.subarray(2000), frontend.copyDone()]));
  const rb = f.nextRaw()!;
  t.is(rb.payload.length, 3000);
  t.deepEqual(f.next(), { type: 'copyDone' });
  t.is(f.next(), null);
  // more traffic must not overwrite what was handed out
  for (let i = 0; i < 50; i++) {
    const c = frontend.copyData(Buffer.alloc(1000, i));
    f.push(c.subarray(0, 7));
    f.push(c.subarray(7));
    t.is(f.nextRaw()!.payload[999], i);
  }
  t.true(ra.payload.every((x) => x === 0xaa));
  t.true(rb.payload.every((x) => x === 0xbb));
});

test('ServerFramer: startup packet edge cases', (t) => {
  const startupOf = (body: Buffer): Buffer => {
    const len = Buffer.alloc(4);
    len.writeInt32BE(body.length + 4);
    return Buffer.concat([len, body]);
  };
  const parse = (bytes: Buffer): StartupPacket | null => {
    const f = new ServerFramer();
    f.push(bytes);
    return f.nextStartup();
  };
  t.deepEqual(parse(frontend.gssencRequest()), { kind: 'gssenc' });
  t.deepEqual(parse(frontend.cancelRequest(42, -7)), { kind: 'cancel', pid: 42, key: -7 });
  // other protocol versions are not startup packets we accept
  t.deepEqual(parse(h`00 00 00 09 00 03 00 01 00`), { kind: 'unsupported', code: 196609 });
  t.deepEqual(parse(h`00 00 00 09 00 02 00 00 00`), { kind: 'unsupported', code: 131072 });
  t.deepEqual(parse(h`00 00 00 08 12 34 56 78`), { kind: 'unsupported', code: 0x12345678 });
  // empty parameter values are fine
  t.deepEqual(parse(h`00 00 00 0f 00 03 00 00 'user' 00 00 00`), { kind: 'startup', major: 3, minor: 0, params: { user: '' } });
  // "__proto__" is just a name
  const proto = parse(startupOf(h`00 03 00 00 '__proto__' 00 'x' 00 00`));
  t.is(proto?.kind, 'startup');
  t.is(Object.getPrototypeOf((proto as { params: object }).params), Object.prototype);
  t.deepEqual(Object.keys((proto as { params: object }).params), ['__proto__']);
  // incomplete: null, not an error
  t.is(parse(h`00 00 00`), null);
  t.is(parse(h`00 00 00 08 04 d2 16`), null);

  isProtocolError(t, () => parse(h`00 00 00 07 00 00 00`), /^invalid length of startup packet$/);
  isProtocolError(t, () => parse(h`00 00 00 00`), /^invalid length of startup packet$/);
  isProtocolError(t, () => parse(h`ff ff ff ff`), /^invalid length of startup packet$/);
  isProtocolError(t, () => parse(h`00 00 27 11`), /^invalid length of startup packet$/); // 10001, detected from the length alone
  const max = startupOf(Buffer.concat([h`00 03 00 00 'k' 00`, Buffer.alloc(10000 - 4 - 4 - 2 - 2, 0x61), h`00 00`]));
  t.is(max.length, 10000);
  t.is((parse(max) as { params: Record<string, string> }).params.k!.length, 9988);
  isProtocolError(t, () => parse(h`00 00 00 09 04 d2 16 2f 00`), /SSL request/);
  isProtocolError(t, () => parse(h`00 00 00 0c 04 d2 16 2e 00 00 00 01`), /cancel request/);
  // missing terminator (last byte not NUL / a value without its end)
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00 'user' 00 'u' 00`)), /terminator/);
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00 'user' 00 'u'`)), /terminator/);
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00 'user' 00`)), /value of startup parameter "user"|terminator/);
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00`)), /terminator/);
  // data after the terminator
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00 00 'x' 00`)), /terminator/);
  // duplicate parameter
  isProtocolError(t, () => parse(startupOf(h`00 03 00 00 'user' 00 'a' 00 'user' 00 'b' 00 00`)), /duplicate startup parameter "user"/);
  // parseStartupPacket takes the body without the length
  t.deepEqual(parseStartupPacket(h`04 d2 16 2f`), { kind: 'ssl' });
});

test('ServerFramer: bad typed message lengths and malformed bodies', (t) => {
  const next = (bytes: Buffer, max?: number): FrontendMessage | null => {
    const f = new ServerFramer(max === undefined ? {} : { maxMessageSize: max });
    f.push(bytes);
    return f.next();
  };
  isProtocolError(t, () => next(h`51 00 00 00 03`), /^invalid message length$/);
  isProtocolError(t, () => next(h`64 ff ff ff ff`), /^invalid message length$/);
  isProtocolError(t, () => next(h`64 00 10 00 05`), /^invalid message length$/); // > 1 MiB default
  t.is(next(h`64 00 10 00 00`), null); // exactly 1 MiB: allowed, waiting for the rest
  isProtocolError(t, () => next(h`64 00 00 01 01`, 256), /^invalid message length$/);
  isProtocolError(t, () => next(h`51 00 00 00 05 'a'`), /query string/);
  isProtocolError(t, () => next(h`51 00 00 00 07 'a' 00 'b'`), /Query message/);
  isProtocolError(t, () => next(h`51 00 00 00 04`), /query string/);
  isProtocolError(t, () => next(h`66 00 00 00 05 'x'`), /CopyFail/);
  isProtocolError(t, () => parsePasswordMessage(h`'pw'`), /password/);
  isProtocolError(t, () => parsePasswordMessage(h`'pw' 00 00`), /password/);
  isProtocolError(t, () => parseSASLInitialResponse(h`'SCRAM-SHA-256' 00 00 00 00 09 'n,,'`), /SASL initial response/);
  isProtocolError(t, () => parseSASLInitialResponse(h`'SCRAM-SHA-256' 00 ff ff ff fe`), /length/);
  t.deepEqual(parseSASLInitialResponse(h`'M' 00 ff ff ff ff`), { mechanism: 'M', data: null });
});

// ------------------------------------------------------------ ClientFramer

test('ClientFramer: every backend message round-trips, fed one byte at a time', (t) => {
  const stream = Buffer.concat([
    backend.authenticationOk(),
    backend.authenticationCleartextPassword(),
    backend.authenticationMD5Password(h`01 02 03 04`),
    backend.authenticationSASL(['SCRAM-SHA-256']),
    backend.authenticationSASLContinue('r=x,s=y,i=4096'),
    backend.authenticationSASLFinal('v=z'),
    h`52 00 00 00 08 00 00 00 07`, // GSS
    backend.parameterStatus('server_version', '15.4'),
    backend.backendKeyData(99, -5),
    backend.readyForQuery(),
    backend.rowDescription([
      { name: 'systemid', typeOid: 25, typeLen: -1, typeMod: -1 },
      { name: 'timeline', typeOid: 23, typeLen: 4, typeMod: -1 },
    ]),
    backend.dataRow(['7712172635900483688', null]),
    backend.commandComplete('IDENTIFY_SYSTEM'),
    backend.emptyQueryResponse(),
    backend.errorResponse({ severity: 'ERROR', code: '42704', message: 'nope', detail: 'd', hint: 'h' }),
    backend.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hi' }),
    backend.copyBothResponse(),
    h`47 00 00 00 0b 01 00 02 00 00 00 01`, // CopyInResponse, binary, 2 columns
    h`48 00 00 00 07 00 00 00`, // CopyOutResponse
    backend.copyData(h`77 01`),
    backend.copyDone(),
    h`41 00 00 00 06 00 00`, // NotificationResponse: not decoded
  ]);
  const f = new ClientFramer();
  const got: BackendMessage[] = [];
  feedBytewise((b) => f.push(b), stream, () => {
    for (let m = f.next(); m; m = f.next()) got.push(m);
  });
  t.is(f.buffered, 0);
  const plain = JSON.parse(JSON.stringify(got, (_k, v: unknown) => (v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? Buffer.from((v as { data: number[] }).data).toString('hex') : v)));
  t.deepEqual(plain, [
    { type: 'authenticationOk' },
    { type: 'authenticationCleartextPassword' },
    { type: 'authenticationMD5Password', salt: '01020304' },
    { type: 'authenticationSASL', mechanisms: ['SCRAM-SHA-256'] },
    { type: 'authenticationSASLContinue', data: Buffer.from('r=x,s=y,i=4096').toString('hex') },
    { type: 'authenticationSASLFinal', data: Buffer.from('v=z').toString('hex') },
    { type: 'authenticationOther', method: 7, data: '' },
    { type: 'parameterStatus', name: 'server_version', value: '15.4' },
    { type: 'backendKeyData', pid: 99, key: -5 },
    { type: 'readyForQuery', status: 'I' },
    {
      type: 'rowDescription',
      fields: [
        { name: 'systemid', tableOid: 0, columnAttr: 0, typeOid: 25, typeLen: -1, typeMod: -1, format: 0 },
        { name: 'timeline', tableOid: 0, columnAttr: 0, typeOid: 23, typeLen: 4, typeMod: -1, format: 0 },
      ],
    },
    { type: 'dataRow', values: [Buffer.from('7712172635900483688').toString('hex'), null] },
    { type: 'commandComplete', tag: 'IDENTIFY_SYSTEM' },
    { type: 'emptyQuery' },
    {
      type: 'errorResponse',
      fields: { S: 'ERROR', V: 'ERROR', C: '42704', M: 'nope', D: 'd', H: 'h' },
      severity: 'ERROR',
      code: '42704',
      message: 'nope',
      detail: 'd',
      hint: 'h',
    },
    { type: 'noticeResponse', fields: { S: 'NOTICE', V: 'NOTICE', C: '00000', M: 'hi' }, severity: 'NOTICE', code: '00000', message: 'hi' },
    { type: 'copyBothResponse', format: 0, columnFormats: [] },
    { type: 'copyInResponse', format: 1, columnFormats: [0, 1] },
    { type: 'copyOutResponse', format: 0, columnFormats: [] },
    { type: 'copyData', data: '7701' },
    { type: 'copyDone' },
    { type: 'other', code: 'A', payload: '0000' },
  ]);
  const err = got.find((m) => m.type === 'errorResponse');
  const pgErr = errorFromNotice(err as Extract<BackendMessage, { type: 'errorResponse' }>);
  t.true(pgErr instanceof PgError);
  t.is(pgErr.code, '42704');
  t.is(pgErr.severity, 'ERROR');
  t.is(pgErr.message, 'nope');
  t.is(pgErr.detail, 'd');
  t.is(pgErr.hint, 'h');
});

test('ClientFramer: size limits (libpq: 30000 bytes except d D T E N A V)', (t) => {
  const framed = (code: string, payloadLen: number): Buffer => {
    const b = Buffer.alloc(5 + payloadLen);
    b.write(code, 0, 'latin1');
    b.writeInt32BE(payloadLen + 4, 1);
    return b;
  };
  const first = (bytes: Buffer): ReturnType<ClientFramer['nextRaw']> => {
    const f = new ClientFramer();
    f.push(bytes);
    return f.nextRaw();
  };
  t.is(first(framed('S', 30000))!.payload.length, 30000);
  isProtocolError(t, () => first(framed('S', 30001).subarray(0, 5)), /too long/);
  isProtocolError(t, () => first(framed('R', 40000).subarray(0, 5)), /too long/);
  for (const c of 'dDTENAV') t.is(first(framed(c, 200_000))!.payload.length, 200_000, c);
  isProtocolError(t, () => first(h`5a 00 00 00 03`), /invalid message length/);
  const small = new ClientFramer({ maxLongMessageSize: 1000 });
  small.push(framed('d', 1001).subarray(0, 5));
  isProtocolError(t, () => small.nextRaw(), /too long/);
});

test('ClientFramer: large CopyData split across many chunks', (t) => {
  const payload = Buffer.alloc(200_000);
  for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
  const msg = xlogData(0x5000000n, 0x6000000n, 1n, payload);
  const f = new ClientFramer();
  const out: Buffer[] = [];
  for (let off = 0; off < msg.length; off += 7777) {
    f.push(msg.subarray(off, off + 7777));
    const m = f.nextRaw();
    if (m) out.push(m.payload);
  }
  t.is(out.length, 1);
  const x = decodeXLogData(out[0]!);
  t.is(x.start, 0x5000000n);
  t.true(x.data.equals(payload));
});

test('parseBackendMessage: truncated or over-long bodies', (t) => {
  const parse = (code: string, body: Buffer): BackendMessage => parseBackendMessage(code.charCodeAt(0), body);
  isProtocolError(t, () => parse('K', h`00 00 00 01`), /backend key/);
  isProtocolError(t, () => parse('Z', h`49 49`), /do not agree with length/);
  isProtocolError(t, () => parse('Z', Buffer.alloc(0)), /transaction status/);
  isProtocolError(t, () => parse('R', h`00 00 00 05 01 02`), /MD5 salt/);
  isProtocolError(t, () => parse('R', h`00 00 00 0a 'SCRAM'`), /SASL mechanism/);
  isProtocolError(t, () => parse('R', h`00 00 00 00 00`), /do not agree/);
  isProtocolError(t, () => parse('D', h`00 01 00 00 00 05 'abc'`), /DataRow value/);
  isProtocolError(t, () => parse('D', h`00 02 ff ff ff ff`), /DataRow value length/);
  isProtocolError(t, () => parse('T', h`00 01 'a' 00 00 00`), /table OID/);
  isProtocolError(t, () => parse('E', h`53 'ERROR' 00`), /error field type/);
  isProtocolError(t, () => parse('E', h`53 'ERROR'`), /error field 'S'/);
  isProtocolError(t, () => parse('C', h`'SHOW'`), /command tag/);
  isProtocolError(t, () => parse('S', h`'a' 00`), /parameter value/);
  isProtocolError(t, () => parse('W', h`00 00 01`), /copy column format/);
});

test('ClientFramer: slab reads — split messages are framed from the slab without copying, byte-exact under any split', (t) => {
  // A stream of CopyData messages of assorted sizes, each with a distinct pattern.
  const msgs: Buffer[] = [];
  for (let i = 0; i < 60; i++) {
    const body = Buffer.alloc([1, 7, 300, 4096, 20_000, 131_072 + 25][i % 6]!);
    for (let j = 0; j < body.length; j++) body[j] = (i * 31 + j) & 0xff;
    msgs.push(backend.copyData(body));
  }
  const stream = Buffer.concat(msgs);
  for (const [seed, slabSize, maxRead, drainEvery] of [
    [1, 1 << 20, 1 << 20, 1],
    [2, 1 << 20, 70_000, 1],
    [3, 300_000, 300_000, 1],
    [4, 1 << 20, 50_000, 3], // paused reader: pushes pile up between drains
    [5, 200_000, 200_000, 4],
  ] as const) {
    let rnd: number = seed;
    const rand = (n: number): number => ((rnd = (rnd * 1103515245 + 12345) & 0x7fffffff) % n) + 1;
    const f = new ClientFramer();
    f.slabReads = true;
    // Like the client's SlabReader: reads land one after another in a slab
    // that is never written twice; a new slab when the tail gets short.
    let slab = Buffer.alloc(slabSize);
    let used = 0;
    const slabs = new Set<ArrayBufferLike>([slab.buffer]);
    const got: Buffer[] = [];
    let pushes = 0;
    for (let at = 0; at < stream.length; ) {
      if (slabSize - used < 1024) {
        slab = Buffer.alloc(slabSize);
        slabs.add(slab.buffer);
        used = 0;
      }
      const n = Math.min(rand(maxRead), slabSize - used, stream.length - at);
      stream.copy(slab, used, at, at + n);
      f.push(slab.subarray(used, used + n));
      used += n;
      at += n;
      if (++pushes % drainEvery === 0) for (let m = f.nextRaw(); m; m = f.nextRaw()) got.push(Buffer.concat([Buffer.from([m.code]), m.payload]));
    }
    for (let m = f.nextRaw(); m; m = f.nextRaw()) got.push(Buffer.concat([Buffer.from([m.code]), m.payload]));
    t.is(f.buffered, 0, `seed ${seed}`);
    t.is(got.length, msgs.length, `seed ${seed}`);
    t.true(
      got.every((g, i) => g.equals(Buffer.concat([msgs[i]!.subarray(0, 1), msgs[i]!.subarray(5)]))),
      `seed ${seed}: every message byte-exact`,
    );
  }
  // Two reads next to each other in one slab: the split message is a view of the slab.
  const f = new ClientFramer();
  f.slabReads = true;
  const slab = Buffer.alloc(1 << 16);
  const m = backend.copyData(Buffer.alloc(1000, 7));
  m.copy(slab, 0);
  f.push(slab.subarray(0, 400));
  t.is(f.nextRaw(), null);
  f.push(slab.subarray(400, m.length));
  const whole = f.nextRaw()!;
  t.is(whole.payload.buffer, slab.buffer, 'framed from the slab, not copied');
  // A read into a fresh slab completes the message: only that message is
  // copied; what follows it stays a view of the new slab.
  const g = new ClientFramer();
  g.slabReads = true;
  const a = Buffer.alloc(1 << 16);
  const b = Buffer.alloc(1 << 16);
  const two = Buffer.concat([m, m]);
  two.copy(a, 0, 0, 600);
  two.copy(b, 0, 600);
  g.push(a.subarray(0, 600));
  t.is(g.nextRaw(), null);
  g.push(b.subarray(0, two.length - 600));
  const first = g.nextRaw()!;
  const second = g.nextRaw()!;
  t.true(first.payload.equals(Buffer.alloc(1000, 7)));
  t.true(second.payload.equals(Buffer.alloc(1000, 7)));
  t.is(second.payload.buffer, b.buffer, 'the rest of the read is not copied');
  t.is(g.buffered, 0);
});
