/**
 * Reads a V8 CPU profile (`node --cpu-prof`) and sums self time by function, to show where
 * a process's JS thread spends its time (and how much of it is idle).
 */
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  wallSec: number;
  /** [function, share of samples] by descending share. */
  top: [string, number][];
}

export async function summarizeCpuProfile(path: string, topN = 15): Promise<ProfileSummary> {
  const profile = JSON.parse(await readFile(path, 'utf8')) as CpuProfile;
  const names = new Map<number, string>();
  for (const n of profile.nodes) {
    const { functionName, url, lineNumber } = n.callFrame;
    const file = url.split('/').pop() ?? '';
    names.set(n.id, file ? `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}` : functionName);
  }
  const counts = new Map<string, number>();
  for (const id of profile.samples) {
    const name = names.get(id) ?? '?';
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  const total = profile.samples.length || 1;
  const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, topN).map(([name, n]): [string, number] => [name, n / total]);
  return { wallSec: (profile.endTime - profile.startTime) / 1e6, top };
}
