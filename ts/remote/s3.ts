/**
 * `s3://bucket/prefix` through the AWS SDK for JavaScript v3. Region and
 * credentials come from the SDK's default chain (AWS_REGION,
 * AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the shared config and credentials
 * files); an S3-compatible server (MinIO, Ceph RGW, R2) is named by its
 * endpoint and then addressed path-style.
 *
 * Integrity: every single-request upload carries Content-MD5, which S3
 * checks before it stores anything; an object larger than one part goes up
 * as a multipart upload (@aws-sdk/lib-storage) whose resulting ETag is
 * checked against the bytes. The SDK's newer
 * default of streaming checksums in aws-chunked trailers is switched off:
 * S3-compatible servers (Ceph before Squid) refuse it.
 *
 * Retries are the caller's (the offloader backs off 10 ms → 5 s and counts
 * each error), so the SDK makes one attempt per call.
 */
import { createHash } from 'node:crypto';

import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  NoSuchKey,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

import type { RemoteLocation, RemoteObject, RemoteStorage } from './remote_storage.js';
import { joinKey } from './remote_storage.js';

// The SDK warns on stderr, in plain text between our JSON log lines, that
// its releases from 2027 need Node 22; the lockfile pins a release that runs
// on Node 20, which walkeeper supports. An explicit setting wins.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Above this an object goes up in parts of this size (S3's minimum part is 5 MiB). */
export const PART_SIZE = 8 * 1024 * 1024;

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('base64');

/** The ETag S3 gives an object uploaded in parts of `partSize`. */
export function multipartEtag(body: Buffer, partSize: number): string {
  const h = createHash('md5');
  let n = 0;
  for (let off = 0; off < body.length; off += partSize, n++) h.update(createHash('md5').update(body.subarray(off, off + partSize)).digest());
  return `${h.digest('hex')}-${n}`;
}

export class S3Storage implements RemoteStorage {
  readonly location: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;

  constructor(loc: Extract<RemoteLocation, { kind: 's3' }>) {
    this.bucket = loc.bucket;
    this.prefix = loc.prefix;
    this.location = `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ''}${loc.endpoint ? ` at ${loc.endpoint}` : ''}`;
    this.client = new S3Client({
      ...(loc.endpoint ? { endpoint: loc.endpoint, forcePathStyle: true } : {}),
      // An endpoint without a region configured anywhere is a private server: any region signs.
      ...(loc.endpoint && !process.env.AWS_REGION && !process.env.AWS_DEFAULT_REGION ? { region: 'us-east-1' } : {}),
      maxAttempts: 1,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    const tls = !loc.endpoint || loc.endpoint.startsWith('https:');
    // The body is not hashed for the signature when the request carries Content-MD5 (every object
    // of one part) or goes over TLS (as the AWS CLI does): the signature covers Content-MD5, which
    // the store checks against the body, so a body changed on the way is refused either way, and
    // TLS protects the rest. Hashing every compressed segment a second time cost the offloader 3%
    // of its CPU in bench/offload.
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const headers = (args.request as { headers?: Record<string, string> }).headers;
        if (headers && (tls || headers['content-md5'] !== undefined)) headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
        return next(args);
      },
      { step: 'build', name: 'walkeeperUnsignedPayload' },
    );
  }

  private full(key: string): string {
    return joinKey(this.prefix, key);
  }

  private relative(key: string): string {
    return this.prefix === '' ? key : key.slice(this.prefix.length + 1);
  }

  async put(key: string, body: Buffer, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const Key = this.full(key);
    const o = { abortSignal: opts.signal };
    if (body.length <= PART_SIZE) {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: body, ContentLength: body.length, ContentMD5: md5(body) }), o);
      return;
    }
    // Several parts in flight; a failed part aborts the upload (leavePartsOnError: false).
    const up = new Upload({ client: this.client, params: { Bucket: this.bucket, Key, Body: body }, partSize: PART_SIZE, queueSize: 4, leavePartsOnError: false });
    const onAbort = () => void up.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let etag: string | undefined;
    try {
      etag = (await up.done()).ETag;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    // The parts carry no Content-MD5 here; the multipart ETag is MD5(MD5(part 1) ‖ … ‖ MD5(part n))-n, so
    // compare it with ours: an object whose bytes differ from the node's is removed, never kept.
    const want = multipartEtag(body, PART_SIZE);
    // (some servers' CompleteMultipartUpload answer carries no ETag: ask for it)
    if (!etag?.replaceAll('"', '')) etag = (await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), o)).ETag ?? '';
    if (etag.replaceAll('"', '') !== want) {
      await this.delete(key).catch(() => undefined);
      throw new Error(`${Key}: the store's ETag ${etag} does not match the uploaded bytes (${want}); object removed`);
    }
  }

  async get(key: string, opts: { signal?: AbortSignal } = {}): Promise<Buffer | null> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.full(key) }), { abortSignal: opts.signal });
      return Buffer.from(await r.Body!.transformToByteArray());
    } catch (err) {
      if (err instanceof NoSuchKey || (err as { name?: string }).name === 'NoSuchKey') return null;
      throw err;
    }
  }

  async list(prefix: string, opts: { signal?: AbortSignal } = {}): Promise<RemoteObject[]> {
    const out: RemoteObject[] = [];
    let token: string | undefined;
    do {
      const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.full(prefix), ContinuationToken: token }), { abortSignal: opts.signal });
      for (const c of r.Contents ?? []) out.push({ key: this.relative(c.Key!), size: c.Size ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async delete(key: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.full(key) }), { abortSignal: opts.signal });
  }

  async abortIncomplete(prefix: string, before: Date): Promise<number> {
    let n = 0;
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      const r = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.full(prefix), KeyMarker: keyMarker, UploadIdMarker: idMarker }));
      for (const u of r.Uploads ?? []) {
        if (u.Initiated && u.Initiated >= before) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key!, UploadId: u.UploadId! }));
        n++;
      }
      if (!r.IsTruncated) return n;
      keyMarker = r.NextKeyMarker;
      idMarker = r.NextUploadIdMarker;
    }
  }

  close(): void {
    this.client.destroy();
  }
}
