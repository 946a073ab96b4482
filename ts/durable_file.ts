/**
 * Replacing a file so that a crash leaves the old content or the new, never
 * a mix or nothing: the new bytes go to a temporary file beside it, which is
 * fsynced and renamed over the old one, and the directory is fsynced so that
 * the rename itself is on disk. (The Rust store does the same for control
 * files, `control::write_file_durable`.)
 */
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/**
 * `tmp`: the temporary file's name (beside `file`); the caller picks it when
 * it must recognise leftovers of a crash. `mode`: of a newly created file.
 */
export async function replaceFileDurably(file: string, body: Buffer | string, opts: { tmp?: string; mode?: number } = {}): Promise<void> {
  const tmp = opts.tmp ?? `${file}.tmp`;
  try {
    const fh = await open(tmp, 'w', opts.mode ?? 0o666);
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDir(path.dirname(file));
}

/** fsyncs a directory: a file created or renamed in it survives a crash. */
export async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
