// Issue 7 acceptance c: the status page at GET / in a real headless
// Chromium (Debian's chromium, driven by playwright-core): it loads with no
// request leaving the node, shows the node's current commit_lsn, and its
// chart of throughput and lag updates as WAL flows.

import { existsSync } from 'node:fs';
import path from 'node:path';

import test from 'ava';
import { chromium } from 'playwright-core';

import { createTempDir, registerCleanupHooks, runPgTool, startNodeProcess, startPostgres, until, type TempDir } from './harness/index.js';

registerCleanupHooks(test);

const CHROMIUM = process.env.WALKEEPER_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'].find((p) => existsSync(p));
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-page-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

test('the status page shows the current commit_lsn and a live chart, with nothing fetched from elsewhere', async (t) => {
  if (!CHROMIUM) return t.fail('neither chromium nor google-chrome is installed (apt-get install chromium, or set WALKEEPER_CHROMIUM); .ci/run installs it');
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'n'), upstream: `host=127.0.0.1 port=${pg.port} user=postgres` });
  t.teardown(() => node.kill());
  await runPgTool('pgbench', ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
  await until(async () => (await node.status())?.upstream?.state === 'streaming', 'the node to follow');

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  const elsewhere: string[] = [];
  const errors: string[] = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(node.httpUrl)) elsewhere.push(r.url());
  });
  page.on('pageerror', (e) => errors.push(e.message));
  const res = await page.goto(`${node.httpUrl}/`);
  t.is(res?.status(), 200);
  t.regex(res?.headers()['content-type'] ?? '', /^text\/html/);

  // Quiet: the page's commit_lsn equals the node's.
  await page.waitForSelector('[data-stream="main"] .commit', { timeout: 15_000 });
  await until(async () => {
    const want = (await node.status())!.commit_lsn;
    return (await page.textContent('[data-stream="main"] .commit')) === want;
  }, 'the page to show the current commit_lsn', 15_000);
  t.is(await page.textContent('[data-stream="main"] .commit'), (await node.status())!.commit_lsn);

  // WAL flows: the chart gains points and its throughput line changes.
  const before = { points: Number(await page.getAttribute('[data-stream="main"] svg', 'data-points')), d: await page.getAttribute('[data-stream="main"] path.rate', 'd') };
  await runPgTool('pgbench', ['-c', '2', '-T', '3', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
  await until(async () => Number(await page.getAttribute('[data-stream="main"] svg', 'data-points')) >= before.points + 3, 'the chart to gain points', 15_000);
  const after = await page.getAttribute('[data-stream="main"] path.rate', 'd');
  t.not(after, before.d, 'the throughput line changed');
  await until(async () => (await page.textContent('[data-stream="main"] .commit')) === (await node.status())!.commit_lsn, 'the page to follow commit_lsn', 15_000);
  t.deepEqual(elsewhere, [], 'no request left the node (no CDN)');
  t.deepEqual(errors, []);
});

test('with remote storage the page shows backup_lsn and the offloader', async (t) => {
  if (!CHROMIUM) return t.fail('neither chromium nor google-chrome is installed (apt-get install chromium, or set WALKEEPER_CHROMIUM); .ci/run installs it');
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'o'), upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, extraArgs: ['--remote-storage', `file://${path.join(tmp.path, 'archive')}`] });
  t.teardown(() => node.kill());
  await runPgTool('pgbench', ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
  await until(async () => typeof (await node.status())?.backup_lsn === 'string', 'a first segment offloaded', 30_000);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${node.httpUrl}/`);
  await page.waitForSelector('[data-stream="main"] .backup', { timeout: 15_000 });
  await until(async () => (await page.textContent('[data-stream="main"] .backup')) === (await node.status())!.backup_lsn, 'the page to show backup_lsn', 15_000);
  t.regex((await page.textContent('[data-stream="main"]')) ?? '', /offloader\s*node 1 \(this node\)/);
});
