/**
 * The last line of a benchmark's cleanup: whatever is still mounted, looped or served by
 * nbdfuse under the directories the run made, after the graceful path (CSI unpublish and
 * unstage, the reference's umount and losetup -d) has had its turn. It touches only
 * mounts below those directories, loop devices backed by files below them and nbdfuse
 * processes whose command line names them (cairnd starts nbdfuse in its own session, so
 * a dead cairnd leaves it behind). Returns what it had to clean, so the bench can say so.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { listMounts } from '../../src/engine/mounter.js';
import { run } from '../../test/helpers/run.js';

const under = (path: string, roots: readonly string[]): boolean => roots.some((r) => path === r || path.startsWith(`${r}/`));

/** nbdfuse processes whose arguments name a path under `roots`: pid and the FUSE directory. */
function nbdfuseUnder(roots: readonly string[]): { pid: number; dir: string }[] {
  const found: { pid: number; dir: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // it exited meanwhile
    }
    const dir = argv[1];
    if (argv[0]?.endsWith('nbdfuse') && dir && under(dir, roots)) found.push({ pid: Number(entry), dir });
  }
  return found;
}

/**
 * Order: nbdfuse first, killed (SIGKILL: the kernel aborts its FUSE connection, so every
 * request still queued on it fails at once); then the filesystems and bind mounts (lazy
 * unmounts, innermost first); then the loop devices (a busy one is left to autoclear); then
 * the FUSE mounts. Killing nbdfuse first is what keeps the sweep from hanging: with its
 * export gone, nbdkit's retry filter would hold every write for minutes, and the last
 * unmount of an ext4 on that loop device writes its superblock and waits (so would any
 * `sync` on the machine). The data on a swept volume is lost: this runs only on what the
 * graceful path could not undo.
 */
export async function sweepAttachments(roots: readonly string[]): Promise<string[]> {
  const cleaned: string[] = [];
  const unmount = async (fuse: boolean): Promise<void> => {
    // Innermost (latest) mounts first: bind mounts before the filesystems under them.
    const mounts = (await listMounts()).filter((m) => under(m.mountPoint, roots) && m.fsType.startsWith('fuse') === fuse).reverse();
    for (const m of mounts) {
      await run('umount', ['-l', m.mountPoint]).catch(() => undefined);
      cleaned.push(`mount ${m.mountPoint}`);
    }
  };
  for (const f of nbdfuseUnder(roots)) {
    try {
      process.kill(f.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    cleaned.push(`nbdfuse pid ${f.pid} on ${f.dir}`);
  }
  await unmount(false);
  const loops = (await run('losetup', ['-n', '-l', '-O', 'NAME,BACK-FILE']).catch(() => ''))
    .split('\n').map((l) => l.trim().split(/\s+/)).filter(([name, file]) => name && file && under(file, roots));
  for (const [name, file] of loops) {
    await run('losetup', ['-d', name!]).catch(() => undefined);
    cleaned.push(`loop ${name} on ${file}`);
  }
  await unmount(true);
  return cleaned;
}
