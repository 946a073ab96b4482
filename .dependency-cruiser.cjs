/**
 * The rooms of ts/ and which rooms each may import (docs/architecture.md
 * draws the same picture). Imports run downward only: a room that needs
 * something from a room above it is a sign that the thing lives in the
 * wrong room. Checked by __test__/layers.spec.ts in `npm test`, and by
 * `npm run layers` at the command line.
 */
const ground = ['lsn', 'log', 'defaults', 'member_status', 'durable_file'];

/** Room → the rooms it may import (besides itself and the ground files). */
const rooms = {
  native: [],
  protocol: [],
  client: ['protocol'],
  server: ['protocol'],
  wal: ['native'],
  stream: ['wal'],
  receiver: ['client', 'protocol', 'wal'],
  sender: ['stream', 'server', 'protocol', 'wal'],
  ingest: ['stream', 'client', 'protocol', 'wal'],
  remote: [],
  cluster: ['stream', 'receiver', 'wal'],
  offload: ['cluster', 'stream', 'wal', 'remote'],
  restore: ['offload', 'remote', 'wal'],
  http: ['stream', 'cluster', 'ingest', 'sender', 'offload'],
  node: ['http', 'offload', 'cluster', 'ingest', 'sender', 'receiver', 'stream', 'server', 'client', 'protocol', 'wal', 'remote'],
  cli: ['restore', 'node', 'http', 'offload', 'cluster', 'ingest', 'sender', 'receiver', 'stream', 'server', 'client', 'protocol', 'wal', 'remote', 'native'],
};

const groundFiles = `ts/(${ground.join('|')})\\.ts$`;

module.exports = {
  forbidden: [
    {
      name: 'ground-stays-ground',
      comment: 'lsn, log, defaults, member_status and durable_file are the ground floor: they import only each other.',
      severity: 'error',
      from: { path: groundFiles },
      to: { path: '^ts/', pathNot: groundFiles },
    },
    ...Object.entries(rooms).map(([room, may]) => ({
      name: `${room}-imports-downward`,
      comment: `ts/${room}/ may import only ${[...may, 'the ground files'].join(', ')}.`,
      severity: 'error',
      from: { path: `^ts/${room}/` },
      to: { path: '^ts/', pathNot: [`^ts/${room}/`, groundFiles, ...may.map((r) => `^ts/${r}/`)] },
    })),
    {
      name: 'no-circular',
      comment: 'Modules that import each other, directly or through others.',
      severity: 'error',
      from: { path: '^ts/' },
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(dist|node_modules|target)/' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
