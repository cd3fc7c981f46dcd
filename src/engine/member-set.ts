/**
 * The volume engine's replicas, and the groups its I/O path reads: in sync, write-only
 * (rebuilding), out of sync, and the one reads come from. The groups are rebuilt by
 * `refresh()` after every change of a role or of membership, so requests read ready arrays.
 */
import type { NodeId, ReplicaId } from '../common/ids.js';
import type { Member } from './engine-member.js';
import type { EngineReplicaView } from './engine-types.js';

export class MemberSet {
  /** In the order the replicas joined: the first in-sync one is the fallback read replica. */
  private readonly byId = new Map<ReplicaId, Member>();
  private inSyncNow: Member[] = [];
  private writeOnlyNow: Member[] = [];
  private targetsNow: Member[] = [];
  private missingNow: Member[] = [];
  private readNow: Member | undefined;

  constructor(private readonly localNodeId: NodeId) {}

  get inSync(): readonly Member[] {
    return this.inSyncNow;
  }

  get writeOnly(): readonly Member[] {
    return this.writeOnlyNow;
  }

  /** inSync followed by writeOnly: where writes go. */
  get targets(): readonly Member[] {
    return this.targetsNow;
  }

  /** Members out of sync and not written to: writes mark their maps. */
  get missing(): readonly Member[] {
    return this.missingNow;
  }

  /** The in-sync replica reads come from: the local one, else the current one while it stays in sync. */
  get readMember(): Member | undefined {
    return this.readNow;
  }

  has(id: ReplicaId): boolean {
    return this.byId.has(id);
  }

  /** Adds a member; `refresh()` puts it in its group. */
  add(m: Member): void {
    this.byId.set(m.id, m);
  }

  /** Forgets a member; `refresh()` takes it out of its group. */
  delete(m: Member): void {
    this.byId.delete(m.id);
  }

  values(): IterableIterator<Member> {
    return this.byId.values();
  }

  refresh(): void {
    const inSync: Member[] = [];
    const writeOnly: Member[] = [];
    const missing: Member[] = [];
    for (const m of this.byId.values()) {
      if (m.role === 'in-sync') inSync.push(m);
      else if (m.role === 'write-only') writeOnly.push(m);
      else missing.push(m);
    }
    this.inSyncNow = inSync;
    this.writeOnlyNow = writeOnly;
    this.targetsNow = writeOnly.length > 0 ? [...inSync, ...writeOnly] : inSync;
    this.missingNow = missing;
    const local = inSync.find((m) => m.entry.nodeId === this.localNodeId);
    const current = this.readNow;
    this.readNow = local ?? (current?.role === 'in-sync' ? current : inSync[0]);
  }

  /** What `cairnctl` shows of each replica; a replica out of sync whose map is unknown counts as dirty all through `sizeBytes`. */
  views(sizeBytes: number): EngineReplicaView[] {
    return [...this.byId.values()].map((m) => {
      const state = m.role === 'in-sync' ? 'in-sync' : m.role === 'write-only' ? 'rebuilding' : m.outState;
      const dirtyBytes = m.role === 'in-sync' ? 0 : m.map && m.mapKnown ? m.map.dirtyBytes() : sizeBytes;
      const view: EngineReplicaView = { replicaId: m.id, nodeId: m.entry.nodeId, state, dirtyBytes };
      if (m.role === 'write-only') {
        const p = m.rebuild?.progress;
        view.rebuild = p ? { ...p } : { doneBytes: 0, totalBytes: dirtyBytes, bytesPerSecond: 0 };
      }
      return view;
    });
  }
}
