/**
 * The status page at `GET /`: one self-contained HTML document (no build
 * step, no CDN, nothing fetched but this node's own JSON). Per stream: the
 * LSNs, the upstream, the cluster members, the replicas with their lag, and
 * a chart of throughput and lag over the last minutes, refreshed every
 * second from /v1/streams and /v1/streams/<name>/history.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>walkeeper</title>
<style>
  :root { font: 14px/1.4 system-ui, sans-serif; color: #1d232a; background: #f6f7f9; }
  body { margin: 0 auto; max-width: 1100px; padding: 16px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 24px 0 8px; }
  .muted { color: #66707a; }
  .card { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px 16px; margin-bottom: 16px; }
  .lsns { display: flex; flex-wrap: wrap; gap: 24px; }
  .lsns div b { display: block; font: 600 18px/1.3 ui-monospace, monospace; }
  table { border-collapse: collapse; width: 100%; margin-top: 8px; }
  th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #eef0f2; font-variant-numeric: tabular-nums; }
  th { font-weight: 600; color: #4a545e; }
  td.mono { font-family: ui-monospace, monospace; }
  .bad { color: #b3261e; }
  svg { width: 100%; height: 160px; display: block; }
  .legend span { margin-right: 16px; }
  .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
</style>
</head>
<body>
<h1>walkeeper <span id="node" class="muted"></span></h1>
<div id="updated" class="muted">loading…</div>
<div id="streams"></div>
<script>
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const lsn = (s) => { if (!s) return null; const [a, b] = s.split('/'); return BigInt('0x' + a) * 4294967296n + BigInt('0x' + b); };
const bytes = (n) => { n = Number(n); if (!isFinite(n)) return '-'; const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + ' ' + u[i]; };

function chart(samples) {
  // Two series on one time axis: WAL received per second (left scale) and
  // the slowest replica's lag behind commit_lsn (right scale).
  const W = 1000, H = 160, P = 4;
  const pts = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = Math.max(0.001, (b.t - a.t) / 1000);
    pts.push({ t: b.t, rate: Math.max(0, (b.bytesReceived - a.bytesReceived) / dt), lag: b.replicaLag });
  }
  if (pts.length === 0) return '<svg viewBox="0 0 ' + W + ' ' + H + '" data-points="0"></svg>';
  const t0 = pts[0].t, t1 = Math.max(pts[pts.length - 1].t, t0 + 1);
  const maxRate = Math.max(1, ...pts.map((p) => p.rate)), maxLag = Math.max(1, ...pts.map((p) => p.lag));
  const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
  const y = (v, m) => H - P - (v / m) * (H - 2 * P);
  const path = (f, m) => pts.map((p, i) => (i ? 'L' : 'M') + x(p.t).toFixed(1) + ' ' + y(f(p), m).toFixed(1)).join(' ');
  return '<svg viewBox="0 0 ' + W + ' ' + H + '" preserveAspectRatio="none" data-points="' + pts.length + '">' +
    '<path class="rate" d="' + path((p) => p.rate, maxRate) + '" fill="none" stroke="#2b6cb0" stroke-width="2" vector-effect="non-scaling-stroke"/>' +
    '<path class="lag" d="' + path((p) => p.lag, maxLag) + '" fill="none" stroke="#c05621" stroke-width="2" vector-effect="non-scaling-stroke"/></svg>' +
    '<div class="legend muted"><span><i style="background:#2b6cb0"></i>received, up to ' + bytes(maxRate) + '/s</span>' +
    '<span><i style="background:#c05621"></i>replica lag, up to ' + bytes(maxLag) + '</span>' +
    '<span>last ' + Math.round((t1 - t0) / 1000) + ' s</span></div>';
}

function render(s, history) {
  const flush = lsn(s.flush_lsn), commit = lsn(s.commit_lsn);
  const up = s.upstream;
  const off = s.offload;
  const members = s.cluster && s.cluster.peers.length
    ? '<h2>Members (' + s.cluster.members + ', quorum ' + s.cluster.quorum + ')</h2><table><tr><th>peer</th><th>node</th><th>flush_lsn</th><th>commit_lsn</th><th>behind us</th><th></th></tr>' +
      s.cluster.peers.map((p) => '<tr><td>' + esc(p.peer) + '</td><td>' + esc(p.node_id ?? '?') + '</td><td class="mono">' + esc(p.flush_lsn ?? 'never heard') + '</td><td class="mono">' + esc(p.commit_lsn ?? '-') + '</td><td>' +
        (p.flush_lsn ? bytes(flush > lsn(p.flush_lsn) ? flush - lsn(p.flush_lsn) : 0n) : '-') + '</td><td class="bad">' + esc(p.error ?? '') + '</td></tr>').join('') + '</table>'
    : '';
  const replicas = '<h2>Replicas (' + s.replicas.length + ')</h2>' + (s.replicas.length
    ? '<table><tr><th>client</th><th>state</th><th>sent_lsn</th><th>flush_lsn</th><th>lag</th></tr>' +
      s.replicas.map((r) => { const f = lsn(r.flush_lsn); return '<tr><td>' + esc((r.application_name || 'unnamed') + '@' + r.address) + (r.recovery ? ' (recovery)' : '') + '</td><td>' + esc(r.state) + '</td><td class="mono">' + esc(r.sent_lsn) + '</td><td class="mono">' + esc(r.flush_lsn) + '</td><td>' + (f ? bytes(commit > f ? commit - f : 0n) : '-') + '</td></tr>'; }).join('') + '</table>'
    : '<div class="muted">none connected</div>');
  return '<div class="card" data-stream="' + esc(s.name) + '"><h2 style="margin-top:0">' + esc(s.name) + ' <span class="muted">' + esc(s.state) + ', timeline ' + esc(s.tli) + '</span></h2>' +
    '<div class="lsns"><div>flush_lsn<b class="flush">' + esc(s.flush_lsn) + '</b></div><div>commit_lsn<b class="commit">' + esc(s.commit_lsn) + '</b></div>' +
    '<div>not yet on a quorum<b>' + bytes(flush - commit) + '</b></div><div>oldest held<b>' + esc(s.oldest_lsn ?? '-') + '</b></div>' +
    '<div>upstream<b>' + (up ? esc(up.state) + (up.lag_bytes ? ', ' + bytes(up.lag_bytes) + ' behind' : '') : '-') + '</b></div>' +
    (off ? '<div>backup_lsn<b class="backup">' + esc(off.backup_lsn ?? 'none yet') + '</b></div><div>not yet offloaded<b>' + bytes(off.lag_bytes) + '</b></div>' +
      '<div>offloader<b>' + (off.offloader_node_id === null ? 'none' : 'node ' + esc(off.offloader_node_id) + (off.active ? ' (this node)' : '')) + '</b></div>' : '') + '</div>' +
    (up && up.last_error && up.state !== 'streaming' ? '<div class="bad">' + esc(up.last_error) + '</div>' : '') +
    (off && !off.healthy ? '<div class="bad">object storage ' + esc(off.location) + ' fails, WAL accumulates locally: ' + esc(off.last_error ?? '') + '</div>' : '') +
    '<h2>Throughput and lag</h2><div class="chart">' + chart(history) + '</div>' + members + replicas + '</div>';
}

async function refresh() {
  try {
    const streams = await (await fetch('v1/streams', { cache: 'no-store' })).json();
    const histories = await Promise.all(streams.map((s) => fetch('v1/streams/' + encodeURIComponent(s.name) + '/history', { cache: 'no-store' }).then((r) => r.json())));
    $('#node').textContent = streams.length ? 'node ' + streams[0].node_id + ' · ' + streams[0].pg_address : '';
    $('#streams').innerHTML = streams.length ? streams.map((s, i) => render(s, histories[i])).join('') : '<div class="card muted">No streams yet.</div>';
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('#updated').classList.remove('bad');
  } catch (e) {
    $('#updated').textContent = 'cannot reach the node: ' + e.message;
    $('#updated').classList.add('bad');
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
`;
