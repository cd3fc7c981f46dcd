/** Runs a command for a test and returns its output; rejects with stderr on failure. */
import { execa } from 'execa';

export async function run(command: string, args: string[], opts: { input?: string | Buffer; timeoutMs?: number } = {}): Promise<string> {
  const result = await execa(command, args, { input: opts.input, timeout: opts.timeoutMs ?? 120_000, reject: false, stripFinalNewline: true });
  if (result.exitCode !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.exitCode ?? result.signal}: ${result.stderr || result.stdout}`);
  }
  return result.stdout;
}

export async function has(command: string): Promise<boolean> {
  const r = await execa('sh', ['-c', `command -v ${command}`], { reject: false });
  return r.exitCode === 0;
}

export const isRoot = process.getuid?.() === 0;
