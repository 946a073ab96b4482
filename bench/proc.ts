/** What the benchmarks read of other processes from /proc (Linux). */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

/** USER_HZ: /proc counts CPU time in ticks of 1/100 s. */
const TICK = 1 / 100;

/** A process's user + system CPU so far, in seconds (0 once it is gone, or off Linux). */
export function cpuSecondsOf(pid: number): number {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // (the command name in parentheses may hold spaces: fields are counted after its closing one)
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * TICK;
  } catch {
    return 0;
  }
}

/** Busy CPU time of the whole machine so far (every CPU's user, nice, system, irq and softirq in /proc/stat), in seconds. */
export function machineCpuSeconds(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq] = f;
    return (user! + nice! + system! + irq! + softirq!) * TICK;
  } catch {
    return 0;
  }
}

/** A memory figure of a process from /proc/<pid>/status, in KiB: VmRSS, VmHWM (its peak), RssAnon (what it allocated; mapped files not counted). */
export async function memoryKiB(pid: number, field: 'VmRSS' | 'VmHWM' | 'RssAnon'): Promise<number> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(s)?.[1] ?? 0);
}
