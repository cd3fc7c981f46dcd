/**
 * Memory that native I/O may still use after its request was given up. A request handed
 * to a thread-pool preadv/pwritev cannot be stopped: when the engine cancels it (a replica
 * timed out, the engine was fenced), its promise rejects at once while the native call
 * runs on and will read or write the caller's buffers when it completes. The canceller
 * puts a hold on those buffers until the native call has completed; whoever recycles
 * memory (the NBD BufferPool) must not hand held memory to anyone else.
 *
 * Holds are counted per ArrayBuffer (views share their backing store), in a WeakMap, with
 * one module-wide count, so that the common case (nothing held) costs one integer check.
 */

const holds = new WeakMap<ArrayBufferLike, number>();
/** ArrayBuffers with at least one hold. */
let heldBuffers = 0;

type Memory = Uint8Array | readonly Uint8Array[];

function each(memory: Memory, fn: (b: ArrayBufferLike) => void): void {
  if (memory instanceof Uint8Array) fn(memory.buffer);
  else for (const m of memory) fn(m.buffer);
}

function add(b: ArrayBufferLike): void {
  const n = holds.get(b) ?? 0;
  if (n === 0) heldBuffers++;
  holds.set(b, n + 1);
}

function drop(b: ArrayBufferLike): void {
  const n = holds.get(b);
  if (n === undefined) return;
  if (n > 1) {
    holds.set(b, n - 1);
    return;
  }
  holds.delete(b);
  heldBuffers--;
}

/** Native I/O still uses `memory`: nobody may reuse it until `releaseMemory(memory)`. */
export function holdMemory(memory: Memory): void {
  each(memory, add);
}

/** The native I/O that used `memory` has completed (one release per hold). */
export function releaseMemory(memory: Memory): void {
  each(memory, drop);
}

/** Whether native I/O may still use `buf`'s memory. */
export function isMemoryHeld(buf: Uint8Array): boolean {
  return heldBuffers !== 0 && holds.has(buf.buffer);
}

/** ArrayBuffers held now (for tests and metrics). */
export function heldMemoryCount(): number {
  return heldBuffers;
}
