/**
 * `walkeeper status [--http URL] [--json]`: a node's streams at a glance —
 * the LSNs, the upstream, the cluster members and the replicas with their
 * lag — as tables, or the HTTP API's JSON for scripts.
 */
import { isLsn, parseLsn } from '../lsn.js';
import { parse, UsageError } from './args.js';

export const STATUS_USAGE = `Usage: walkeeper status [--http URL] [--json]

Shows a node's streams: LSNs, upstream, cluster members, replicas and lag.

  --http URL   the node's HTTP address (default http://127.0.0.1:7676, or WALKEEPER_HTTP)
  --json       print GET /v1/streams as JSON, for scripts
`;

interface StreamDoc {
  name: string;
  state: string;
  node_id: number;
  tli: number;
  flush_lsn: string;
  commit_lsn: string;
  oldest_lsn: string | null;
  upstream: { state: string; connected_to: string | null; lag_bytes: number | null; last_error: string | null } | null;
  cluster: { members: number; quorum: number; peers: { peer: string; node_id: number | null; flush_lsn: string | null; commit_lsn: string | null; error: string | null }[] } | null;
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

export function renderStatus(url: string, docs: StreamDoc[]): string {
  if (docs.length === 0) return `node at ${url}: no streams yet\n`;
  const out: string[] = [`node ${docs[0]!.node_id} at ${url}`, ''];
  out.push(
    table(
      ['stream', 'state', 'tli', 'flush_lsn', 'commit_lsn', 'uncommitted', 'oldest_lsn', 'upstream', 'replicas', 'members'],
      docs.map((d) => {
        const f = lsnNum(d.flush_lsn)!;
        const c = lsnNum(d.commit_lsn)!;
        const up = d.upstream ? `${d.upstream.state}${d.upstream.connected_to ? ` ${d.upstream.connected_to}` : ''}${d.upstream.lag_bytes ? `, ${bytes(d.upstream.lag_bytes)} behind` : ''}` : '-';
        const members = d.cluster ? `${d.cluster.members} (quorum ${d.cluster.quorum})` : '1';
        return [d.name, d.state, String(d.tli), d.flush_lsn, d.commit_lsn, bytes(f - c), d.oldest_lsn ?? '-', up, String(d.replicas.length), members];
      }),
    ),
  );
  for (const d of docs) {
    const commit = lsnNum(d.commit_lsn)!;
    if (d.cluster && d.cluster.peers.length > 0) {
      out.push('', `${d.name}: members`);
      out.push(
        table(
          ['peer', 'node', 'flush_lsn', 'commit_lsn', 'note'],
          d.cluster.peers.map((p) => [p.peer, p.node_id === null ? '?' : String(p.node_id), p.flush_lsn ?? 'never heard', p.commit_lsn ?? '-', p.error ?? '']),
        ),
      );
    }
    if (d.replicas.length > 0) {
      out.push('', `${d.name}: replicas`);
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
  }
  return `${out.join('\n')}\n`;
}

export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { http: { type: 'string' }, json: { type: 'boolean' } }, STATUS_USAGE);
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\n${STATUS_USAGE}`);
  const url = ((values.http as string | undefined) ?? process.env.WALKEEPER_HTTP ?? 'http://127.0.0.1:7676').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(url)) throw new UsageError(`--http must be a URL such as http://127.0.0.1:7676, not ${JSON.stringify(url)}`);
  let docs: StreamDoc[];
  try {
    const r = await fetch(`${url}/v1/streams`, { signal: AbortSignal.timeout(5000) });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    docs = (await r.json()) as StreamDoc[];
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
    const why = err.cause?.code ?? err.cause?.errors?.[0]?.code ?? err.cause?.message ?? err.message;
    throw new Error(`cannot read the node's status at ${url}: ${why}`);
  }
  process.stdout.write(values.json ? `${JSON.stringify(docs, null, 2)}\n` : renderStatus(url, docs));
  return 0;
}
