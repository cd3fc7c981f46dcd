/**
 * Running a short child process (mount, blkid, mkfs, losetup, ...): its failure becomes a
 * ChildProcessError carrying the exit code and stderr, and an AbortSignal kills it (the
 * call then rejects with CANCELLED). Callers choose the error code from the exit code.
 */
import { execFile } from 'node:child_process';
import { ChildProcessError, Code, StorageError } from './errors.js';

export interface CommandOptions {
  signal?: AbortSignal | undefined;
  /** Kills the child after this long (UNAVAILABLE); 120 s by default. */
  timeoutMs?: number;
  /** The error code for a non-zero exit, from the exit code; INTERNAL by default. */
  codeFor?: (exitCode: number | null) => Code;
  details?: Record<string, unknown>;
}

export interface CommandResult {
  stdout: string;
  stderr: string;
}

const DEFAULT_TIMEOUT_MS = 120_000;

/** Runs `command args`; resolves with its output when it exits 0. */
export function runCommand(command: string, args: readonly string[], options: CommandOptions = {}): Promise<CommandResult> {
  const what = `${command} ${args.join(' ')}`;
  if (options.signal?.aborted) return Promise.reject(cancelled(what, options.signal));
  return new Promise((resolve, reject) => {
    execFile(command, [...args], { timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, signal: options.signal, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve({ stdout, stderr });
      if (options.signal?.aborted) return reject(cancelled(what, options.signal));
      const e = err as NodeJS.ErrnoException & { code?: unknown; killed?: boolean };
      if (e.code === 'ENOENT') {
        return reject(new StorageError(Code.FAILED_PRECONDITION, `${command} is not installed on this node`, { cause: err, details: { ...options.details, command } }));
      }
      const exitCode = typeof e.code === 'number' ? e.code : null;
      const code = e.killed ? Code.UNAVAILABLE : options.codeFor?.(exitCode) ?? Code.INTERNAL;
      reject(new ChildProcessError(what, exitCode, `${stderr}${stderr ? '' : e.message}`, { code, details: options.details ?? {} }));
    });
  });
}

function cancelled(what: string, signal: AbortSignal): StorageError {
  return new StorageError(Code.CANCELLED, `${what}: cancelled`, { cause: signal.reason, details: { command: what } });
}
