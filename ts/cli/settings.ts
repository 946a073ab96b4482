/**
 * Settings of a command from, lowest to highest: defaults, a config file
 * (`walkeeper.json` in the working directory, or `--config FILE`),
 * `WALKEEPER_<NAME>` environment variables, and flags. Every setting has one
 * name: the flag's (`data-dir`), which is also the config file's key and, in
 * upper case with `_`, the variable's (`WALKEEPER_DATA_DIR`).
 *
 * A bad setting is one readable line that says where it came from, so an
 * operator knows whether to fix the unit file, the config or the command.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { UsageError } from './args.js';

export interface SettingDef {
  name: string;
  /**
   * 'flag' settings are booleans: present or not. 'json' settings are
   * structured: an object or array in the config file, JSON text in the
   * variable, no flag; the value is kept as JSON text.
   */
  kind?: 'string' | 'flag' | 'json';
}

export type Source = { kind: 'default' } | { kind: 'config'; file: string } | { kind: 'env'; variable: string } | { kind: 'flag' };

export interface Setting {
  value: string | boolean;
  source: Source;
}

export const envName = (name: string): string => `WALKEEPER_${name.toUpperCase().replace(/-/g, '_')}`;

/** How an error message names where a value came from. */
export function describeSource(name: string, s: Source): string {
  switch (s.kind) {
    case 'flag':
      return `--${name}`;
    case 'env':
      return `${s.variable}`;
    case 'config':
      return `"${name}" in ${s.file}`;
    case 'default':
      return `the default of --${name}`;
  }
}

/**
 * Merges the layers. `flags` are parseArgs values (undefined when not given);
 * `configPath` is --config (must exist) or null (then ./walkeeper.json, if
 * present).
 */
export function resolveSettings(
  defs: readonly SettingDef[],
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  configPath: string | null,
  cwd = process.cwd(),
): Map<string, Setting> {
  const byName = new Map(defs.map((d) => [d.name, d]));
  const out = new Map<string, Setting>();
  const file = configPath ?? path.join(cwd, 'walkeeper.json');
  let text: string | null = null;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (configPath !== null || (e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UsageError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  if (text !== null) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new UsageError(`config file ${file} is not valid JSON: ${(e as Error).message}`);
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`config file ${file} must hold a JSON object of settings`);
    for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
      const d = byName.get(k);
      if (!d) throw new UsageError(`config file ${file}: unknown setting "${k}" (settings are named like the flags: ${defs.map((x) => x.name).join(', ')})`);
      const source: Source = { kind: 'config', file };
      if (d.kind === 'flag') {
        if (typeof v !== 'boolean') throw new UsageError(`${describeSource(k, source)} must be true or false`);
        out.set(k, { value: v, source });
      } else if (d.kind === 'json') {
        out.set(k, { value: JSON.stringify(v), source });
      } else {
        if (Array.isArray(v) && v.every((x) => typeof x === 'string')) out.set(k, { value: v.join(','), source });
        else if (typeof v === 'string' || typeof v === 'number') out.set(k, { value: String(v), source });
        else throw new UsageError(`${describeSource(k, source)} must be a string or a number`);
      }
    }
  }
  for (const d of defs) {
    const variable = envName(d.name);
    const v = env[variable];
    if (v === undefined) continue;
    const source: Source = { kind: 'env', variable };
    if (d.kind === 'json') {
      try {
        JSON.parse(v);
      } catch (e) {
        throw new UsageError(`${variable} is not valid JSON: ${(e as Error).message}`);
      }
      out.set(d.name, { value: v, source });
    } else if (d.kind === 'flag') {
      if (!/^(1|0|true|false|on|off|yes|no)$/i.test(v)) throw new UsageError(`${variable} must be true or false, not ${JSON.stringify(v)}`);
      out.set(d.name, { value: /^(1|true|on|yes)$/i.test(v), source });
    } else {
      out.set(d.name, { value: v, source });
    }
  }
  for (const d of defs) {
    const v = flags[d.name];
    if (v === undefined || d.kind === 'json') continue;
    out.set(d.name, { value: v as string | boolean, source: { kind: 'flag' } });
  }
  return out;
}

/** Reads typed values out of resolved settings, naming the source on errors. */
export class SettingsReader {
  constructor(private readonly s: Map<string, Setting>) {}

  source(name: string): Source | null {
    return this.s.get(name)?.source ?? null;
  }

  where(name: string): string {
    const s = this.s.get(name);
    return describeSource(name, s?.source ?? { kind: 'default' });
  }

  str(name: string): string | undefined {
    const v = this.s.get(name)?.value;
    return typeof v === 'string' ? v : undefined;
  }

  flag(name: string): boolean {
    return this.s.get(name)?.value === true;
  }

  int(name: string, min: number, max: number): number | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`${this.where(name)} must be an integer from ${min} to ${max}, not ${JSON.stringify(v)}`);
    return Number(v);
  }

  oneOf<T extends string>(name: string, allowed: readonly T[]): T | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    if (!allowed.includes(v as T)) throw new UsageError(`${this.where(name)} must be ${allowed.join(' or ')}, not ${JSON.stringify(v)}`);
    return v as T;
  }

  /** A value parsed by `fn`; its error message gets the source in front. */
  parsed<T>(name: string, fn: (v: string) => T): T | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    try {
      return fn(v);
    } catch (e) {
      // Parsers name the flag ("--peers: …", "it must be …"): say where the value came from instead.
      const msg = (e as Error).message.replace(new RegExp(`^(--${name}:? |it )`), '');
      throw new UsageError(`${this.where(name)}${/^must /.test(msg) ? ' ' : ': '}${msg}`);
    }
  }
}
