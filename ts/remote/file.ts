/**
 * `file:///dir`: object storage on a mounted filesystem (NFS, a backup
 * disk). An object is written to a temporary name, fsynced and renamed, so
 * a reader sees it whole or not at all; what a crash leaves is a
 * `.tmp-*` file that `abortIncomplete` removes.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';

import { replaceFileDurably } from '../durable_file.js';
import type { RemoteObject, RemoteStorage } from './remote_storage.js';

const TMP_MARK = '.tmp-';

export class FileStorage implements RemoteStorage {
  readonly location: string;

  constructor(private readonly dir: string) {
    this.location = `file://${dir}`;
  }

  private pathOf(key: string): string {
    if (key.split('/').some((p) => p === '' || p === '.' || p === '..')) throw new Error(`bad object key ${JSON.stringify(key)}`);
    return path.join(this.dir, ...key.split('/'));
  }

  async put(key: string, body: Buffer): Promise<void> {
    const file = this.pathOf(key);
    const d = path.dirname(file);
    await mkdir(d, { recursive: true });
    await replaceFileDurably(file, body, { tmp: `${file}${TMP_MARK}${randomBytes(6).toString('hex')}` });
  }

  async get(key: string): Promise<Buffer | null> {
    try {
      return await readFile(this.pathOf(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async list(prefix: string): Promise<RemoteObject[]> {
    const out: RemoteObject[] = [];
    const base = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const start = base === '' ? this.dir : this.pathOf(base);
    let names: string[];
    try {
      names = (await readdir(start, { recursive: true })) as string[];
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    for (const n of names) {
      const key = base === '' ? n.split(path.sep).join('/') : `${base}/${n.split(path.sep).join('/')}`;
      if (!key.startsWith(prefix) || key.includes(TMP_MARK)) continue;
      const st = await stat(path.join(start, n));
      if (st.isFile()) out.push({ key, size: st.size });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    await rm(this.pathOf(key), { force: true });
  }

  async abortIncomplete(prefix: string, before: Date): Promise<number> {
    const base = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const start = base === '' ? this.dir : this.pathOf(base);
    let names: string[];
    try {
      names = (await readdir(start, { recursive: true })) as string[];
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
    let n = 0;
    for (const name of names) {
      if (!name.includes(TMP_MARK)) continue;
      const p = path.join(start, name);
      const st = await stat(p).catch(() => null);
      if (st && st.mtime < before) {
        await rm(p, { force: true });
        n++;
      }
    }
    return n;
  }

  close(): void {}
}
