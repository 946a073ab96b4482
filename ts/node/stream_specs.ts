/**
 * What a node is told to do with each stream: follow this upstream (with
 * this application_name and slot), or nothing (an imported stream, or one
 * fed by peer recovery). Specs come from the settings file (`"streams"`),
 * the `--upstream/--stream` shorthand, and `PUT /v1/streams/<name>`; those
 * made over HTTP are kept in `streams.json` in the data directory, replaced
 * atomically, so that they survive a restart.
 *
 * Parsing and validation are pure: every bad input is one readable error
 * before anything changes.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { parseConnInfo } from '../client/conninfo.js';
import { replaceFileDurably } from '../durable_file.js';

export interface StreamSpec {
  /** libpq conninfo of the PostgreSQL server the stream follows; null: none. */
  upstream: string | null;
  /** application_name towards the upstream (what synchronous_standby_names lists); null: walkeeper_<node-id>. */
  applicationName: string | null;
  /** The physical slot on the upstream; null: walkeeper_<node-id>. */
  slotName: string | null;
}

export const SPECS_FILE = 'streams.json';

/**
 * A stream's name is a directory name under `streams/`, a key in etcd and a
 * `-c stream=` value: letters, digits, `_`, `-` and `.`, starting with a
 * letter or digit, at most 63 bytes (PostgreSQL's NAMEDATALEN − 1).
 */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function checkStreamName(name: string): string | null {
  if (NAME.test(name)) return null;
  if (name.length === 0) return 'a stream name cannot be empty';
  if (name.length > 63) return `stream name ${JSON.stringify(name.slice(0, 20))}… is ${name.length} characters long; at most 63`;
  return `stream name ${JSON.stringify(name)} is not valid: use letters, digits, "_", "-" and ".", starting with a letter or digit`;
}

/** A slot name as PostgreSQL takes it: lower-case letters, digits and `_`, at most 63. */
const SLOT = /^[a-z0-9_]{1,63}$/;

export class SpecError extends Error {}

/**
 * One stream's spec from JSON. `style` names the keys: the settings file's
 * (like the flags: `application-name`, `slot-name`) or the HTTP API's
 * (`application_name`, `slot_name`). `where` prefixes errors.
 */
export function parseStreamSpec(doc: unknown, style: 'settings' | 'http', where: string): StreamSpec {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new SpecError(`${where} must be a JSON object`);
  const keys = style === 'settings' ? { app: 'application-name', slot: 'slot-name' } : { app: 'application_name', slot: 'slot_name' };
  const known = ['upstream', keys.app, keys.slot];
  const o = doc as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new SpecError(`${where}: unknown key ${JSON.stringify(k)} (known: ${known.join(', ')})`);
  const str = (k: string): string | null => {
    const v = o[k];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string' || v === '') throw new SpecError(`${where}: "${k}" must be a non-empty string`);
    return v;
  };
  const upstream = str('upstream');
  if (upstream !== null) {
    try {
      parseConnInfo(upstream);
    } catch (e) {
      throw new SpecError(`${where}: "upstream" is not a valid conninfo: ${(e as Error).message}`);
    }
  }
  const applicationName = str(keys.app);
  const slotName = str(keys.slot);
  if (slotName !== null && !SLOT.test(slotName)) throw new SpecError(`${where}: "${keys.slot}" must be lower-case letters, digits and "_", at most 63, not ${JSON.stringify(slotName)}`);
  if ((applicationName !== null || slotName !== null) && upstream === null) throw new SpecError(`${where}: "${keys.app}" and "${keys.slot}" go with "upstream"`);
  return { upstream, applicationName, slotName };
}

/** The settings file's `"streams"` object: name → spec. Errors name the stream; `where` names the whole. */
export function parseStreamSpecs(doc: unknown, where: string): Map<string, StreamSpec> {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new SpecError(`${where} must be a JSON object of stream name → {"upstream": …}`);
  const out = new Map<string, StreamSpec>();
  for (const [name, v] of Object.entries(doc as Record<string, unknown>)) {
    const bad = checkStreamName(name);
    if (bad) throw new SpecError(bad);
    out.set(name, parseStreamSpec(v, 'settings', `stream ${name}`));
  }
  return out;
}

export function specJson(s: StreamSpec): Record<string, string> {
  return {
    ...(s.upstream !== null ? { upstream: s.upstream } : {}),
    ...(s.applicationName !== null ? { application_name: s.applicationName } : {}),
    ...(s.slotName !== null ? { slot_name: s.slotName } : {}),
  };
}

export function sameSpec(a: StreamSpec, b: StreamSpec): boolean {
  return a.upstream === b.upstream && a.applicationName === b.applicationName && a.slotName === b.slotName;
}

/** The specs made over HTTP, from `<dataDir>/streams.json` (none when it does not exist). */
export async function readSpecsFile(dataDir: string): Promise<Map<string, StreamSpec>> {
  const file = path.join(dataDir, SPECS_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  const streams = (doc as { streams?: unknown } | null)?.streams;
  const out = new Map<string, StreamSpec>();
  try {
    for (const [name, v] of Object.entries((streams ?? {}) as Record<string, unknown>)) {
      const bad = checkStreamName(name);
      if (bad) throw new SpecError(bad);
      out.set(name, parseStreamSpec(v, 'http', `${file}: streams.${name}`));
    }
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
  return out;
}

/** Replaces `<dataDir>/streams.json` atomically and durably (see durable_file.ts). */
export async function writeSpecsFile(dataDir: string, specs: ReadonlyMap<string, StreamSpec>): Promise<void> {
  const doc = { version: 1, streams: Object.fromEntries([...specs].sort(([a], [b]) => (a < b ? -1 : 1)).map(([n, s]) => [n, specJson(s)])) };
  await replaceFileDurably(path.join(dataDir, SPECS_FILE), `${JSON.stringify(doc, null, 2)}\n`, { mode: 0o600 });
}
