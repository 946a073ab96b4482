// Issue 3 acceptance c: WAL of TLI 1 and TLI 2 (a promotion), imported with
// its .history file; pg_receivewal and a real standby follow from 1 to 2
// through the node.

import { spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

import test from 'ava';

import { formatLsn } from '../ts/index.js';
import {
  compareWalDirs,
  createTempDir,
  makeTimelineSwitch,
  registerCleanupHooks,
  startReceivewal,
  startStandby,
  startTestNode,
  type TempDir,
  type TestNode,
  type TimelineSwitch,
} from './harness/index.js';

registerCleanupHooks(test);

let sw: TimelineSwitch;
let node: TestNode;
let tmp: TempDir;

test.before(async () => {
  tmp = await createTempDir('walkeeper-tli-');
  sw = await makeTimelineSwitch({ walSegSizeMB: 1 });
  await sw.promoted.stop();
  node = await startTestNode({ importFrom: sw.promoted.walDir });
});

test.after.always(async () => {
  await node?.stop();
  await sw?.destroy();
  await tmp?.cleanup();
});

test.serial('import keeps both timelines and the history file; the node serves TLI 2', async (t) => {
  const s = node.node.stream();
  t.is(s.tli, 2);
  t.is(s.timelineEnd(1), sw.switchLsn);
  t.is(s.timelineEnd(2), null);
  t.is(await s.historyFile(2), await readFile(path.join(sw.promoted.walDir, '00000002.history'), 'utf8'));
  t.true(s.commitLsn >= sw.endLsn, `${formatLsn(s.commitLsn)} < ${formatLsn(sw.endLsn)}`);
});

test.serial('pg_receivewal starting on TLI 1 follows the switch to TLI 2 with files identical to the promoted server', async (t) => {
  const end = node.node.stream().commitLsn;
  const dir = path.join(tmp.path, 'rw');
  await mkdir(dir);
  const first = sw.files.tli1[0]!;
  await copyFile(path.join(sw.promoted.walDir, first), path.join(dir, first));
  const rw = startReceivewal({ host: node.host, port: node.port, dir, endpos: end - 1n, noLoop: true });
  const r = await rw.wait(60_000);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /switched to timeline 2 at /);
  const files = await rw.files();
  t.true(files.includes('00000002.history'), files.join(' '));
  t.true(files.includes(`${sw.files.tli1Switch.replace(/\.partial$/, '')}.partial`), files.join(' '));
  t.true(files.at(-1)!.startsWith('00000002') && files.at(-1)!.endsWith('.partial'), files.join(' '));
  const diffs = await compareWalDirs(dir, sw.promoted.walDir, { segSize: sw.walSegSize, endLsn: { 1: sw.switchLsn, 2: end }, segments: 'ours' });
  t.deepEqual(diffs, []);
});

test.serial('a standby on TLI 1 (a backup taken before the promotion) follows the node to TLI 2 and sees the rows written after it', async (t) => {
  const end = node.node.stream().commitLsn;
  const standby = await startStandby(sw.spare, { primaryConninfo: `${node.conninfo()} application_name=spare` });
  t.teardown(() => standby.destroy());
  await standby.waitReplayed(end, 60_000).catch(async (e: Error) => t.fail(`${e.message}\n${await standby.describe()}`));
  const [{ n }] = await standby.query<{ n: string }>('SELECT count(*) AS n FROM t');
  t.is(Number(n), sw.rowsAfter);
  const wr = await standby.walReceiver();
  t.is(wr?.receivedTli, 2, JSON.stringify(wr, (_k, v) => (typeof v === 'bigint' ? formatLsn(v) : v)));
});

test.serial('walkeeper receive, resuming a directory on TLI 1, follows the switch to TLI 2 like pg_receivewal', async (t) => {
  const end = node.node.stream().commitLsn;
  const dir = path.join(tmp.path, 'wkrx');
  await mkdir(dir);
  const first = sw.files.tli1[0]!;
  await copyFile(path.join(sw.promoted.walDir, first), path.join(dir, first));
  const bin = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'dist', 'cli', 'main.js');
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const p = spawn(process.execPath, [bin, 'receive', '--nodes', node.httpUrl, '-D', dir, '--endpos', formatLsn(end - 1n)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (b: Buffer) => (stderr += b));
    p.on('exit', (code) => resolve({ code, stderr }));
  });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /switched to timeline 2 at /);
  const files = await readdir(dir);
  t.true(files.includes('00000002.history'), files.join(' '));
  t.true(files.includes(`${sw.files.tli1Switch.replace(/\.partial$/, '')}.partial`), `the old timeline's switch segment stays .partial: ${files.join(' ')}`);
  const diffs = await compareWalDirs(dir, sw.promoted.walDir, { segSize: sw.walSegSize, endLsn: { 1: sw.switchLsn, 2: end }, segments: 'ours', partialTail: 'ignore' });
  t.deepEqual(diffs, []);
});
