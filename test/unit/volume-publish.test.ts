import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, VolumeId } from '../../src/common/ids.js';
import type { VolumeDoc } from '../../src/cluster/volume-doc.js';
import { publishTo, unpublishFrom } from '../../src/cluster/volume-publish.js';

const doc = (published?: { nodeId: string; readonly: boolean }[]): VolumeDoc => ({
  id: 'vol-1' as VolumeId, name: 'pvc-1', sizeBytes: 4096, createdAt: '', state: 'ready', replicasWanted: 1, regionBytes: 1 << 20,
  epoch: 1, engine: null, replicas: [], ...(published ? { published: published as VolumeDoc['published'] } : {}),
});
const node = (n: string): NodeId => n as NodeId;
const writer = { readonly: false, multiNodeReader: false };
const sharedReader = { readonly: true, multiNodeReader: true };

const codeOf = (fn: () => unknown): Code | undefined => {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof StorageError ? err.code : undefined;
  }
};

test('publish: a volume published nowhere is published to the node; the same call again changes nothing', (t) => {
  t.deepEqual(publishTo(doc(), node('a'), writer)?.published, [{ nodeId: 'a', readonly: false }]);
  t.is(publishTo(doc([{ nodeId: 'a', readonly: false }]), node('a'), writer), undefined);
  t.is(publishTo(doc([{ nodeId: 'a', readonly: true }]), node('a'), { readonly: true, multiNodeReader: false }), undefined);
});

test('publish: the same node with the other readonly is ALREADY_EXISTS', (t) => {
  t.is(codeOf(() => publishTo(doc([{ nodeId: 'a', readonly: false }]), node('a'), { readonly: true, multiNodeReader: false })), Code.ALREADY_EXISTS);
  t.is(codeOf(() => publishTo(doc([{ nodeId: 'a', readonly: true }]), node('a'), writer)), Code.ALREADY_EXISTS);
});

test('publish: another node while one holds it is FAILED_PRECONDITION naming it, unless all are MULTI_NODE_READER_ONLY read-only', (t) => {
  const err = t.throws(() => publishTo(doc([{ nodeId: 'a', readonly: false }]), node('b'), writer), { instanceOf: StorageError });
  t.is(err.code, Code.FAILED_PRECONDITION);
  t.regex(err.message, /node a/);
  t.is(codeOf(() => publishTo(doc([{ nodeId: 'a', readonly: false }]), node('b'), sharedReader)), Code.FAILED_PRECONDITION, 'a writer holds it');
  t.is(codeOf(() => publishTo(doc([{ nodeId: 'a', readonly: true }]), node('b'), { readonly: true, multiNodeReader: false })), Code.FAILED_PRECONDITION, 'not a multi-node capability');
  t.is(codeOf(() => publishTo(doc([{ nodeId: 'a', readonly: true }]), node('b'), { readonly: false, multiNodeReader: true })), Code.FAILED_PRECONDITION, 'the new one writes');
  t.deepEqual(publishTo(doc([{ nodeId: 'a', readonly: true }]), node('b'), sharedReader)?.published, [{ nodeId: 'a', readonly: true }, { nodeId: 'b', readonly: true }]);
});

test('unpublish: removes that node, or every node; nothing to do when it is not published there', (t) => {
  const two = doc([{ nodeId: 'a', readonly: true }, { nodeId: 'b', readonly: true }]);
  t.deepEqual(unpublishFrom(two, node('a'))?.published, [{ nodeId: 'b', readonly: true }]);
  t.false('published' in unpublishFrom(two, undefined)!);
  t.false('published' in unpublishFrom(doc([{ nodeId: 'a', readonly: false }]), node('a'))!);
  t.is(unpublishFrom(two, node('c')), undefined);
  t.is(unpublishFrom(doc(), undefined), undefined);
});
