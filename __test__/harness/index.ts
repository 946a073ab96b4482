// The test harness in one import: `import { withPostgres, generateWal } from './harness/index.js'`.
export * from './tmp.js';
export * from './ports.js';
export * from './pgtools.js';
export * from './pg.js';
export * from './wal.js';
export * from './waldump.js';
export * from './conninfo.js';
export * from './standby.js';
export * from './receivewal.js';
export * from './proxy.js';
export * from './node.js';
export * from './walfixture.js';
export * from './wait.js';
export * from './nodeproc.js';
export * from './fakeupstream.js';
export * from './fakenode.js';
