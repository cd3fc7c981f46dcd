/**
 * The NBD servers under test, each a child process we wait for (PID 1 here does not reap
 * orphans), with their CPU time read from /proc/<pid>/stat.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

const CLOCK_TICKS_PER_SEC = 100;

export interface ServerProcess {
  name: string;
  socketPath: string;
  child: ChildProcess;
  stderr: string[];
}

export interface ServerSpec {
  name: string;
  command: string;
  args: string[];
  socketPath: string;
  cwd?: string;
}

export async function startServer(spec: ServerSpec): Promise<ServerProcess> {
  const child = spawn(spec.command, spec.args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: spec.cwd });
  const proc: ServerProcess = { name: spec.name, socketPath: spec.socketPath, child, stderr: [] };
  child.stderr!.on('data', (d: Buffer) => proc.stderr.push(d.toString()));
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) break;
    const st = await stat(spec.socketPath).catch(() => undefined);
    if (st?.isSocket()) return proc;
    await sleep(50);
  }
  await stopServer(proc);
  throw new Error(`${spec.name} did not start: ${proc.stderr.join('').slice(-500)}`);
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the child has been reaped. */
export async function stopServer(proc: ServerProcess): Promise<void> {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** User + system CPU seconds of a process (all its threads) so far. */
export async function cpuSeconds(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // Fields after "(comm)": state is index 0, so utime (field 14) is 11 and stime 12.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
}
