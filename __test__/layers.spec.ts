/**
 * The rooms of ts/ import downward only (.dependency-cruiser.cjs holds the
 * rules; docs/architecture.md draws them), and nothing is circular. Serial:
 * the cruise reads paths relative to the working directory, which each test sets.
 */
import { mkdtemp, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import test from 'ava';
import { cruise, type ICruiseOptions } from 'dependency-cruiser';

const require = createRequire(import.meta.url);
const root = path.resolve(import.meta.dirname, '..');
const config = require(path.join(root, '.dependency-cruiser.cjs')) as { forbidden: NonNullable<ICruiseOptions['ruleSet']>['forbidden']; options: ICruiseOptions };

async function violations(baseDir: string): Promise<string[]> {
  const cwd = process.cwd();
  process.chdir(baseDir);
  try {
    const r = await cruise(['ts'], { ...config.options, tsConfig: undefined, baseDir, validate: true, ruleSet: { forbidden: config.forbidden } });
    const out = r.output as { summary: { violations: { from: string; to: string; rule: { name: string } }[]; totalCruised: number } };
    return out.summary.violations.map((v) => `${v.from} → ${v.to} (${v.rule.name})`);
  } finally {
    process.chdir(cwd);
  }
}

test.serial('every import in ts/ goes to the same room, a room below, or the ground files; none is circular', async (t) => {
  const cwd = process.cwd();
  process.chdir(root);
  try {
    const r = await cruise(['ts'], { ...config.options, baseDir: root, validate: true, ruleSet: { forbidden: config.forbidden } });
    const out = r.output as { summary: { violations: { from: string; to: string; rule: { name: string } }[]; totalCruised: number }; modules: { source: string }[] };
    const files = (await readdir(path.join(root, 'ts'), { recursive: true })).filter((f) => f.endsWith('.ts'));
    t.is(out.modules.filter((m) => m.source.startsWith('ts/')).length, files.length, 'the cruise saw every source file');
    t.deepEqual(out.summary.violations.map((v) => `${v.from} → ${v.to} (${v.rule.name})`), []);
  } finally {
    process.chdir(cwd);
  }
});

test.serial('the rules catch an upward import, a ground file reaching up, and a cycle', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wk-layers-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const put = async (file: string, text: string) => {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await writeFile(path.join(dir, file), text);
  };
  await put('ts/lsn.ts', "import { x } from './wal/a.js';\nexport const l = x;\n");
  await put('ts/wal/a.ts', "import { n } from '../node/n.js';\nexport const x = n;\n");
  await put('ts/node/n.ts', "export const n = 1;\n");
  await put('ts/protocol/p.ts', "import { q } from './q.js';\nexport const p = q;\n");
  await put('ts/protocol/q.ts', "import { p } from './p.js';\nexport const q = () => p;\n");
  const found = await violations(dir);
  t.true(found.includes('ts/wal/a.ts → ts/node/n.ts (wal-imports-downward)'), found.join('\n'));
  t.true(found.includes('ts/lsn.ts → ts/wal/a.ts (ground-stays-ground)'), found.join('\n'));
  t.true(found.some((v) => v.startsWith('ts/protocol/p.ts → ts/protocol/q.ts (no-circular)')), found.join('\n'));
});
