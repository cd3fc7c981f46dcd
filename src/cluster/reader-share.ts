/**
 * When a node may serve a volume as a reader (engine/reader-engine.ts) next to the node
 * whose engine holds it: the volume is published read-only to this node, every
 * publication is read-only (CSI MULTI_NODE_READER_ONLY), and the engine that holds the
 * volume, if any, serves a read-only export (its `engine.readOnly`). Then nobody can write
 * through an NBD client, so readers on several nodes see the same bytes, and none of them
 * needs an epoch of its own. A writer (an export that is not read-only, a new read-write
 * publication) breaks the condition and fences the readers.
 */
import type { NodeId } from '../common/ids.js';
import type { VolumeDoc } from './volume-doc.js';

/** Whether readers on `nodeId` may go on reading `doc` at its epoch. */
export function readersMayShare(doc: VolumeDoc, nodeId: NodeId): boolean {
  const published = doc.published ?? [];
  if (doc.state !== 'ready' || published.length === 0) return false;
  if (!published.every((p) => p.readonly) || !published.some((p) => p.nodeId === nodeId)) return false;
  return !doc.engine?.exported || doc.engine.readOnly === true;
}

/** Whether `nodeId` should start a reader rather than take the volume: another node's read-only engine holds it. */
export function shouldStartReader(doc: VolumeDoc, nodeId: NodeId): boolean {
  return doc.engine?.exported === true && doc.engine.nodeId !== nodeId && readersMayShare(doc, nodeId);
}
