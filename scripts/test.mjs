#!/usr/bin/env node
// `npm test`: the Rust tests (cargo test --workspace --release, offline),
// then the ava specs (TAP), then one closing line `N passed, M failed`
// (`, K skipped` when any test was skipped or todo). Exits non-zero when a
// test failed, was skipped or todo, when either runner exited non-zero, or
// when no test ran at all.
//
//   node scripts/test.mjs                 everything
//   node scripts/test.mjs --ava-only [ava args/patterns...]
//   node scripts/test.mjs --cargo-only
//   node scripts/test.mjs --no-build      (skip `npm run build` before ava)
//   node scripts/test.mjs __test__/harness.spec.ts   (extra args go to ava)

import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const argv = process.argv.slice(2);
const avaOnly = argv.includes('--ava-only');
const cargoOnly = argv.includes('--cargo-only');
const noBuild = argv.includes('--no-build');
const avaArgs = argv.filter((a) => a !== '--ava-only' && a !== '--cargo-only' && a !== '--no-build');

const totals = { passed: 0, failed: 0, skipped: 0 };
const problems = [];

/**
 * Runs a command, streaming its stdout/stderr to ours line by line and
 * handing every line (from both streams) to onLine. Resolves to the exit
 * code (or 1 when it could not run / died by a signal).
 */
function run(cmd, args, { env, onLine }) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const feed = (stream, out, which) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        out.write(chunk);
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, i).replace(/\r$/, ''), which);
          buf = buf.slice(i + 1);
        }
      });
      stream.on('end', () => {
        if (buf) onLine(buf, which);
        buf = '';
      });
    };
    feed(child.stdout, process.stdout, 'stdout');
    feed(child.stderr, process.stderr, 'stderr');
    child.on('error', (e) => {
      process.stderr.write(`\n[test] cannot run ${cmd}: ${e.message}\n`);
      resolve(127);
    });
    child.on('close', (code, signal) => {
      if (signal) process.stderr.write(`\n[test] ${cmd} killed by ${signal}\n`);
      resolve(code ?? 1);
    });
  });
}

function banner(text) {
  process.stdout.write(`\n===== ${text} =====\n`);
}

async function runCargo() {
  if (!existsSync(path.join(root, 'Cargo.toml'))) {
    banner('cargo: no Cargo.toml, skipped');
    return;
  }
  banner('cargo test --workspace --release');
  const c = { passed: 0, failed: 0, ignored: 0, results: 0 };
  const re = /^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored;/;
  const code = await run('cargo', ['test', '--workspace', '--release'], {
    env: { CARGO_NET_OFFLINE: 'true' },
    onLine: (line) => {
      const m = re.exec(line.trim());
      if (!m) return;
      c.results++;
      c.passed += Number(m[2]);
      c.failed += Number(m[3]);
      c.ignored += Number(m[4]);
    },
  });
  if (code !== 0 && c.failed === 0) {
    c.failed++; // did not build, or crashed outside a test
    problems.push(`cargo test exited with ${code} (${c.results === 0 ? 'no test results: build failure?' : 'after its tests'})`);
  } else if (code !== 0) {
    problems.push(`cargo test exited with ${code}`);
  }
  if (c.ignored > 0) problems.push(`cargo: ${c.ignored} ignored test(s)`);
  process.stdout.write(`[test] cargo: ${c.passed} passed, ${c.failed} failed, ${c.ignored} ignored\n`);
  totals.passed += c.passed;
  totals.failed += c.failed;
  totals.skipped += c.ignored;
}

async function runAva() {
  const cli = path.join(root, 'node_modules', 'ava', 'entrypoints', 'cli.mjs');
  banner(`ava --tap ${avaArgs.join(' ')}`.trim());
  const a = { passed: 0, failed: 0, skipped: 0, todo: 0, summaryFail: 0, sawPlan: false };
  const failures = [];
  const tapLine = /^(not ok|ok) \d+ - (.*)$/;
  const code = await run(process.execPath, [cli, '--tap', ...avaArgs], {
    env: {},
    onLine: (line, which) => {
      if (which !== 'stdout') return; // worker output goes to stderr in TAP mode
      let m = tapLine.exec(line);
      if (m) {
        const title = m[2];
        if (/ # SKIP$/.test(title)) a.skipped++;
        else if (/ # TODO$/.test(title)) a.todo++;
        else if (m[1] === 'ok') a.passed++;
        else {
          a.failed++;
          failures.push(title);
        }
        return;
      }
      if (/^1\.\.\d+$/.test(line)) a.sawPlan = true;
      if ((m = /^# fail (\d+)$/.exec(line))) a.summaryFail = Number(m[1]);
    },
  });
  // `# fail` counts crashes and todo too; trust it when it says more.
  const extra = a.summaryFail - a.todo - a.failed;
  if (extra > 0) a.failed += extra;
  if (code !== 0 && a.failed === 0) {
    a.failed++;
    problems.push(`ava exited with ${code}${a.sawPlan ? '' : ' before reporting (config or load error?)'}`);
  } else if (code !== 0) {
    problems.push(`ava exited with ${code}`);
  }
  if (a.skipped + a.todo > 0) problems.push(`ava: ${a.skipped} skipped, ${a.todo} todo`);
  if (failures.length > 0) {
    process.stdout.write(`\n[test] ava failures:\n${failures.map((f) => `  - ${f}`).join('\n')}\n`);
  }
  process.stdout.write(`[test] ava: ${a.passed} passed, ${a.failed} failed, ${a.skipped} skipped, ${a.todo} todo\n`);
  totals.passed += a.passed;
  totals.failed += a.failed;
  totals.skipped += a.skipped + a.todo;
}

/**
 * Safety net: PostgreSQL servers started by the test harness live in
 * temp dirs named walkeeper-pg-*; any still running now leaked (e.g. a
 * worker killed hard). Kill them by pid and say so.
 */
async function reapLeakedServers() {
  if (process.platform !== 'linux') return;
  const find = () => {
    const out = [];
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      try {
        const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
        const exe = path.basename(cmd[0] ?? '');
        const cwd = readlinkSync(`/proc/${e}/cwd`);
        const isPg = exe === 'postgres' || cmd[0]?.startsWith('postgres:');
        if (isPg && (/\/walkeeper-pg-[^/]+\/data$/.test(cwd) || cmd.some((c) => /\/walkeeper-pg-[^/]+\/data$/.test(c)))) {
          out.push(Number(e));
        }
      } catch {
        // gone, or not ours to read
      }
    }
    return out;
  };
  let pids = find();
  for (let i = 0; i < 20 && pids.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100)); // exit hooks may still be finishing
    pids = find();
  }
  if (pids.length === 0) return;
  process.stderr.write(`[test] killing ${pids.length} leaked PostgreSQL process(es) from the test harness: ${pids.join(' ')}\n`);
  problems.push(`a test left ${pids.length} PostgreSQL process(es) running`);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * The specs load the native binary and run the compiled CLI: rebuild both
 * (incremental, seconds when nothing changed) so that tests never run
 * against stale build outputs.
 */
async function build() {
  banner('npm run build && npm run typecheck');
  let code = await run('npm', ['run', '--silent', 'build'], { env: { CARGO_NET_OFFLINE: 'true' }, onLine: () => {} });
  // Specs, harness and benchmarks are type-checked too (tsx only strips types).
  if (code === 0) code = await run('npm', ['run', '--silent', 'typecheck'], { env: {}, onLine: () => {} });
  if (code !== 0) {
    problems.push(`npm run build/typecheck exited with ${code}`);
    totals.failed++;
    return false;
  }
  return true;
}

if (!avaOnly) await runCargo();
if (!cargoOnly && (noBuild || (await build()))) {
  await runAva();
  await reapLeakedServers();
}

const { passed, failed, skipped } = totals;
if (passed + failed + skipped === 0) problems.push('no test ran');
for (const p of problems) process.stdout.write(`[test] ${p}\n`);
process.stdout.write(`\n${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}\n`);
process.exitCode = failed > 0 || skipped > 0 || problems.length > 0 ? 1 : 0;
