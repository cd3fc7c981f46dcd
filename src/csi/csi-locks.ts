/**
 * Per-id locks for CSI calls: a call takes the locks of the ids it works on (a volume's id
 * or name, a snapshot's id) or none at all. A lock that is held is not waited for: the
 * spec's answer to a second call on a busy volume or snapshot is ABORTED ("operation
 * pending"), and the CO retries with back-off. One instance is shared by every CSI service
 * of a process, so Controller and Node calls on one volume exclude each other too.
 */
export class CsiLocks {
  private readonly held = new Set<string>();

  /** Takes every key, or none when one of them is held: returns the busy key then. */
  tryAcquire(keys: readonly string[]): { release: () => void } | { busy: string } {
    const unique = [...new Set(keys)];
    const busy = unique.find((k) => this.held.has(k));
    if (busy !== undefined) return { busy };
    for (const k of unique) this.held.add(k);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const k of unique) this.held.delete(k);
      },
    };
  }

  isHeld(key: string): boolean {
    return this.held.has(key);
  }
}

/** Lock key of a volume, by id or by name (CreateVolume only knows the name). */
export function volumeLockKey(idOrName: string): string {
  return `volume/${idOrName}`;
}

export function snapshotLockKey(idOrName: string): string {
  return `snapshot/${idOrName}`;
}
