// A real S3 server: Ceph's RADOS Gateway (Debian's radosgw, ceph-mon,
// ceph-osd) as one monitor, one memstore OSD and one gateway on 127.0.0.1,
// plain processes in a temp directory, on ports chosen at run time.
//
// Pitfalls this handles (learned the hard way):
//  - with `auth none`, every `ms … mode` must be crc (the gateway's default
//    mon client mode, secure, has nothing to offer otherwise);
//  - paxos intervals and tcp_nodelay make start-up and small requests fast;
//  - memstore keeps deleted data in RAM until RGW's garbage collector runs:
//    collect every 5 s; MALLOC_MMAP_THRESHOLD_ so freed object buffers go
//    back to the system;
//  - pgBackRest speaks only https: `tls: true` adds an https listener with a
//    self-signed certificate for 127.0.0.1 and localhost (`caFile`).
// stopGateway()/startGateway() take the S3 endpoint away and bring it back
// with the data intact (the cluster keeps running): an object-storage outage.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

import { freePort } from './ports.js';
import { createTempDir, onProcessExit, type TempDir } from './tmp.js';

const run = promisify(execFile);
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const live = new Set<ChildProcess>();
onProcessExit(() => {
  for (const p of live) p.kill('SIGKILL');
});

export interface RgwOptions {
  /** Also listen on https (self-signed; for pgBackRest). */
  tls?: boolean;
  /** Capacity the memstore OSD reports (default 4 GiB; at 95% the cluster stops writing). */
  memstoreBytes?: number;
}

export interface Rgw {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  tlsEndpoint: string | null;
  tlsPort: number | null;
  /** The certificate of the https listener, to trust. */
  caFile: string | null;
  accessKey: string;
  secretKey: string;
  region: string;
  dir: string;
  /** Environment for a process that should reach the server through the SDK's default chain. */
  env: Record<string, string>;
  client(endpoint?: string): S3Client;
  createBucket(name: string): Promise<void>;
  /** Kills the gateway only (the cluster keeps the objects): S3 is down. */
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
  stop(): Promise<void>;
}

async function waitFor(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startRgw(opts: RgwOptions = {}): Promise<Rgw> {
  const tmp: TempDir = await createTempDir('walkeeper-rgw-');
  const dir = tmp.path;
  const conf = path.join(dir, 'ceph.conf');
  const [monPort, rgwPort] = [await freePort(), await freePort()];
  const tlsPort = opts.tls ? await freePort() : null;
  const accessKey = 'testaccesskey0000000';
  const secretKey = 'testsecretkey00000000000000000000000000000';
  const region = 'us-east-1';
  const fsid = randomUUID();
  for (const d of ['run', 'log', 'mon.a', 'osd.0', 'rgw', 'crash']) await mkdir(path.join(dir, d), { recursive: true });
  const procs: { name: string; child: ChildProcess }[] = [];
  const env = { ...process.env, MALLOC_MMAP_THRESHOLD_: '131072' };
  const daemon = (name: string, cmd: string, args: string[]): ChildProcess => {
    const child = spawn(cmd, args, { env, stdio: 'ignore' });
    live.add(child);
    child.on('exit', () => live.delete(child));
    procs.push({ name, child });
    return child;
  };
  let tlsFrontend = '';
  let caFile: string | null = null;
  if (tlsPort) {
    caFile = path.join(dir, 'rgw', 'tls.crt');
    const key = path.join(dir, 'rgw', 'tls.key');
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', caFile]);
    tlsFrontend = ` ssl_endpoint=127.0.0.1:${tlsPort} ssl_certificate=${caFile} ssl_private_key=${key}`;
  }
  await writeFile(
    conf,
    `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${monPort}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms mon client mode = crc
ms client mode = crc
ms mon service mode = crc
ms service mode = crc
ms mon cluster mode = crc
ms cluster mode = crc
auth cluster required = none
auth service required = none
auth client required = none
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
crash dir = ${dir}/crash
keyring = ${dir}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = ${dir}/mon.$id
mon cluster log file = ${dir}/log/cluster.log
paxos propose interval = 0.01
paxos min wait = 0.001

[osd]
osd data = ${dir}/osd.$id
osd objectstore = memstore
memstore device bytes = ${opts.memstoreBytes ?? 4 * 1024 ** 3}

[client]
log file = ${dir}/log/$name.log

[client.rgw.test]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort} tcp_nodelay=1${tlsFrontend}
rgw data = ${dir}/rgw
rgw gc obj min wait = 5
rgw gc processor period = 5
rados osd op timeout = 30
`,
  );
  const ceph = (...args: string[]) => run('ceph', ['-c', conf, '--connect-timeout', '5', ...args], { env });
  const endpoint = `http://127.0.0.1:${rgwPort}`;
  let gateway: ChildProcess | null = null;
  const startGateway = async (): Promise<void> => {
    if (gateway) return;
    gateway = daemon('rgw', 'radosgw', ['-c', conf, '-n', 'client.rgw.test', '-f']);
    const g = gateway;
    await waitFor('radosgw', 120_000, async () => {
      if (g.exitCode !== null) throw new Error(`radosgw exited (${g.exitCode}); see ${dir}/log`);
      return (await fetch(`${endpoint}/`)).status < 500;
    });
  };
  const kill = async (child: ChildProcess): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  };
  const stopAll = async (): Promise<void> => {
    for (const p of [...procs].reverse()) await kill(p.child);
    await tmp.cleanup();
  };
  try {
    await run('ceph-authtool', ['--create-keyring', path.join(dir, 'keyring'), '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, path.join(dir, 'monmap')]);
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', path.join(dir, 'monmap'), '--keyring', path.join(dir, 'keyring')], { env });
    daemon('mon', 'ceph-mon', ['-c', conf, '-i', 'a', '-f']);
    await waitFor('ceph-mon', 30_000, async () => (await ceph('mon', 'stat'), true));
    const osdUuid = randomUUID();
    const id = (await ceph('osd', 'new', osdUuid)).stdout.trim();
    await run('ceph-osd', ['-c', conf, '-i', id, '--mkfs', '--osd-uuid', osdUuid], { env });
    daemon('osd', 'ceph-osd', ['-c', conf, '-i', id, '-f']);
    await waitFor('ceph-osd up', 60_000, async () => new RegExp(`^osd\\.${id} up`, 'm').test((await ceph('osd', 'dump')).stdout));
    await startGateway();
    await run('radosgw-admin', ['-c', conf, 'user', 'create', '--uid=test', '--display-name=test', `--access-key=${accessKey}`, `--secret-key=${secretKey}`], { env });
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
  const client = (ep = endpoint) =>
    new S3Client({ endpoint: ep, forcePathStyle: true, region, credentials: { accessKeyId: accessKey, secretAccessKey: secretKey }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  return {
    endpoint,
    tlsEndpoint: tlsPort ? `https://127.0.0.1:${tlsPort}` : null,
    tlsPort,
    caFile,
    accessKey,
    secretKey,
    region,
    dir,
    env: { AWS_ACCESS_KEY_ID: accessKey, AWS_SECRET_ACCESS_KEY: secretKey, AWS_REGION: region },
    client,
    async createBucket(name: string) {
      const c = client();
      try {
        await c.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        c.destroy();
      }
    },
    async stopGateway() {
      if (!gateway) return;
      const g = gateway;
      gateway = null;
      await kill(g);
    },
    startGateway,
    stop: stopAll,
  };
}
