/**
 * CPU profiles of the cairnd processes of a cluster, phase by phase. `enable` must run
 * before the daemons start: it makes every node process started afterwards load
 * cpu-prof-preload.mjs, which profiles a cairnd between two SIGUSR2 (node does not take
 * --cpu-prof in NODE_OPTIONS, and the cluster harness starts the daemons itself). The same
 * preload can also widen the HTTP/2 flow-control windows of every cairnd, as an experiment
 * (`experimentHttp2Window`).
 */
import { readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { summarizeCpuProfile } from './cpu-profile.js';

const PRELOAD = fileURLToPath(new URL('./cpu-prof-preload.mjs', import.meta.url));

export interface ProfiledProcess {
  node: string;
  pid: number;
}

/** Makes every node process this process starts from now on load the preload (it acts only in cairnd, on the variables it is given). */
function loadPreload(): void {
  const flag = `--import=${pathToFileURL(PRELOAD).href}`;
  const current = process.env.NODE_OPTIONS ?? '';
  if (!current.includes(flag)) process.env.NODE_OPTIONS = `${current} ${flag}`.trim();
}

/**
 * An experiment, not Cairn's code: every cairnd started from now on advertises `bytes` as
 * its HTTP/2 stream window and widens its connection windows to `bytes` (grpc-js's server
 * keeps node's 64 KiB default, so a 1 MiB write to a peer waits for ~16 WINDOW_UPDATEs).
 */
export function experimentHttp2Window(bytes: number): void {
  process.env.CAIRN_BENCH_H2_WINDOW = String(bytes);
  loadPreload();
}

export class ClusterProfiler {
  private constructor(readonly dir: string) {}

  /** Sets NODE_OPTIONS and CAIRN_BENCH_PROF_DIR for the processes this process starts from now on. */
  static enable(dir: string): ClusterProfiler {
    process.env.CAIRN_BENCH_PROF_DIR = dir;
    loadPreload();
    return new ClusterProfiler(dir);
  }

  start(procs: ProfiledProcess[]): void {
    for (const p of procs) process.kill(p.pid, 'SIGUSR2');
  }

  /** Stops the profiles and names them `<label>.<node>.cpuprofile`; returns their paths. */
  async stop(procs: ProfiledProcess[], label: string): Promise<string[]> {
    const before = new Set(await readdir(this.dir));
    for (const p of procs) process.kill(p.pid, 'SIGUSR2');
    const out: string[] = [];
    for (const p of procs) {
      const prefix = `${p.node}.${p.pid}.`;
      const deadline = Date.now() + 30_000;
      let found: string | undefined;
      while (!found) {
        found = (await readdir(this.dir)).find((f) => f.startsWith(prefix) && f.endsWith('.cpuprofile') && !before.has(f));
        if (found) break;
        if (Date.now() > deadline) throw new Error(`no CPU profile from ${p.node} (pid ${p.pid}) in ${this.dir} after 30 s`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const target = join(this.dir, `${label}.${p.node}.cpuprofile`);
      await rename(join(this.dir, found), target);
      out.push(target);
    }
    return out;
  }
}

/** Prints the functions with the most self time in each profile (idle included). */
export async function printProfiles(paths: string[], topN = 12): Promise<void> {
  for (const path of paths) {
    const { wallSec, top } = await summarizeCpuProfile(path, topN);
    console.log(`  ${path} (${wallSec.toFixed(1)} s of JS thread), self time:`);
    for (const [fn, share] of top) console.log(`    ${(share * 100).toFixed(1).padStart(5)}%  ${fn}`);
  }
}
