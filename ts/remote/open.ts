/**
 * Opens the object storage a parsed URL names. The AWS SDK is an optional
 * dependency (hundreds of modules a node without S3 never loads): it is
 * imported only when an s3:// URL is used, and its absence is one clear
 * error at start-up.
 */
import type { RemoteLocation, RemoteStorage } from './remote_storage.js';

export async function openRemoteStorage(loc: RemoteLocation): Promise<RemoteStorage> {
  if (loc.kind === 'file') return new (await import('./file.js')).FileStorage(loc.dir);
  let s3: typeof import('./s3.js');
  try {
    s3 = await import('./s3.js');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_MODULE_NOT_FOUND' && /@aws-sdk\//.test(e.message)) {
      throw new Error('s3:// remote storage needs the AWS SDK, which is not installed: npm install @aws-sdk/client-s3 @aws-sdk/lib-storage');
    }
    throw err;
  }
  return new s3.S3Storage(loc);
}
