#!/usr/bin/env node
/**
 * The `walkeeper` command. Each subcommand lives in its own module; this
 * file only dispatches and turns any failure into one readable line on
 * stderr and a non-zero exit, as operators expect of a CLI.
 */
import { createRequire } from 'node:module';

import { UsageError } from './args.js';

const require = createRequire(import.meta.url);
const pkg = require('../../package.json') as { version: string };

const USAGE = `walkeeper ${pkg.version} — a durable WAL service for PostgreSQL

Usage: walkeeper <command> [options]

Commands:
  node               run a node: serve its streams to pg_receivewal, standbys and receivers
  receive           stream WAL into a directory from the best node, failing over by itself
  fetch %f %p        restore_command: a WAL file from the nodes or object storage
  import <wal-dir>   seed a stream from a pg_wal or WAL archive directory
  demo               the whole system on this machine: a primary, three nodes, a standby, a receiver, a failover
  status             a node's streams, members and replicas at a glance (--json for scripts)
  scan <wal-dir>     find the end of valid WAL in a pg_wal, archive or stream directory
  help               show this help
  version            print the version

Options:
  -h, --help         show help (also after a command)
  -V, --version      print the version

Documentation: README.md
`;

type Command = { run: (args: string[]) => Promise<number>; usage: string };

// Loaded on use: `walkeeper receive` should not pay for loading the node
// server (and the node for the receiver), since start-up time is part of
// every short catch-up run.
const commands: Record<string, () => Promise<Command>> = {
  node: () => import('./node.js').then((m) => ({ run: m.nodeCommand, usage: m.NODE_USAGE })),
  receive: () => import('./receive.js').then((m) => ({ run: m.receiveCommand, usage: m.RECEIVE_USAGE })),
  fetch: () => import('./fetch.js').then((m) => ({ run: m.fetchCommand, usage: m.FETCH_USAGE })),
  import: () => import('./import.js').then((m) => ({ run: m.importCommand, usage: m.IMPORT_USAGE })),
  scan: () => import('./scan.js').then((m) => ({ run: m.scanCommand, usage: m.SCAN_USAGE })),
  demo: () => import('./demo.js').then((m) => ({ run: m.demoCommand, usage: m.DEMO_USAGE })),
  status: () => import('./status.js').then((m) => ({ run: m.statusCommand, usage: m.STATUS_USAGE })),
};

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === 'help' || cmd === '-h' || cmd === '--help') {
    const topic = cmd === 'help' ? rest[0] : undefined;
    const load = topic !== undefined && Object.hasOwn(commands, topic) ? commands[topic] : undefined;
    process.stdout.write(load ? (await load()).usage : USAGE);
    return 0;
  }
  if (cmd === 'version' || cmd === '-V' || cmd === '--version') {
    process.stdout.write(`${pkg.version}\n`);
    return 0;
  }
  const load = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
  if (!load) throw new UsageError(`unknown command "${cmd}" (see walkeeper --help)`);
  const c = await load();
  if (rest.includes('-h') || rest.includes('--help')) {
    process.stdout.write(c.usage);
    return 0;
  }
  return c.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`walkeeper: ${msg.split('\n')[0]}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
