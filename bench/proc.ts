/** What the benchmarks read of other processes from /proc (Linux). */
import { readFileSync } from 'node:fs';

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
