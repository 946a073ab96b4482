// The names a restore_command is handed (%f), and the segment arithmetic of the prefetch.
import test from 'ava';

import { parseWalFileName, segmentAfter, segnoOf } from '../ts/lsn.js';

test('%f is a segment, a timeline history or a backup history file name; nothing else', (t) => {
  t.deepEqual(parseWalFileName('00000002000000010000003F'), { kind: 'segment', name: '00000002000000010000003F', tli: 2, hi: 1, lo: 0x3f });
  t.deepEqual(parseWalFileName('0000000A.history'), { kind: 'history', name: '0000000A.history', tli: 10 });
  t.deepEqual(parseWalFileName('000000010000000000000002.00000028.backup'), { kind: 'backup', name: '000000010000000000000002.00000028.backup' });
  for (const bad of ['', 'RECOVERYXLOG', '00000001000000000000003f', '000000010000000000000003.partial', '00000001000000000000000', '../000000010000000000000003', '00000002.history.tmp']) {
    t.is(parseWalFileName(bad), null, bad);
  }
});

test('segment numbers depend on the segment size; the next names cross the high half as XLogFileName does', (t) => {
  const f = parseWalFileName('000000010000000200000FFF');
  if (f?.kind !== 'segment') return t.fail();
  t.is(segnoOf(f, 1 << 20), 2n * 4096n + 4095n);
  t.is(segnoOf(f, 16 << 20), null, 'lo 0xFFF is past the 256 segments of 16 MiB per high half');
  t.is(segmentAfter(f, 1, 1 << 20), '000000010000000300000000');
  t.is(segmentAfter(f, 3, 1 << 20), '000000010000000300000002');
  const g = parseWalFileName('0000000300000000000000FF');
  if (g?.kind !== 'segment') return t.fail();
  t.is(segmentAfter(g, 1, 16 << 20), '000000030000000100000000');
});
