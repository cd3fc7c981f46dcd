import { open } from 'node:fs/promises';

/** fsyncs a directory, so that a rename or unlink in it survives a crash. */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
