/**
 * Publication (CSI ControllerPublishVolume / ControllerUnpublishVolume): the volume
 * document's `published` list records which nodes may stage the volume and run its engine,
 * each read-only or not. It changes only by compare-and-swap of the document.
 *
 * - One writer at a time: a node is added only while no other node holds the volume, except
 *   that read-only publications may share it when the caller asks for a multi-node reader
 *   (MULTI_NODE_READER_ONLY) and every publication, old and new, is read-only.
 * - Publishing again to the same node with the same `readonly` changes nothing (idempotent);
 *   with the other `readonly`, it is ALREADY_EXISTS.
 * - Publication does not start an engine or bump the epoch: the engine that the node starts
 *   when it stages the volume bumps it (rule 3), fencing any engine that ran before.
 */
import { throwIfCancelled } from '../common/abort.js';
import { Code, StorageError, isStorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { listNodes } from './node-registry.js';
import type { ClusterStore } from './store/cluster-store.js';
import { getVolumeDoc, updateVolumeDoc, type VolumeDoc } from './volume-doc.js';
import type { PublishAccess } from './volume-views.js';

export interface PublishDeps {
  store: ClusterStore;
  log: Logger;
}

const holders = (doc: VolumeDoc): string => (doc.published ?? []).map((p) => `${p.nodeId}${p.readonly ? ' (read-only)' : ''}`).join(', ');

/** The document with `nodeId` published, undefined when it is already, or the reason it cannot be. */
export function publishTo(doc: VolumeDoc, nodeId: NodeId, access: PublishAccess): VolumeDoc | undefined {
  const published = doc.published ?? [];
  const here = published.find((p) => p.nodeId === nodeId);
  if (here) {
    if (here.readonly === access.readonly) return undefined;
    throw new StorageError(Code.ALREADY_EXISTS,
      `volume "${doc.name}" is already published to node ${nodeId} ${here.readonly ? 'read-only' : 'read-write'}: unpublish it there first to change that`,
      { details: { volume: doc.name, node: nodeId } });
  }
  const shared = access.multiNodeReader && access.readonly && published.every((p) => p.readonly);
  if (published.length > 0 && !shared) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `volume "${doc.name}" is published to node ${holders(doc)}: unpublish it there first (only read-only MULTI_NODE_READER_ONLY publications can share a volume)`,
      { details: { volume: doc.name, nodes: published.map((p) => p.nodeId) } });
  }
  return { ...doc, published: [...published, { nodeId, readonly: access.readonly }] };
}

/** The document without `nodeId`'s publication (every one when undefined); undefined when there is nothing to remove. */
export function unpublishFrom(doc: VolumeDoc, nodeId: NodeId | undefined): VolumeDoc | undefined {
  const published = doc.published ?? [];
  const left = nodeId === undefined ? [] : published.filter((p) => p.nodeId !== nodeId);
  if (left.length === published.length) return undefined;
  const { published: _dropped, ...rest } = doc;
  return left.length > 0 ? { ...rest, published: left } : rest;
}

/** NOT_FOUND unless `nodeId` is a registered node (up or down). */
async function requireNode(store: ClusterStore, nodeId: NodeId, log: Logger): Promise<void> {
  const nodes = await listNodes(store, log);
  if (!nodes.some((n) => n.nodeId === nodeId)) {
    throw new StorageError(Code.NOT_FOUND, `node "${nodeId}" is not registered in the cluster: give a node id that NodeGetInfo reports (cairnctl node list)`, { details: { node: nodeId } });
  }
}

/**
 * Publishes the volume to `nodeId` (see the file comment). NOT_FOUND for an unknown volume
 * or node; UNAVAILABLE while the volume is still being created. The caller holds the volume's lock.
 */
export async function publishVolume(deps: PublishDeps, doc: VolumeDoc, nodeId: NodeId, access: PublishAccess, signal?: AbortSignal): Promise<void> {
  await requireNode(deps.store, nodeId, deps.log);
  throwIfCancelled(signal, `publish volume "${doc.name}"`);
  let changed = false;
  await updateVolumeDoc(deps.store, doc.name, (d) => {
    if (d.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `volume "${d.name}" not found`, { details: { volume: d.name } });
    const next = publishTo(d, nodeId, access);
    changed = next !== undefined;
    return next;
  });
  if (changed) deps.log.info({ volume: doc.name, publishedNode: nodeId, readonly: access.readonly }, 'volume published');
}

/** Removes the publication to `nodeId` (every one when undefined); nothing to do for an unknown volume. */
export async function unpublishVolume(deps: PublishDeps, name: string, nodeId: NodeId | undefined, signal?: AbortSignal): Promise<void> {
  const stored = await getVolumeDoc(deps.store, name, { signal });
  if (!stored || unpublishFrom(stored.doc, nodeId) === undefined) return;
  throwIfCancelled(signal, `unpublish volume "${name}"`);
  try {
    await updateVolumeDoc(deps.store, name, (d) => unpublishFrom(d, nodeId));
  } catch (err) {
    if (isStorageError(err) && err.code === Code.NOT_FOUND) return; // deleted meanwhile: published nowhere
    throw err;
  }
  deps.log.info({ volume: name, publishedNode: nodeId ?? 'every node' }, 'volume unpublished');
}
