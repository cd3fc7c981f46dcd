/**
 * Waiting for a restored or cloned volume's replicas to fill: cairnctl polls GetVolume and
 * shows the rebuild progress the replicas report, on stderr (a redrawn bar at a terminal,
 * a plain line now and then otherwise), until every replica is in sync. Ctrl-C stops the
 * waiting only: the fill goes on in the daemons, and `cairnctl volume inspect` shows it.
 */
import { Code, StorageError } from '../common/errors.js';
import type { VolumeMessage } from './api-client.js';
import { fillLine, fillProgress } from './format.js';

export interface FillWaitOptions {
  /** GetVolume of the new volume. */
  get: () => Promise<VolumeMessage>;
  /** Between two polls. */
  pollMs: number;
  /** Where progress goes (process.stderr). */
  out: { write(text: string): unknown; isTTY?: boolean };
  /** Without a terminal: one plain line every this many milliseconds (and the first and last). */
  plainEveryMs: number;
  /** Fires to stop waiting (Ctrl-C). */
  signal: AbortSignal;
}

export type FillWaitResult = { done: true; volume: VolumeMessage } | { done: false; volume: VolumeMessage };

/**
 * Polls from `first` (the create's reply) until no replica is out of sync: `done` then.
 * Stops with `done: false` when the signal fires. A volume that turns faulted while it
 * fills is FAILED_PRECONDITION (the fill cannot finish without an in-sync source).
 */
export async function waitForFill(first: VolumeMessage, opts: FillWaitOptions): Promise<FillWaitResult> {
  const tty = Boolean(opts.out.isTTY);
  let v = first;
  let lastPlainAt = Number.NEGATIVE_INFINITY;
  const show = (final: boolean): void => {
    const line = fillLine(v);
    if (tty) {
      opts.out.write(`\r\x1b[2K${line}${final ? '\n' : ''}`);
    } else if (final || Date.now() - lastPlainAt >= opts.plainEveryMs) {
      opts.out.write(`${line}\n`);
      lastPlainAt = Date.now();
    }
  };
  while (fillProgress(v)) {
    if (v.health === 'faulted') {
      show(true);
      throw new StorageError(Code.FAILED_PRECONDITION, `volume ${v.name} is faulted while its replicas fill: see cairnctl volume inspect ${v.name}`);
    }
    show(false);
    if (!(await pause(opts.pollMs, opts.signal))) {
      if (tty) opts.out.write('\n');
      return { done: false, volume: v };
    }
    v = await opts.get();
  }
  show(true);
  return { done: true, volume: v };
}

/** Sleeps `ms`; false when the signal fired first. */
function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
