// A walkeeper node in the test process, on free loopback ports, seeded by
// `import` from a WAL directory, with its log lines kept for assertions.

import { Writable } from 'node:stream';
import path from 'node:path';

import { pino } from 'pino';

import { importWal, startNode, type ImportResult, type NodeOptions, type WalkeeperNode } from '../../ts/index.js';
import { createTempDir, type TempDir } from './tmp.js';

export interface TestNode {
  node: WalkeeperNode;
  dataDir: string;
  host: string;
  port: number;
  httpUrl: string;
  imported: ImportResult | null;
  /** Every log line the node wrote, parsed. */
  logs: Record<string, unknown>[];
  /** libpq key=value connection string for replication clients. */
  conninfo(extra?: string): string;
  stop(): Promise<void>;
}

export interface TestNodeOptions extends Partial<NodeOptions> {
  /** Import this WAL directory as the stream before starting. */
  importFrom?: string;
  streamName?: string;
  /** Reuse a data directory (e.g. to restart a node). */
  dataDir?: string;
}

export async function startTestNode(opts: TestNodeOptions = {}): Promise<TestNode> {
  let tmp: TempDir | null = null;
  const dataDir = opts.dataDir ?? path.join((tmp = await createTempDir('walkeeper-node-')).path, 'data');
  let imported: ImportResult | null = null;
  if (opts.importFrom) imported = await importWal({ dataDir, stream: opts.streamName ?? 'main', walDir: opts.importFrom });
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          logs.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          logs.push({ msg: line });
        }
      }
      cb();
    },
  });
  const logger = pino({ level: process.env.WALKEEPER_TEST_LOG_LEVEL ?? 'debug' }, sink);
  const { importFrom: _i, streamName: _s, dataDir: _d, ...nodeOpts } = opts;
  const node = await startNode({ listenPg: '127.0.0.1:0', listenHttp: '127.0.0.1:0', logger, ...nodeOpts, dataDir });
  const [host, port] = [node.pgAddress.slice(0, node.pgAddress.lastIndexOf(':')), Number(node.pgAddress.slice(node.pgAddress.lastIndexOf(':') + 1))];
  let stopped = false;
  return {
    node,
    dataDir,
    host,
    port,
    httpUrl: `http://${node.httpAddress}`,
    imported,
    logs,
    conninfo: (extra = '') => `host=${host} port=${port} user=postgres ${extra}`.trim(),
    async stop() {
      if (stopped) return;
      stopped = true;
      await node.stop();
      if (tmp && !opts.dataDir) await tmp.cleanup();
    },
  };
}
