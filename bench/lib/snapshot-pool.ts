/**
 * What a benchmark's file pool is made of, for the machine line: the layout the pool
 * recorded (`<pool>/layout.json`: direct or xfs-image, and why) and the filesystem its
 * devices live on.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

function filesystemOf(path: string): string {
  try {
    return execFileSync('findmnt', ['-n', '-o', 'FSTYPE,SOURCE,OPTIONS', '-T', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

/** e.g. "file pool xfs-image (the host filesystem cannot reflink), devices on xfs /dev/loop3 rw,...". */
export function poolFacts(poolDir: string): string {
  let layout = 'unknown layout (no layout.json)';
  const record = join(poolDir, 'layout.json');
  if (existsSync(record)) {
    try {
      const r = JSON.parse(readFileSync(record, 'utf8')) as { layout?: string; reason?: string };
      layout = `${r.layout ?? '?'} layout (${r.reason ?? 'no reason recorded'})`;
    } catch {
      layout = `unreadable ${record}`;
    }
  }
  const devices = existsSync(join(poolDir, 'xfs', 'devices')) ? join(poolDir, 'xfs', 'devices') : join(poolDir, 'devices');
  return `file pool, ${layout}; devices on ${filesystemOf(devices)}`;
}
