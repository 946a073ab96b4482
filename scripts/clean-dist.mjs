#!/usr/bin/env node
// After `tsc`: removes outputs in dist/ whose source under ts/ is gone (a
// moved or deleted module), so that the package never ships stale files.
// It removes nothing else: tests that run the built CLI while a build
// happens (npm pack runs `prepare`) keep finding every current file.
import { existsSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');

function walk(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      walk(p);
      if (readdirSync(p).length === 0) rmdirSync(p);
      continue;
    }
    const m = /^(.*)\.(js|js\.map|d\.ts|d\.ts\.map)$/.exec(e.name);
    if (!m) continue;
    const source = path.join(root, 'ts', path.relative(dist, dir), `${m[1]}.ts`);
    if (!existsSync(source)) rmSync(p);
  }
}

if (existsSync(dist)) walk(dist);
