/** Opens the object storage a parsed URL names (the AWS SDK is loaded only when S3 is used). */
import type { RemoteLocation, RemoteStorage } from './remote_storage.js';

export async function openRemoteStorage(loc: RemoteLocation): Promise<RemoteStorage> {
  if (loc.kind === 'file') return new (await import('./file.js')).FileStorage(loc.dir);
  return new (await import('./s3.js')).S3Storage(loc);
}
