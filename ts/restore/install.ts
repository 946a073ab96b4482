/**
 * Files handed to PostgreSQL. A restore_command must leave `%p` holding
 * the whole file or nothing: PostgreSQL reads whatever is there once the
 * command exits 0, and a file cut short by a crash of the command would be
 * replayed as far as it goes. So every file is written under a temporary
 * name in `%p`'s own directory (a rename across filesystems is a copy, not
 * atomic: WAL-G 3.0's bug), fsynced, and renamed.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

import { syncDir } from '../durable_file.js';

/** Has `write` fill a new temporary file beside `dest` (whole and fsynced), then renames it to `dest`. */
export async function installWith(dest: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const dir = path.dirname(dest);
  const tmp = path.join(dir, `.${path.basename(dest)}.walkeeper-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  try {
    await write(tmp);
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

/** Writes `data` to `dest` whole or not at all. */
export function installFile(dest: string, data: Buffer): Promise<void> {
  return installWith(dest, async (tmp) => {
    const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}

