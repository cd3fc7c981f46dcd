/**
 * The key layout of the cluster store. Stores prepend `/cairn/<cluster>/`; the builders
 * here return keys relative to that prefix. docs/cluster-store.md lists them all.
 */
import { Code, StorageError } from '../../common/errors.js';
import type { NodeId } from '../../common/ids.js';

const CLUSTER_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** `/cairn/<cluster>/`: every key of one cluster lives under it, so clusters can share an etcd. */
export function clusterPrefix(cluster: string): string {
  if (!CLUSTER_RE.test(cluster)) {
    throw new StorageError(Code.INVALID_ARGUMENT, `cluster name "${cluster}" is not valid: use 1-63 lower-case letters, digits or '-'`);
  }
  return `/cairn/${cluster}/`;
}

export const keys = {
  nodesPrefix: 'nodes/',
  /** A node's record: address, labels, capacity. Persistent, so a down node is still listed. */
  node: (id: NodeId): string => `nodes/${id}`,
  /** A node's liveness key, attached to its lease: present while the node is up. */
  nodeAlive: (id: NodeId): string => `nodes/${id}/alive`,
  /** Volume documents are keyed by name: see volume-doc.ts (`volumeKey`). */
  volumesPrefix: 'volumes/',
  /** Snapshot documents are keyed by name: see snapshot-doc.ts (`snapshotKey`). */
  snapshotsPrefix: 'snapshots/',
  /** Group snapshot documents are keyed by name: see snapshot/group-doc.ts. */
  groupSnapshotsPrefix: 'group-snapshots/',
  /** Snapshot rules are keyed by name: see snapshot/rule-store.ts. */
  rulesPrefix: 'rules/',
  leadersPrefix: 'leaders/',
  /** The key a leader election for `role` campaigns on (e.g. "repair"). */
  leader: (role: string): string => `leaders/${role}`,
} as const;

/**
 * The first byte string after every key that starts with `prefix` (etcd's range_end);
 * undefined when there is none (an empty prefix, or all 0xff bytes): no upper bound.
 */
export function prefixEnd(prefix: Buffer): Buffer | undefined {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i]! < 0xff) {
      const end = Buffer.from(prefix.subarray(0, i + 1));
      end[i]! += 1;
      return end;
    }
  }
  return undefined;
}
