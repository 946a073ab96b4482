/**
 * One node per data directory: `walkeeper.pid` holds the running node's pid.
 * Offline commands (import) refuse to touch a data directory a node is
 * serving from; a stale file (its process is gone) is taken over.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const PID_FILE = 'walkeeper.pid';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function runningPid(dataDir: string): Promise<number | null> {
  const text = await readFile(path.join(dataDir, PID_FILE), 'utf8').catch(() => null);
  if (text === null) return null;
  const pid = Number(text.split('\n')[0]);
  return Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid) ? pid : null;
}

export async function checkNotRunning(dataDir: string): Promise<void> {
  const pid = await runningPid(dataDir);
  if (pid !== null) throw new Error(`a walkeeper node (pid ${pid}) is running on ${dataDir}; stop it first`);
}

/** Takes the data directory for this process; returns a release function. */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await checkNotRunning(dataDir);
  const file = path.join(dataDir, PID_FILE);
  await writeFile(file, `${process.pid}\n`);
  return async () => {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (Number(text.split('\n')[0]) === process.pid) await rm(file, { force: true });
  };
}
