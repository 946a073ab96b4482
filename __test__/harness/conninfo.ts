// libpq conninfo strings (key=value form) for standbys and clients.

/** Quotes one libpq conninfo value ('...' with \\ and \' escapes when needed). */
export function conninfoValue(v: string | number): string {
  const s = String(v);
  if (s !== '' && !/[\s'\\]/.test(s)) return s;
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** Builds a libpq key=value conninfo string; undefined values are skipped. */
export function buildConninfo(params: Record<string, string | number | undefined>): string {
  return Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${conninfoValue(v!)}`)
    .join(' ');
}

/**
 * The conninfo for a standby (primary_conninfo) or a client to reach `target`
 * (a harness cluster, or `{host, port}` of any server, e.g. walkeeper):
 * `host=... port=... user=postgres` plus `extra` (application_name,
 * options, sslmode, password, ...).
 */
export function conninfoFor(
  target: { host: string; port: number },
  extra: Record<string, string | number | undefined> = {},
): string {
  return buildConninfo({ host: target.host, port: target.port, user: 'postgres', ...extra });
}
