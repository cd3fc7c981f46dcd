/**
 * CPU time of a process split between its main thread (for node: JS, the event loop's
 * syscalls, TLS) and its other threads (V8's GC and compiler helpers, the libuv pool),
 * from /proc/<pid>/task/<tid>/stat.
 */
import { readFile, readdir } from 'node:fs/promises';

const CLOCK_TICKS_PER_SEC = 100;

export interface ThreadCpu {
  mainSec: number;
  otherSec: number;
}

async function taskSeconds(pid: number, tid: string): Promise<number> {
  const text = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '');
  if (!text) return 0; // the thread ended
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
}

/** CPU seconds so far of the main thread and of the other threads alive now. */
export async function threadCpu(pid: number): Promise<ThreadCpu> {
  const tids = await readdir(`/proc/${pid}/task`);
  let mainSec = 0;
  let otherSec = 0;
  for (const tid of tids) {
    const s = await taskSeconds(pid, tid);
    if (tid === String(pid)) mainSec = s;
    else otherSec += s;
  }
  return { mainSec, otherSec };
}

export function threadCpuDelta(after: ThreadCpu, before: ThreadCpu): ThreadCpu {
  return { mainSec: after.mainSec - before.mainSec, otherSec: after.otherSec - before.otherSec };
}
