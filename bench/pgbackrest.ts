/**
 * pgBackRest as the side-by-side baseline of the offload and restore
 * benchmarks: a repository in the same Ceph RGW bucket store (https, which
 * pgBackRest requires), asynchronous archive-push and archive-get, zstd
 * level 3 like walkeeper, two processes. Run as the PostgreSQL server user,
 * like the archive and restore commands PostgreSQL runs.
 */
import { execFile } from 'node:child_process';
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import { asServerUser, chownToServerUser, type PgCluster } from '../__test__/harness/index.js';
import type { Rgw } from '../__test__/harness/ceph.js';

const run = promisify(execFile);

export interface PgBackRest {
  conf: string;
  /** The command line for `cmd` (archive-push %p, archive-get %f "%p"), to put in postgresql.conf. */
  command(cmd: string): string;
}

/** Writes the configuration under `dir` (a fresh directory) and creates the stanza `bench` for `pg`. */
export async function setupPgBackRest(dir: string, rgw: Rgw, bucket: string, pg: PgCluster): Promise<PgBackRest> {
  for (const d of ['', 'spool', 'lock', 'log']) await mkdir(path.join(dir, d), { recursive: true });
  await copyFile(rgw.caFile!, path.join(dir, 'ca.crt'));
  const conf = path.join(dir, 'pgbackrest.conf');
  await writeFile(
    conf,
    [
      '[global]',
      'repo1-type=s3',
      'repo1-s3-endpoint=localhost',
      `repo1-s3-port=${rgw.tlsPort}`,
      `repo1-s3-bucket=${bucket}`,
      `repo1-s3-key=${rgw.accessKey}`,
      `repo1-s3-key-secret=${rgw.secretKey}`,
      'repo1-s3-region=us-east-1',
      'repo1-s3-uri-style=path',
      `repo1-s3-ca-file=${path.join(dir, 'ca.crt')}`,
      'repo1-path=/pgbr',
      'archive-async=y',
      `spool-path=${path.join(dir, 'spool')}`,
      `lock-path=${path.join(dir, 'lock')}`,
      `log-path=${path.join(dir, 'log')}`,
      'log-level-console=warn',
      'log-level-file=warn',
      'process-max=2',
      'compress-type=zst',
      'compress-level=3',
      '',
      '[bench]',
      `pg1-path=${pg.dataDir}`,
      `pg1-port=${pg.port}`,
      `pg1-socket-path=${pg.socketDir}`,
      '',
    ].join('\n'),
  );
  await chmod(path.dirname(dir), 0o755);
  await chownToServerUser(dir);
  for (const d of ['spool', 'lock', 'log']) await chownToServerUser(path.join(dir, d));
  for (const f of ['ca.crt', 'pgbackrest.conf']) await chownToServerUser(path.join(dir, f));
  const [cmd, args] = asServerUser('pgbackrest', [`--config=${conf}`, '--stanza=bench', 'stanza-create']);
  await run(cmd, args);
  return { conf, command: (c) => `pgbackrest --config=${conf} --stanza=bench ${c}` };
}
