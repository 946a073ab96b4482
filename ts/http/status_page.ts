/**
 * The status page at `GET /`: one self-contained HTML document (no build
 * step, no CDN, nothing fetched but this node's own JSON). A table of the
 * streams, the most lagging first, searched by name and paged, so that a
 * node with a thousand streams stays readable; and the detail — LSNs,
 * upstream, cluster members, replicas with their lag, a chart of
 * throughput and lag over the last minutes — of the one stream opened,
 * whose history alone is fetched.
 */

/**
 * What the page and `walkeeper status` say of a node with no stream: the
 * ways to add one, so that a first look at an empty node tells what to do.
 * `httpUrl` is the node's HTTP address (no trailing slash).
 */
export function noStreamsHint(httpUrl: string): string {
  return (
    `No streams yet: follow a primary (walkeeper node --upstream 'host=… user=…'), ` +
    `import a pg_wal (walkeeper import --data-dir DIR [--stream NAME] /path/to/pg_wal, with the node stopped), ` +
    `or PUT ${httpUrl}/v1/streams/<name> with {"upstream": "<conninfo>"}`
  );
}

/** Rows per page of the stream table. */
const PAGE_SIZE = 50;

// (The script below is inside a template literal: it uses no backslash and
// no template literal of its own, which would be taken as this one's.)
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>walkeeper</title>
<style>
  :root { font: 14px/1.4 system-ui, sans-serif; color: #1d232a; background: #f6f7f9; }
  body { margin: 0 auto; max-width: 1200px; padding: 16px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 24px 0 8px; }
  .muted { color: #66707a; }
  .small { font-size: 12px; }
  .card { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px 16px; margin: 16px 0; }
  .lsns { display: flex; flex-wrap: wrap; gap: 24px; }
  .lsns div b { display: block; font: 600 18px/1.3 ui-monospace, monospace; }
  table { border-collapse: collapse; width: 100%; margin-top: 8px; }
  th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #eef0f2; font-variant-numeric: tabular-nums; }
  th { font-weight: 600; color: #4a545e; }
  td.mono { font-family: ui-monospace, monospace; }
  .num { text-align: right; }
  tr.sel td { background: #eef4fb; }
  a { color: #2b6cb0; }
  .bad { color: #b3261e; }
  .bar { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }
  .bar input[type=search] { font: inherit; padding: 4px 8px; width: 260px; border: 1px solid #c4cad1; border-radius: 4px; }
  .bar select, .bar button { font: inherit; }
  .close { float: right; text-decoration: none; font-size: 18px; line-height: 1; }
  svg { width: 100%; height: auto; display: block; }
  svg text { font: 12px system-ui, sans-serif; fill: #66707a; }
  .legend span { margin-right: 18px; white-space: nowrap; }
  .legend i { display: inline-block; width: 18px; margin: 0 5px 3px 0; border-top: 2px solid; vertical-align: middle; }
  .legend i.dash { border-top-style: dashed; }
</style>
</head>
<body>
<h1>walkeeper <span id="node" class="muted"></span></h1>
<div id="updated" class="muted">loading…</div>
<div id="empty" class="card" hidden></div>
<div id="detail"></div>
<div id="list" class="card" hidden>
  <div class="bar">
    <input id="q" type="search" placeholder="filter by stream name" autocomplete="off" aria-label="filter streams by name">
    <label>order <select id="sort"><option value="lag">lag, largest first</option><option value="name">name</option></select></label>
    <span id="shown" class="muted"></span>
    <span><button id="first" title="first page">«</button> <button id="prev">‹ previous</button> <span id="pageno" class="muted"></span> <button id="next">next ›</button> <button id="last" title="last page">»</button></span>
  </div>
  <table>
    <thead><tr><th>stream</th><th>state</th><th>flush_lsn</th><th>commit_lsn</th><th class="num">lag</th><th>upstream</th><th class="num">replicas</th><th class="num">members</th><th>problems</th></tr></thead>
    <tbody id="rows"></tbody>
  </table>
  <div class="muted small" style="margin-top:8px">lag: for a stream that follows an upstream, how far its flush_lsn is behind the upstream's end of WAL (<i>behind upstream</i>); otherwise the WAL flushed here but not yet on a quorum of the members, flush_lsn − commit_lsn (<i>not on quorum</i>). Open a stream for its members, replicas and chart.</div>
</div>
<script>
"use strict";
const PAGE = ${PAGE_SIZE};
const NO_STREAMS = ${JSON.stringify(noStreamsHint('{http}'))};
const MiB = 1048576;
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const lsn = (s) => { if (!s) return null; const [a, b] = s.split('/'); return BigInt('0x' + a) * 4294967296n + BigInt('0x' + b); };
const bytes = (n) => { n = Number(n); if (!isFinite(n)) return '-'; const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + ' ' + u[i]; };
const url = (name, rest) => 'v1/streams/' + encodeURIComponent(name) + (rest || '');

// The one lag a stream is ordered by: behind its upstream when it follows
// one that has said where its WAL ends, else not yet on a quorum.
function lagOf(s) {
  const up = s.upstream;
  if (up && up.lag_bytes !== null && up.lag_bytes !== undefined) return { bytes: BigInt(up.lag_bytes), kind: 'upstream', text: 'behind upstream' };
  const f = lsn(s.flush_lsn), c = lsn(s.commit_lsn) ?? f;
  return { bytes: f > c ? f - c : 0n, kind: 'quorum', text: 'not on quorum' };
}

function problems(s) {
  const out = [];
  if (s.storage_error) out.push('storage: ' + s.storage_error);
  if (s.commit_lsn_unknown_below) out.push('commit_lsn not known yet after a restart (until a quorum has flushed up to ' + s.commit_lsn_unknown_below + ')');
  const up = s.upstream;
  if (up && up.state !== 'streaming' && up.last_error) out.push('upstream ' + up.state + ': ' + up.last_error);
  if (s.offload && !s.offload.healthy) out.push('object storage ' + s.offload.location + ' fails' + (s.offload.last_error ? ': ' + s.offload.last_error : ''));
  for (const p of (s.cluster ? s.cluster.peers : [])) {
    if (p.error) out.push('member ' + p.peer + ': ' + p.error);
    else if (!p.flush_lsn) out.push('member ' + p.peer + ' never heard');
  }
  return out;
}

// ---- the chart ------------------------------------------------------------

// From 0 to at least max in about n round steps (1, 2 or 5 times a power of ten).
function scale(max, n) {
  if (!(max > 0)) max = 1;
  const raw = max / n, p = Math.pow(10, Math.floor(Math.log10(raw))), m = raw / p;
  const step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  const top = Math.ceil(max / step - 1e-9) * step;
  const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const ticks = [];
  for (let i = 0; i * step <= top + step / 2; i++) ticks.push(i * step);
  return { top, ticks, fmt: (v) => v.toFixed(dec) };
}

function byteUnit(max) {
  let u = ['B', 1];
  for (const x of [['KiB', 1024], ['MiB', MiB], ['GiB', 1024 * MiB], ['TiB', 1024 * 1024 * MiB]]) if (max >= x[1]) u = x;
  return u;
}

function chart(samples) {
  const pts = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = Math.max(0.001, (b.t - a.t) / 1000);
    const f = lsn(b.flushLsn), c = lsn(b.commitLsn);
    pts.push({
      t: b.t,
      rate: Math.max(0, (b.bytesReceived - a.bytesReceived) / dt) / MiB,
      sent: Math.max(0, (b.bytesSent - a.bytesSent) / dt) / MiB,
      lag: b.replicaLag,
      unconfirmed: Number(f > c ? f - c : 0n),
    });
  }
  if (pts.length === 0) return '<svg viewBox="0 0 1000 60" data-points="0"><text x="500" y="34" text-anchor="middle">collecting samples…</text></svg>';
  // Throughput on the left axis (MiB/s), lag on the right (in the unit its
  // largest value fits), each scaled on its own: lags of a few KiB next to
  // rates of tens of MiB/s would otherwise lie flat on the floor.
  const W = 1000, H = 240, L = 60, R = 64, T = 26, B = 26, PW = W - L - R, PH = H - T - B;
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  const left = scale(Math.max(...pts.map((p) => Math.max(p.rate, p.sent))), 4);
  const unit = byteUnit(Math.max(1024, ...pts.map((p) => Math.max(p.lag, p.unconfirmed))));
  const right = scale(Math.max(...pts.map((p) => Math.max(p.lag, p.unconfirmed))) / unit[1], 4);
  const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * PW : PW);
  const yl = (v) => T + PH - (v / left.top) * PH;
  const yr = (v) => T + PH - (v / unit[1] / right.top) * PH;
  const path = (f, y) => pts.map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(f(p)).toFixed(1)).join(' ');
  const line = (cls, d, color, dash) => '<path class="' + cls + '" d="' + d + '" fill="none" stroke="' + color + '" stroke-width="2"' + (dash ? ' stroke-dasharray="6 4"' : '') + '/>';
  let g = '<g class="axis-left"><text class="unit" x="' + (L - 8) + '" y="14" text-anchor="end" style="fill:#2b6cb0">MiB/s</text>' +
    left.ticks.map((v) => '<line x1="' + L + '" x2="' + (W - R) + '" y1="' + yl(v).toFixed(1) + '" y2="' + yl(v).toFixed(1) + '" stroke="#eef0f2"/>' +
      '<text class="tick" x="' + (L - 8) + '" y="' + (yl(v) + 4).toFixed(1) + '" text-anchor="end">' + left.fmt(v) + '</text>').join('') + '</g>';
  g += '<g class="axis-right"><text class="unit" x="' + (W - R + 8) + '" y="14" style="fill:#c05621">' + unit[0] + '</text>' +
    right.ticks.map((v) => { const y = T + PH - (v / right.top) * PH; return '<line x1="' + (W - R) + '" x2="' + (W - R + 4) + '" y1="' + y.toFixed(1) + '" y2="' + y.toFixed(1) + '" stroke="#c4cad1"/>' +
      '<text class="tick" x="' + (W - R + 8) + '" y="' + (y + 4).toFixed(1) + '">' + right.fmt(v) + '</text>'; }).join('') + '</g>';
  // Time ticks counted back from the newest sample, in round steps.
  const span = (t1 - t0) / 1000;
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find((s) => span / s <= 6) || 600;
  const ago = (s) => (s === 0 ? 'now' : '-' + (s >= 60 && s % 60 === 0 ? s / 60 + ' min' : s + ' s'));
  g += '<g class="axis-x"><line x1="' + L + '" x2="' + (W - R) + '" y1="' + (T + PH) + '" y2="' + (T + PH) + '" stroke="#c4cad1"/>';
  for (let s = 0; s <= span + 1e-6; s += step) {
    const xt = x(t1 - s * 1000).toFixed(1);
    g += '<line x1="' + xt + '" x2="' + xt + '" y1="' + (T + PH) + '" y2="' + (T + PH + 4) + '" stroke="#c4cad1"/><text class="tick" x="' + xt + '" y="' + (H - 6) + '" text-anchor="middle">' + ago(s) + '</text>';
  }
  g += '</g>';
  return '<svg viewBox="0 0 ' + W + ' ' + H + '" data-points="' + pts.length + '">' + g +
    line('rate', path((p) => p.rate, yl), '#2b6cb0') + line('sent', path((p) => p.sent, yl), '#2f855a', true) +
    line('lag', path((p) => p.lag, yr), '#c05621') + line('unconfirmed', path((p) => p.unconfirmed, yr), '#b3261e', true) + '</svg>' +
    '<div class="legend muted"><span><i style="color:#2b6cb0"></i>received from the upstream or peers, MiB/s (left)</span>' +
    '<span><i class="dash" style="color:#2f855a"></i>sent to replicas, MiB/s (left)</span>' +
    '<span><i style="color:#c05621"></i>slowest replica behind commit_lsn, ' + unit[0] + ' (right)</span>' +
    '<span><i class="dash" style="color:#b3261e"></i>flushed here, not yet on a quorum, ' + unit[0] + ' (right)</span></div>';
}

// ---- one stream, opened -----------------------------------------------------

function render(s, history) {
  const flush = lsn(s.flush_lsn), commit = lsn(s.commit_lsn) ?? 0n;
  const up = s.upstream;
  const off = s.offload;
  const lag = lagOf(s);
  const members = s.cluster && s.cluster.peers.length
    ? '<h2>Members (' + s.cluster.members + ', quorum ' + s.cluster.quorum + ')</h2><table><tr><th>peer</th><th>node</th><th>flush_lsn</th><th>commit_lsn</th><th>behind us</th><th></th></tr>' +
      s.cluster.peers.map((p) => '<tr><td>' + esc(p.peer) + '</td><td>' + esc(p.node_id ?? '?') + '</td><td class="mono">' + esc(p.flush_lsn ?? 'never heard') + '</td><td class="mono">' + esc(p.commit_lsn ?? '-') + '</td><td>' +
        (p.flush_lsn ? bytes(flush > lsn(p.flush_lsn) ? flush - lsn(p.flush_lsn) : 0n) : '-') + '</td><td class="bad">' + esc(p.error ?? '') + '</td></tr>').join('') + '</table>'
    : '';
  const replicas = '<h2>Replicas (' + s.replicas.length + ')</h2>' + (s.replicas.length
    ? '<table><tr><th>client</th><th>state</th><th>sent_lsn</th><th>flush_lsn</th><th>lag</th></tr>' +
      s.replicas.map((r) => { const f = lsn(r.flush_lsn); return '<tr><td>' + esc((r.application_name || 'unnamed') + '@' + r.address) + (r.recovery ? ' (recovery)' : '') + '</td><td>' + esc(r.state) + '</td><td class="mono">' + esc(r.sent_lsn) + '</td><td class="mono">' + esc(r.flush_lsn) + '</td><td>' + (f ? bytes(commit > f ? commit - f : 0n) : '-') + '</td></tr>'; }).join('') + '</table>'
    : '<div class="muted">none connected</div>');
  return '<div class="card" data-stream="' + esc(s.name) + '">' + (streams.length > 1 ? '<a class="close" href="#" title="close">×</a>' : '') +
    '<h2 style="margin-top:0">' + esc(s.name) + ' <span class="muted">' + esc(s.state) + ', timeline ' + esc(s.tli) + '</span></h2>' +
    '<div class="lsns"><div>flush_lsn<b class="flush">' + esc(s.flush_lsn) + '</b></div><div>commit_lsn<b class="commit">' + esc(s.commit_lsn) + '</b></div>' +
    '<div>lag, ' + lag.text + '<b class="lag">' + bytes(lag.bytes) + '</b></div><div>oldest held<b>' + esc(s.oldest_lsn ?? '-') + '</b></div>' +
    '<div>upstream<b>' + (up ? esc(up.state) : '-') + '</b></div>' +
    (off ? '<div>backup_lsn<b class="backup">' + esc(off.backup_lsn ?? 'none yet') + '</b></div><div>not yet offloaded<b>' + bytes(off.lag_bytes) + '</b></div>' +
      '<div>offloader<b>' + (off.offloader_node_id === null ? 'none' : 'node ' + esc(off.offloader_node_id) + (off.active ? ' (this node)' : '')) + '</b></div>' : '') + '</div>' +
    problems(s).map((p) => '<div class="bad">' + esc(p) + '</div>').join('') +
    '<h2>Throughput and lag</h2><div class="chart">' + chart(history) + '</div>' + members + replicas + '</div>';
}

// ---- the table ----------------------------------------------------------------

let streams = [];
let page = 0;

// The opened stream: named in the address (#stream=<name>, so that it can be
// linked and survives a reload), or the only one.
function opened() {
  const h = location.hash.startsWith('#stream=') ? decodeURIComponent(location.hash.slice(8)) : '';
  return h || (streams.length === 1 ? streams[0].name : null);
}

const byLag = (a, b) => (a.lag.bytes > b.lag.bytes ? -1 : a.lag.bytes < b.lag.bytes ? 1 : byName(a, b));
const byName = (a, b) => (a.s.name < b.s.name ? -1 : a.s.name > b.s.name ? 1 : 0);

function renderList() {
  $('#empty').hidden = streams.length > 0;
  $('#list').hidden = streams.length === 0;
  if (streams.length === 0) {
    $('#empty').textContent = NO_STREAMS.replace('{http}', new URL('.', location.href).href.replace(/[/]$/, ''));
    return;
  }
  const q = $('#q').value.trim().toLowerCase();
  const rows = streams.map((s) => ({ s, lag: lagOf(s) })).filter((r) => !q || r.s.name.toLowerCase().includes(q));
  rows.sort($('#sort').value === 'name' ? byName : byLag);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  page = Math.max(0, Math.min(page, pages - 1));
  const first = page * PAGE, slice = rows.slice(first, first + PAGE);
  const sel = opened();
  $('#shown').textContent = rows.length
    ? 'showing ' + (first + 1) + '–' + (first + slice.length) + ' of ' + rows.length + (q ? ' matching (' + streams.length + ' in all)' : ' streams')
    : 'no stream name contains "' + q + '" (' + streams.length + ' in all)';
  $('#pageno').textContent = 'page ' + (page + 1) + ' of ' + pages;
  $('#first').disabled = $('#prev').disabled = page === 0;
  $('#last').disabled = $('#next').disabled = page >= pages - 1;
  $('#rows').innerHTML = slice.map(({ s, lag }) => {
    const up = s.upstream;
    const bad = problems(s);
    return '<tr data-row="' + esc(s.name) + '"' + (s.name === sel ? ' class="sel"' : '') + '><td><a href="#stream=' + esc(encodeURIComponent(s.name)) + '">' + esc(s.name) + '</a></td>' +
      '<td>' + esc(s.state) + '</td><td class="mono">' + esc(s.flush_lsn) + '</td><td class="mono">' + esc(s.commit_lsn) + '</td>' +
      '<td class="num lag" data-bytes="' + lag.bytes + '" data-kind="' + lag.kind + '">' + bytes(lag.bytes) + ' <span class="muted small">' + lag.text + '</span></td>' +
      '<td>' + (up ? esc(up.state) + (up.connected_to ? ' ' + esc(up.connected_to) : '') : '-') + '</td><td class="num">' + s.replicas.length + '</td>' +
      '<td class="num">' + (s.cluster ? s.cluster.members : 1) + '</td><td class="bad small">' + esc(bad[0] ?? '') + (bad.length > 1 ? ' (+' + (bad.length - 1) + ' more)' : '') + '</td></tr>';
  }).join('');
}

let detailFor = null;
async function refreshDetail() {
  const name = opened();
  if (!name) {
    detailFor = null;
    $('#detail').innerHTML = '';
    return;
  }
  const [r, h] = await Promise.all([fetch(url(name), { cache: 'no-store' }), fetch(url(name, '/history'), { cache: 'no-store' })]);
  if (name !== opened()) return; // another stream was opened meanwhile
  if (r.status === 404) {
    $('#detail').innerHTML = '<div class="card bad">stream ' + esc(name) + ' does not exist on this node</div>';
  } else {
    const scroll = detailFor !== name && streams.length > 1;
    $('#detail').innerHTML = render(await r.json(), await h.json());
    if (scroll) $('#detail').scrollIntoView({ block: 'nearest' });
  }
  detailFor = name;
}

// The list is the node's whole state (about 1.3 KiB a stream): with many
// streams it is asked for less often, the opened stream still every second.
let listedAt = 0;
async function refresh() {
  try {
    if (Date.now() - listedAt >= Math.min(5000, Math.max(1000, streams.length * 5))) {
      streams = await (await fetch('v1/streams', { cache: 'no-store' })).json();
      listedAt = Date.now();
      $('#node').textContent = streams.length ? 'node ' + streams[0].node_id + ' · ' + streams[0].pg_address + ' · ' + streams.length + ' stream' + (streams.length === 1 ? '' : 's') : '';
      renderList();
    }
    await refreshDetail();
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('#updated').classList.remove('bad');
  } catch (e) {
    $('#updated').textContent = 'cannot reach the node: ' + e.message;
    $('#updated').classList.add('bad');
  }
  setTimeout(refresh, 1000);
}

$('#q').addEventListener('input', () => { page = 0; renderList(); });
$('#sort').addEventListener('change', () => { page = 0; renderList(); });
$('#first').addEventListener('click', () => { page = 0; renderList(); });
$('#prev').addEventListener('click', () => { page--; renderList(); });
$('#next').addEventListener('click', () => { page++; renderList(); });
$('#last').addEventListener('click', () => { page = Infinity; renderList(); });
window.addEventListener('hashchange', () => { renderList(); refreshDetail().catch(() => {}); });
refresh();
</script>
</body>
</html>
`;
