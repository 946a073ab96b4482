/**
 * `walkeeper status [--http URL] [--stream NAME] [--json]`: a node's streams
 * at a glance — one row each, the most lagging first, then what is wrong,
 * grouped — and one stream's members and replicas as tables; or the HTTP
 * API's JSON for scripts. A node may serve a thousand streams: the
 * per-stream tables are printed for the one asked for (or the only one),
 * not for all.
 */
import { isLsn, parseLsn } from '../lsn.js';
import { noStreamsHint } from '../http/status_page.js';
import { parse, UsageError } from './args.js';

export const STATUS_USAGE = `Usage: walkeeper status [--http URL] [--stream NAME] [--json]

Shows a node's streams, one line each, the most lagging first: LSNs, lag,
upstream, replicas and members; then the problems (failing upstreams,
members not heard from, storage errors), each once with the streams it
concerns. With --stream, or when the node has one stream, also that
stream's members and replicas.

lag is how far flush_lsn is behind the upstream's end of WAL for a stream
that follows one ("behind upstream"), otherwise the WAL flushed on the node
but not yet on a quorum of its members, flush_lsn - commit_lsn ("not on
quorum").

  --http URL      the node's HTTP address (default http://127.0.0.1:7676, or WALKEEPER_HTTP)
  --stream NAME   only this stream, with its members and replicas
  --json          print GET /v1/streams (with --stream, GET /v1/streams/NAME) as JSON, for scripts
`;

export interface StreamDoc {
  name: string;
  state: string;
  node_id: number;
  /** (null for a pending stream: its upstream has not answered yet) */
  tli: number | null;
  flush_lsn: string | null;
  commit_lsn: string | null;
  oldest_lsn: string | null;
  storage_error?: string | null;
  commit_lsn_unknown_below?: string | null;
  upstream: { state: string; connected_to: string | null; lag_bytes: number | null; last_error: string | null } | null;
  cluster: { members: number; quorum: number; peers: { peer: string; node_id: number | null; flush_lsn: string | null; commit_lsn: string | null; error: string | null }[] } | null;
  offload?: { location: string; healthy: boolean; last_error: string | null } | null;
  replicas: { application_name: string; address: string; state: string; sent_lsn: string; flush_lsn: string; recovery: boolean }[];
}

const lsnNum = (l: string | null): bigint | null => (l !== null && isLsn(l) ? parseLsn(l) : null);

export function bytes(n: bigint | number | null): string {
  if (n === null) return '-';
  const v = Number(n);
  if (v < 1024) return `${v} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let x = v / 1024;
  let i = 0;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x.toFixed(x < 10 ? 1 : 0)} ${units[i]}`;
}

/** Left-aligned columns, a header and a rule. */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd();
  return [line(head), line(w.map((n) => '─'.repeat(n))), ...rows.map(line)].join('\n');
}

/**
 * The lag a stream is ordered by (the status page says the same): behind
 * its upstream when it follows one that has said where its WAL ends, else
 * flushed here but not yet on a quorum.
 */
export function streamLag(d: Pick<StreamDoc, 'upstream' | 'flush_lsn' | 'commit_lsn'>): { bytes: bigint; what: 'behind upstream' | 'not on quorum' } {
  if (d.upstream && d.upstream.lag_bytes != null) return { bytes: BigInt(d.upstream.lag_bytes), what: 'behind upstream' };
  const f = lsnNum(d.flush_lsn) ?? 0n;
  // Not known yet after a restart: no lag to speak of (a problem says why).
  const c = lsnNum(d.commit_lsn) ?? f;
  return { bytes: f > c ? f - c : 0n, what: 'not on quorum' };
}

/** What is wrong with a stream, one phrase each (the same phrase for the same trouble, so that they group). */
export function streamProblems(d: StreamDoc): string[] {
  const out: string[] = [];
  if (d.storage_error) out.push(`storage: ${d.storage_error}`);
  if (d.commit_lsn_unknown_below) out.push(`commit_lsn not known yet after a restart (until a quorum has flushed up to ${d.commit_lsn_unknown_below})`);
  if (d.upstream && d.upstream.state !== 'streaming' && d.upstream.last_error) out.push(`upstream ${d.upstream.state}: ${d.upstream.last_error}`);
  if (d.offload && !d.offload.healthy) out.push(`object storage ${d.offload.location} fails${d.offload.last_error ? `: ${d.offload.last_error}` : ''}`);
  for (const p of d.cluster?.peers ?? []) {
    if (p.error) out.push(`member ${p.peer}: ${p.error}`);
    else if (p.flush_lsn === null) out.push(`member ${p.peer} never heard`);
  }
  return out;
}

/** The streams, the most lagging first (then by name). */
export function byLag(docs: StreamDoc[]): StreamDoc[] {
  const lag = new Map(docs.map((d) => [d, streamLag(d).bytes]));
  return [...docs].sort((a, b) => {
    const x = lag.get(a)!;
    const y = lag.get(b)!;
    return x > y ? -1 : x < y ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  });
}

/** Streams named in a problem line: a few, then how many more. */
const SHOWN_NAMES = 5;

/**
 * The status as text. `detail`: print the members and replicas of every
 * stream given (the caller passes one); by default only when there is one.
 */
export function renderStatus(url: string, docs: StreamDoc[], detail = docs.length === 1): string {
  if (docs.length === 0) return `${noStreamsHint(url)}\n`;
  const sorted = byLag(docs);
  const out: string[] = [`node ${docs[0]!.node_id} at ${url}`, ''];
  out.push(
    table(
      ['stream', 'state', 'tli', 'flush_lsn', 'commit_lsn', 'lag', 'oldest_lsn', 'upstream', 'replicas', 'members'],
      sorted.map((d) => {
        const lag = streamLag(d);
        const up = d.upstream ? `${d.upstream.state}${d.upstream.connected_to ? ` ${d.upstream.connected_to}` : ''}` : '-';
        const members = d.cluster ? `${d.cluster.members} (quorum ${d.cluster.quorum})` : '1';
        // (a pending stream, whose upstream has not answered yet, has no LSNs)
        return [d.name, d.state, d.tli === null ? '-' : String(d.tli), d.flush_lsn ?? '-', d.commit_lsn ?? '-', `${bytes(lag.bytes)} ${lag.what}`, d.oldest_lsn ?? '-', up, String(d.replicas.length), members];
      }),
    ),
  );
  // A peer that is down is down for every stream: one line for it, not one per stream.
  const problems = new Map<string, string[]>();
  for (const d of sorted) for (const p of streamProblems(d)) problems.set(p, [...(problems.get(p) ?? []), d.name]);
  if (problems.size > 0) {
    out.push('', 'problems:');
    for (const [p, names] of problems) {
      const which = docs.length === 1 ? '' : ` (${names.length === docs.length ? 'every stream' : `${names.slice(0, SHOWN_NAMES).join(', ')}${names.length > SHOWN_NAMES ? ` and ${names.length - SHOWN_NAMES} more` : ''}`})`;
      out.push(`  ${p}${which}`);
    }
  }
  if (!detail) {
    out.push('', `one stream's members and replicas: walkeeper status --stream NAME${url === 'http://127.0.0.1:7676' ? '' : ` --http ${url}`}`);
    return `${out.join('\n')}\n`;
  }
  for (const d of sorted) {
    const commit = lsnNum(d.commit_lsn) ?? 0n;
    if (d.cluster && d.cluster.peers.length > 0) {
      out.push('', `${d.name}: members`);
      out.push(
        table(
          ['peer', 'node', 'flush_lsn', 'commit_lsn', 'note'],
          d.cluster.peers.map((p) => [p.peer, p.node_id === null ? '?' : String(p.node_id), p.flush_lsn ?? 'never heard', p.commit_lsn ?? '-', p.error ?? '']),
        ),
      );
    }
    out.push('', `${d.name}: replicas`);
    if (d.replicas.length === 0) out.push('none connected');
    else
      out.push(
        table(
          ['client', 'state', 'sent_lsn', 'flush_lsn', 'lag'],
          d.replicas.map((r) => {
            const fl = lsnNum(r.flush_lsn) ?? 0n;
            return [`${r.application_name || 'unnamed'}@${r.address}${r.recovery ? ' (recovery)' : ''}`, r.state, r.sent_lsn, r.flush_lsn, fl === 0n ? '-' : bytes(commit > fl ? commit - fl : 0n)];
          }),
        ),
      );
  }
  return `${out.join('\n')}\n`;
}

async function get(url: string, path: string): Promise<{ status: number; body: unknown }> {
  try {
    const r = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(5000) });
    if (!r.ok) await r.body?.cancel();
    return { status: r.status, body: r.ok ? await r.json() : null };
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
    const why = err.cause?.code ?? err.cause?.errors?.[0]?.code ?? err.cause?.message ?? err.message;
    throw new Error(`cannot read the node's status at ${url}: ${why}`);
  }
}

export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { http: { type: 'string' }, stream: { type: 'string' }, json: { type: 'boolean' } }, STATUS_USAGE);
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${STATUS_USAGE}`);
  const url = ((values.http as string | undefined) ?? process.env.WALKEEPER_HTTP ?? 'http://127.0.0.1:7676').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(url)) throw new UsageError(`--http must be a URL such as http://127.0.0.1:7676, not ${JSON.stringify(url)}`);
  const stream = values.stream as string | undefined;
  if (stream === '') throw new UsageError(`--stream needs a stream name\n${STATUS_USAGE}`);
  const { status, body } = await get(url, stream === undefined ? '/v1/streams' : `/v1/streams/${encodeURIComponent(stream)}`);
  if (status === 404 && stream !== undefined) throw new Error(`the node at ${url} has no stream ${JSON.stringify(stream)} (walkeeper status without --stream lists them)`);
  if (status !== 200) throw new Error(`cannot read the node's status at ${url}: HTTP ${status}`);
  if (values.json) process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  else process.stdout.write(stream === undefined ? renderStatus(url, body as StreamDoc[]) : renderStatus(url, [body as StreamDoc], true));
  return 0;
}
