/** What the benchmarks read of other processes from /proc (Linux). */
import { readdirSync, readFileSync } from 'node:fs';
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

/**
 * Where the threads of some processes ran: every few milliseconds each
 * thread's CPU time since the last look (schedstat) is counted to the CPU
 * it is on now. `share(cpu)` is the part of their CPU time spent on `cpu`:
 * for a client pinned there, how often the server shared its core.
 */
export class Placement {
  private last = new Map<string, number>();
  private byCpu = new Map<number, number>();
  private timer: NodeJS.Timeout;
  /** Looked up until found, then kept: a scan of /proc every few milliseconds would itself load the machine measured. */
  private found: number[] = [];

  constructor(private readonly pids: () => number[], everyMs = 5) {
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  private sample(): void {
    if (this.found.length === 0) this.found = this.pids();
    for (const pid of this.found) {
      let tids: string[];
      try {
        tids = readdirSync(`/proc/${pid}/task`);
      } catch {
        continue;
      }
      for (const tid of tids) {
        try {
          const ns = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
          const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
          const cpu = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[36]);
          const key = `${pid}/${tid}`;
          const before = this.last.get(key);
          this.last.set(key, ns);
          if (before !== undefined && ns > before) this.byCpu.set(cpu, (this.byCpu.get(cpu) ?? 0) + (ns - before));
        } catch {
          // (the thread ended)
        }
      }
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  share(cpu: number): number {
    let all = 0;
    for (const v of this.byCpu.values()) all += v;
    return all === 0 ? 0 : (this.byCpu.get(cpu) ?? 0) / all;
  }
}

/** PostgreSQL's walsender processes now (their command line says "walsender"). */
export function walsenderPids(): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('walsender')) out.push(Number(d));
    } catch {
      // (gone)
    }
  }
  return out;
}
