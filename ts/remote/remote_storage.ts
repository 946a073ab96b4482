/**
 * Object storage, as the offloader and the archive readers see it: a flat
 * namespace of immutable objects under one prefix. Two backends behind one
 * interface — S3 (AWS, MinIO, Ceph RGW, R2: `s3://bucket/prefix`) and a
 * mounted filesystem (`file:///dir`). Objects keep PostgreSQL's file names
 * under `<prefix>/<stream>/<system id>/`, so another tool can list and read
 * them.
 */

/** A stored object, as a listing gives it. */
export interface RemoteObject {
  /** Key relative to the storage's root prefix. */
  key: string;
  size: number;
}

export interface RemoteStorage {
  /** Where the objects live, for logs and status (never credentials). */
  readonly location: string;
  /** Stores `body` under `key` whole, or not at all (an interrupted upload leaves no object). */
  put(key: string, body: Buffer, opts?: { signal?: AbortSignal }): Promise<void>;
  /** The object's bytes; null when there is none. */
  get(key: string, opts?: { signal?: AbortSignal }): Promise<Buffer | null>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string, opts?: { signal?: AbortSignal }): Promise<RemoteObject[]>;
  /** Removes the object; no error if there is none. */
  delete(key: string, opts?: { signal?: AbortSignal }): Promise<void>;
  /**
   * Throws away uploads under `prefix` that were started before `before`
   * and never completed (S3 multipart uploads, temporary files): what a
   * node killed mid-upload leaves. Returns how many.
   */
  abortIncomplete(prefix: string, before: Date): Promise<number>;
  close(): void;
}

export type RemoteLocation = { kind: 's3'; bucket: string; prefix: string; endpoint: string | null } | { kind: 'file'; dir: string };

/** A remote storage URL the user gave (flag, settings file or variable) that cannot be used. */
export class RemoteStorageUrlError extends Error {}

/**
 * Parses `s3://bucket/prefix` or `file:///dir`. An S3-compatible server's
 * endpoint comes from `endpoint` (`--remote-endpoint`) or the SDK's own
 * variables (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
 */
export function parseRemoteStorageUrl(text: string, endpoint: string | null = null, env: NodeJS.ProcessEnv = process.env): RemoteLocation {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new RemoteStorageUrlError(`remote storage must be s3://bucket/prefix or file:///dir, not ${JSON.stringify(text)}`);
  }
  if (u.protocol === 'file:') {
    if (u.host !== '' || u.pathname === '' || u.pathname === '/') throw new RemoteStorageUrlError(`a file remote storage needs an absolute directory (file:///dir), not ${JSON.stringify(text)}`);
    return { kind: 'file', dir: decodeURIComponent(u.pathname).replace(/\/+$/, '') };
  }
  if (u.protocol === 's3:') {
    const bucket = u.hostname;
    // S3's bucket rules, loosely: 3–63 characters of lower case, digits, dots and dashes.
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new RemoteStorageUrlError(`${JSON.stringify(bucket)} is not an S3 bucket name (in ${JSON.stringify(text)})`);
    if (u.search !== '' || u.hash !== '' || u.username !== '' || u.port !== '') throw new RemoteStorageUrlError(`an S3 URL is s3://bucket/prefix, without credentials, port or query: ${JSON.stringify(text)}`);
    const prefix = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, '');
    const ep = endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL ?? null;
    if (ep !== null) {
      let e: URL;
      try {
        e = new URL(ep);
      } catch {
        throw new RemoteStorageUrlError(`the S3 endpoint must be a URL (http://host:port), not ${JSON.stringify(ep)}`);
      }
      if (e.protocol !== 'http:' && e.protocol !== 'https:') throw new RemoteStorageUrlError(`the S3 endpoint must be http:// or https://, not ${JSON.stringify(ep)}`);
    }
    return { kind: 's3', bucket, prefix, endpoint: ep };
  }
  throw new RemoteStorageUrlError(`remote storage must be s3://bucket/prefix or file:///dir, not ${JSON.stringify(text)}`);
}

/** Joins key parts with '/', skipping empty ones. */
export function joinKey(...parts: string[]): string {
  return parts.filter((p) => p !== '').join('/');
}
