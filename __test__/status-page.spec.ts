// Issue 7 acceptance c: the status page at GET / in a real headless
// Chromium (Debian's chromium, driven by playwright-core): it loads with no
// request leaving the node, shows the node's current commit_lsn, and its
// chart of throughput and lag updates as WAL flows. Issue 20: a node with
// many streams — the table is paged, searched and ordered by lag, and only
// the opened stream's history is fetched; a node with none says how to add one.

import { existsSync } from 'node:fs';
import path from 'node:path';

import test, { type ExecutionContext } from 'ava';
import { chromium, type Page } from 'playwright-core';

import {
  createTempDir,
  nodeWithLaggingStreams,
  registerCleanupHooks,
  runCli,
  runPgTool,
  startNodeProcess,
  startPostgres,
  until,
  type TempDir,
} from './harness/index.js';

registerCleanupHooks(test);

const CHROMIUM = process.env.WALKEEPER_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'].find((p) => existsSync(p));
let tmp: TempDir;
test.before(async () => {
  tmp = await createTempDir('walkeeper-page-');
});
test.after.always(async () => {
  await tmp?.cleanup();
});

const NO_CHROMIUM = 'neither chromium nor google-chrome is installed (apt-get install chromium, or set WALKEEPER_CHROMIUM); .ci/run installs it';

async function newPage(t: ExecutionContext): Promise<Page> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  t.teardown(() => browser.close());
  return browser.newPage();
}

interface Chart {
  units: { left: string; right: string };
  /** Each axis's ticks, bottom up: the value written and the height drawn at. */
  left: { v: number; y: number }[];
  right: { v: number; y: number }[];
  /** The time ticks, left to right. */
  time: { x: number; label: string }[];
  series: Record<string, { x: number; y: number }[]>;
}

/**
 * The opened stream's chart as drawn, from its SVG markup (parsed here: a
 * function handed to the page would carry tsx's helpers, unknown there).
 */
async function chartOf(page: Page, stream: string): Promise<Chart> {
  const html = await page.innerHTML(`[data-stream="${stream}"] .chart`);
  const group = (cls: string) => html.match(new RegExp(`<g class="${cls}">(.*?)</g>`))?.[1] ?? '';
  const ticks = (g: string) =>
    [...g.matchAll(/<line x1="([\d.]+)"[^>]*? y1="([\d.]+)"[^>]*?(?:\/>|><\/line>)<text class="tick"[^>]*>([^<]*)<\/text>/g)].map((m) => ({ x: Number(m[1]), y: Number(m[2]), label: m[3]! }));
  const unit = (g: string) => g.match(/<text class="unit"[^>]*>([^<]*)<\/text>/)?.[1] ?? '';
  const series: Chart['series'] = {};
  for (const m of html.matchAll(/<path class="(\w+)" d="([^"]*)"/g)) {
    series[m[1]!] = m[2]!.split(/[ML]/).filter((p) => p.trim()).map((p) => {
      const [x, y] = p.trim().split(' ').map(Number);
      return { x: x!, y: y! };
    });
  }
  const axis = (g: string) => ticks(g).map((k) => ({ v: Number(k.label), y: k.y }));
  return { units: { left: unit(group('axis-left')), right: unit(group('axis-right')) }, left: axis(group('axis-left')), right: axis(group('axis-right')), time: ticks(group('axis-x')).sort((a, b) => a.x - b.x), series };
}

/** The value a point of a series drawn against `axis` stands for. */
function valueAt(axis: Chart['left'], y: number): number {
  const [bottom, top] = [axis[0]!, axis[axis.length - 1]!];
  return ((bottom.y - y) / (bottom.y - top.y)) * top.v;
}

/**
 * Throughput against the left axis in MiB/s, lag against the right one in
 * a unit of bytes; each axis from 0 in even steps up to the first step at
 * or above its own largest point; time ticks back from "now" at the newest
 * point, all at one scale.
 */
function checkChart(t: ExecutionContext, c: Chart): void {
  t.is(c.units.left, 'MiB/s');
  t.regex(c.units.right, /^(KiB|MiB|GiB|TiB)$/);
  for (const [axis, names] of [
    [c.left, ['rate', 'sent']],
    [c.right, ['lag', 'unconfirmed']],
  ] as const) {
    t.true(axis.length >= 2, JSON.stringify(axis));
    t.is(axis[0]!.v, 0);
    const dv = axis[1]!.v - axis[0]!.v;
    const dy = axis[1]!.y - axis[0]!.y;
    t.true(dv > 0 && dy < 0, JSON.stringify(axis));
    axis.forEach((k, i) => t.true(Math.abs(k.v - i * dv) < dv * 1e-6 && Math.abs(k.y - (axis[0]!.y + i * dy)) < 0.2, JSON.stringify(axis)));
    const pts = names.flatMap((n) => c.series[n] ?? []);
    t.true(pts.length > 0, `series ${names.join(', ')} drawn`);
    const [bottom, top] = [axis[0]!.y, axis[axis.length - 1]!.y];
    t.true(pts.every((p) => p.y >= top - 0.1 && p.y <= bottom + 0.1), 'every point within its axis');
    const highest = Math.min(...pts.map((p) => p.y));
    if (highest < bottom - 0.1) t.true(highest < axis[axis.length - 2]!.y, `the ${names.join('/')} axis goes no further than its largest point needs`);
  }
  const now = c.time[c.time.length - 1]!;
  t.is(now.label, 'now');
  t.true(Math.abs(now.x - c.series.rate![c.series.rate!.length - 1]!.x) < 0.2, '"now" is the newest point');
  const back = c.time.slice(0, -1).map((k) => {
    const m = /^-(\d+) (s|min)$/.exec(k.label);
    t.truthy(m, k.label);
    return { x: k.x, s: Number(m?.[1]) * (m?.[2] === 'min' ? 60 : 1) };
  });
  t.true(back.length > 0, JSON.stringify(c.time));
  const perSecond = back.map((k) => (now.x - k.x) / k.s);
  t.true(perSecond.every((v) => Math.abs(v - perSecond[0]!) < perSecond[0]! * 0.01), `one time scale: ${JSON.stringify(c.time)}`);
}

test('the status page shows the current commit_lsn and a live chart, with nothing fetched from elsewhere', async (t) => {
  if (!CHROMIUM) return t.fail(NO_CHROMIUM);
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'n'), upstream: `host=127.0.0.1 port=${pg.port} user=postgres` });
  t.teardown(() => node.kill());
  await runPgTool('pgbench', ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
  await until(async () => (await node.status())?.upstream?.state === 'streaming', 'the node to follow');

  const page = await newPage(t);
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
  checkChart(t, await chartOf(page, 'main'));
  // The only stream is opened without asking; it follows an upstream, so its lag is the upstream's.
  await until(async () => (await page.getAttribute('[data-row="main"] .lag', 'data-kind')) === 'upstream', 'the lag behind the upstream', 15_000);
  t.regex((await page.textContent('[data-stream="main"]')) ?? '', /lag, behind upstream/);
  await until(async () => (await page.textContent('[data-stream="main"] .commit')) === (await node.status())!.commit_lsn, 'the page to follow commit_lsn', 15_000);
  t.deepEqual(elsewhere, [], 'no request left the node (no CDN)');
  t.deepEqual(errors, []);
});

test('with remote storage the page shows backup_lsn and the offloader', async (t) => {
  if (!CHROMIUM) return t.fail(NO_CHROMIUM);
  const pg = await startPostgres({ walSegSizeMB: 1, conf: { wal_keep_size: '512MB' } });
  t.teardown(() => pg.destroy());
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'o'), upstream: `host=127.0.0.1 port=${pg.port} user=postgres`, extraArgs: ['--remote-storage', `file://${path.join(tmp.path, 'archive')}`] });
  t.teardown(() => node.kill());
  await runPgTool('pgbench', ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { check: true });
  await until(async () => typeof (await node.status())?.backup_lsn === 'string', 'a first segment offloaded', 30_000);
  const page = await newPage(t);
  await page.goto(`${node.httpUrl}/`);
  await page.waitForSelector('[data-stream="main"] .backup', { timeout: 15_000 });
  await until(async () => (await page.textContent('[data-stream="main"] .backup')) === (await node.status())!.backup_lsn, 'the page to show backup_lsn', 15_000);
  t.regex((await page.textContent('[data-stream="main"]')) ?? '', /offloader\s*node 1 \(this node\)/);
});

test('with 120 streams the page shows 50 at a time, the most lagging first, finds them by name, and fetches the history of the opened stream only', async (t) => {
  if (!CHROMIUM) return t.fail(NO_CHROMIUM);
  const { node, streams } = await nodeWithLaggingStreams(path.join(tmp.path, 'many'), 120, 512);
  t.teardown(() => node.kill());
  const byLag = [...streams].sort((a, b) => (a.lag > b.lag ? -1 : a.lag < b.lag ? 1 : a.name < b.name ? -1 : 1));
  const want = (list: { name: string; lag: bigint }[]) => list.map((s) => `${s.name} ${s.lag}`);

  const page = await newPage(t);
  const histories: string[] = [];
  const errors: string[] = [];
  page.on('request', (r) => {
    const m = /^\/v1\/streams\/([^/]+)\/history$/.exec(new URL(r.url()).pathname);
    if (m) histories.push(decodeURIComponent(m[1]!));
  });
  page.on('pageerror', (e) => errors.push(e.message));
  /** The rows on show: name and the lag in bytes they were ordered by. */
  const rows = async () => [...(await page.innerHTML('#rows')).matchAll(/<tr data-row="([^"]+)".*?data-bytes="(\d+)"/g)].map((m) => `${m[1]} ${m[2]}`);
  await page.goto(`${node.httpUrl}/`);
  await until(async () => (await page.textContent('#shown')) === 'showing 1–50 of 120 streams', 'the first page', 15_000);

  // Paging, by lag (the node's flush_lsn − commit_lsn; ties by name).
  t.deepEqual(await rows(), want(byLag.slice(0, 50)));
  t.is(await page.getAttribute('#rows tr:first-child .lag', 'data-kind'), 'quorum');
  t.regex((await page.textContent('#rows tr:first-child .lag')) ?? '', /^30 KiB not on quorum$/);
  t.is(await page.textContent('#pageno'), 'page 1 of 3');
  t.true(await page.isDisabled('#prev'));
  await page.click('#next');
  t.is(await page.textContent('#shown'), 'showing 51–100 of 120 streams');
  t.deepEqual(await rows(), want(byLag.slice(50, 100)));
  await page.click('#last');
  t.is(await page.textContent('#shown'), 'showing 101–120 of 120 streams');
  t.is(await page.textContent('#pageno'), 'page 3 of 3');
  t.deepEqual(await rows(), want(byLag.slice(100)));
  t.true(await page.isDisabled('#next'));

  // Search: a substring of the name, any case, from the first page.
  await page.fill('#q', 'BILLING');
  t.is(await page.textContent('#shown'), 'showing 1–40 of 40 matching (120 in all)');
  t.deepEqual(await rows(), want(byLag.filter((s) => s.name.includes('billing'))));
  await page.fill('#q', 'dit-01');
  t.deepEqual(await rows(), want(byLag.filter((s) => /^audit-01/.test(s.name))));
  t.is((await rows()).length, 3);
  await page.fill('#q', 'no-such');
  t.deepEqual(await rows(), []);
  t.is(await page.textContent('#shown'), 'no stream name contains "no-such" (120 in all)');
  await page.fill('#q', '');
  t.deepEqual(await rows(), want(byLag.slice(0, 50)));
  await page.selectOption('#sort', 'name');
  t.deepEqual(await rows(), want([...streams].sort((a, b) => (a.name < b.name ? -1 : 1)).slice(0, 50)));
  await page.selectOption('#sort', 'lag');

  // Nothing opened, no history asked for; opening one asks for its own only.
  t.deepEqual(histories, []);
  t.is(await page.locator('#detail [data-stream]').count(), 0);
  const open = byLag[2]!;
  await page.click(`[data-row="${open.name}"] a`);
  await page.waitForSelector(`[data-stream="${open.name}"] .commit`, { timeout: 15_000 });
  t.is(await page.textContent(`[data-stream="${open.name}"] .commit`), (await node.status(open.name))!.commit_lsn);
  t.is(await page.locator('#detail [data-stream]').count(), 1);
  t.is(await page.getAttribute(`[data-row="${open.name}"]`, 'class'), 'sel');
  t.regex((await page.textContent(`[data-stream="${open.name}"]`)) ?? '', /member http:\/\/127\.0\.0\.1:\d+ never heard/);
  await until(async () => Number(await page.getAttribute(`[data-stream="${open.name}"] svg`, 'data-points')) >= 2, 'a chart', 15_000);
  const c = await chartOf(page, open.name);
  checkChart(t, c);
  // Its lag, held still by the absent member, is the dashed line: in KiB on the right axis.
  t.is(c.units.right, 'KiB');
  for (const p of c.series.unconfirmed!) t.true(Math.abs(valueAt(c.right, p.y) - Number(open.lag) / 1024) < 0.01 * c.right[c.right.length - 1]!.v, `${valueAt(c.right, p.y)} KiB drawn for ${open.lag} bytes`);
  t.deepEqual([...new Set(histories)], [open.name]);

  // Closed: the page stops asking for it.
  await page.click(`[data-stream="${open.name}"] .close`);
  await until(async () => (await page.locator('#detail [data-stream]').count()) === 0, 'the detail to close', 5_000);
  const asked = histories.length;
  await new Promise((r) => setTimeout(r, 2500));
  t.is(histories.length, asked);
  t.is(await page.textContent('#shown'), 'showing 1–50 of 120 streams');
  t.deepEqual(errors, []);
});

test('a node with no stream says in one line how to add one, on the page and in walkeeper status alike', async (t) => {
  if (!CHROMIUM) return t.fail(NO_CHROMIUM);
  const node = await startNodeProcess({ dataDir: path.join(tmp.path, 'empty') });
  t.teardown(() => node.kill());
  const page = await newPage(t);
  await page.goto(`${node.httpUrl}/`);
  await page.waitForSelector('#empty', { state: 'visible', timeout: 15_000 });
  t.true(await page.isHidden('#list'));
  const hint = (await page.textContent('#empty')) ?? '';
  t.regex(hint, /^No streams yet: /);
  t.true(hint.includes("follow a primary (walkeeper node --upstream 'host=… user=…')"), hint);
  t.true(hint.includes('import a pg_wal (walkeeper import --data-dir DIR [--stream NAME] /path/to/pg_wal, with the node stopped)'), hint);
  t.true(hint.endsWith(`or PUT ${node.httpUrl}/v1/streams/<name> with {"upstream": "<conninfo>"}`), hint);

  const out = await runCli(['status', '--http', node.httpUrl]);
  t.is(out.code, 0, out.stderr);
  t.is(out.stdout, `${hint}\n`);
});
