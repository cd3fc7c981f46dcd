import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import {
  DEFAULT_VOLUME_BYTES, XFS_MIN_BYTES, capabilityProblem, checkTopology, decodeListToken, encodeListToken, minimumBytes, parseParameters,
  preferredNodeOf, requisiteNodes, sizeFitsRange, sizeForRange,
} from '../../src/csi/controller-params.js';
import { volumeCondition } from '../../src/csi/volume-condition.js';
import type { VolumeView } from '../../src/cluster/volume-views.js';

const codeOf = (fn: () => unknown): Code | undefined => {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof StorageError ? err.code : undefined;
  }
};

test('parameters: replicas 1-3 and fsType ext4/xfs are read; the provisioner keys are accepted', (t) => {
  t.deepEqual(parseParameters({
    replicas: '2', fsType: 'xfs', 'csi.storage.k8s.io/pvc/name': 'data', 'csi.storage.k8s.io/pvc/namespace': 'ns', 'csi.storage.k8s.io/pv/name': 'pvc-1',
  }), { replicas: 2, fsType: 'xfs' });
  t.deepEqual(parseParameters(undefined), {});
});

test('parameters: a bad value or an unknown key is INVALID_ARGUMENT naming it', (t) => {
  for (const bad of [{ replicas: '0' }, { replicas: '4' }, { replicas: '2.5' }, { replicas: 'two' }, { fsType: 'btrfs' }, { zone: 'a' }] as Record<string, string>[]) {
    const err = t.throws(() => parseParameters(bad), { instanceOf: StorageError });
    t.is(err.code, Code.INVALID_ARGUMENT);
    t.true(err.message.includes(Object.keys(bad)[0]!), err.message);
  }
});

test('mutable parameters: only replicas; fsType and provisioner keys are refused', (t) => {
  t.deepEqual(parseParameters({ replicas: '3' }, true), { replicas: 3 });
  t.is(codeOf(() => parseParameters({ fsType: 'ext4' }, true)), Code.INVALID_ARGUMENT);
  t.is(codeOf(() => parseParameters({ 'csi.storage.k8s.io/pvc/name': 'x' }, true)), Code.INVALID_ARGUMENT);
});

test('capacity: required rounds up to 4 KiB, limit honoured, default when absent', (t) => {
  t.is(sizeForRange(undefined), DEFAULT_VOLUME_BYTES);
  t.is(sizeForRange({ requiredBytes: '1' }), 4096);
  t.is(sizeForRange({ requiredBytes: '8192', limitBytes: '8192' }), 8192);
  t.is(sizeForRange({ limitBytes: String(10 * 4096 + 5) }), 10 * 4096);
  t.is(sizeForRange({ limitBytes: String(4 * 1024 ** 3) }), DEFAULT_VOLUME_BYTES);
});

test('capacity: no 4 KiB multiple in range, a limit under 4 KiB, or over the maximum is OUT_OF_RANGE', (t) => {
  t.is(codeOf(() => sizeForRange({ requiredBytes: '4097', limitBytes: '5000' })), Code.OUT_OF_RANGE);
  t.is(codeOf(() => sizeForRange({ limitBytes: '100' })), Code.OUT_OF_RANGE);
  t.is(codeOf(() => sizeForRange({ requiredBytes: String(2 ** 51) })), Code.OUT_OF_RANGE);
});

test('parameters: zones is a comma-separated list of zone names; an empty or ill-formed list is INVALID_ARGUMENT naming zones', (t) => {
  t.deepEqual(parseParameters({ zones: 'eu-1a' }), { zones: ['eu-1a'] });
  t.deepEqual(parseParameters({ zones: 'eu-1a, eu-1b,eu-1a' }), { zones: ['eu-1a', 'eu-1b'] });
  for (const bad of ['', ',', 'a,,b', 'a,', ' ', 'zone with space', '-a', 'a/b']) {
    const err = t.throws(() => parseParameters({ zones: bad }), { instanceOf: StorageError }, JSON.stringify(bad));
    t.is(err.code, Code.INVALID_ARGUMENT);
    t.regex(err.message, /zones/);
  }
  t.is(codeOf(() => parseParameters({ zones: 'a' }, true)), Code.INVALID_ARGUMENT, 'zones is not mutable');
});

test('capacity: an xfs volume is at least what mkfs.xfs accepts; a limit under that is OUT_OF_RANGE saying why', (t) => {
  t.is(minimumBytes('xfs'), XFS_MIN_BYTES);
  t.is(minimumBytes('ext4'), 4096);
  t.is(minimumBytes(undefined), 4096);
  t.is(sizeForRange({ requiredBytes: '1' }, XFS_MIN_BYTES), XFS_MIN_BYTES);
  t.is(sizeForRange({ requiredBytes: String(8 * 1024 ** 2), limitBytes: String(XFS_MIN_BYTES) }, XFS_MIN_BYTES), XFS_MIN_BYTES);
  t.is(sizeForRange({ requiredBytes: String(XFS_MIN_BYTES + 1) }, XFS_MIN_BYTES), XFS_MIN_BYTES + 4096);
  t.is(sizeForRange(undefined, XFS_MIN_BYTES), DEFAULT_VOLUME_BYTES);
  t.is(sizeForRange({ limitBytes: String(XFS_MIN_BYTES + 5000) }, XFS_MIN_BYTES), XFS_MIN_BYTES + 4096);
  const err = t.throws(() => sizeForRange({ requiredBytes: '4096', limitBytes: String(XFS_MIN_BYTES - 1) }, XFS_MIN_BYTES), { instanceOf: StorageError });
  t.is(err.code, Code.OUT_OF_RANGE);
  t.regex(err.message, /mkfs\.xfs/);
  t.is(codeOf(() => sizeForRange({ limitBytes: String(100 * 1024 ** 2) }, XFS_MIN_BYTES)), Code.OUT_OF_RANGE);
});

test('list tokens: a token continues after its name; anything else is ABORTED', (t) => {
  for (const name of ['a', 'pvc-0001', 'x.y_z-9']) t.is(decodeListToken(encodeListToken(name)), name);
  t.notRegex(encodeListToken('pvc-1'), /pvc-1/, 'opaque to the CO');
  for (const bad of ['garbage!', 'cHZjLTE', Buffer.from('after:Not A Name').toString('base64url'), Buffer.from('before:pvc-1').toString('base64url'), '']) {
    t.is(codeOf(() => decodeListToken(bad)), Code.ABORTED, bad);
  }
});

test('capacity: an existing size fits a range when within its bounds', (t) => {
  t.true(sizeFitsRange(8192, { requiredBytes: '5000' }));
  t.true(sizeFitsRange(8192, undefined));
  t.false(sizeFitsRange(8192, { requiredBytes: '9000' }));
  t.false(sizeFitsRange(8192, { limitBytes: '4096' }));
});

test('capabilities: single-node and read-only modes with ext4/xfs or block pass; multi-node writers are refused', (t) => {
  for (const mode of ['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', 'MULTI_NODE_READER_ONLY']) {
    t.is(capabilityProblem({ mount: { fsType: 'xfs' }, accessMode: { mode } }, 'c'), undefined, mode);
    t.is(capabilityProblem({ block: {}, accessMode: { mode } }, 'c'), undefined, mode);
  }
  for (const mode of ['MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER']) {
    t.regex(capabilityProblem({ block: {}, accessMode: { mode } }, 'c') ?? '', /cannot be shared across nodes safely/);
  }
  t.regex(capabilityProblem({ mount: { fsType: 'btrfs' }, accessMode: { mode: 'SINGLE_NODE_WRITER' } }, 'c') ?? '', /btrfs/);
  t.regex(capabilityProblem({ accessMode: { mode: 'SINGLE_NODE_WRITER' } }, 'c') ?? '', /mount or block/);
  t.regex(capabilityProblem({ block: {}, accessMode: { mode: 'UNKNOWN' } }, 'c') ?? '', /not supported/);
});

test('topology: Cairn keys only; the first preferred node is the one to prefer', (t) => {
  t.notThrows(() => checkTopology({ requisite: [{ segments: { 'topology.cairn.dev/node': 'a', 'topology.cairn.dev/zone': 'z' } }] }));
  t.is(codeOf(() => checkTopology({ preferred: [{ segments: { 'kubernetes.io/hostname': 'a' } }] })), Code.INVALID_ARGUMENT);
  t.is(preferredNodeOf({ preferred: [{ segments: { 'topology.cairn.dev/zone': 'z' } }, { segments: { 'topology.cairn.dev/node': 'b' } }] }), 'b');
  t.is(preferredNodeOf(undefined), undefined);
});

test('topology: requisite segments select nodes by name or id and zone', (t) => {
  const nodes = [{ nodeId: 'a', name: 'node-a', zone: 'z1' }, { nodeId: 'b', name: 'node-b', zone: 'z2' }, { nodeId: 'c', name: 'node-c' }];
  t.is(requisiteNodes(undefined, nodes), undefined);
  t.deepEqual(requisiteNodes({ requisite: [{ segments: { 'topology.cairn.dev/node': 'node-b' } }] }, nodes), ['b']);
  t.deepEqual(requisiteNodes({ requisite: [{ segments: { 'topology.cairn.dev/zone': 'z1' } }, { segments: { 'topology.cairn.dev/node': 'c' } }] }, nodes), ['a', 'c']);
  t.deepEqual(requisiteNodes({ requisite: [{ segments: { 'topology.cairn.dev/node': 'node-a', 'topology.cairn.dev/zone': 'z2' } }] }, nodes), []);
});

test('volume condition: normal while healthy; abnormal naming each replica out of sync, its node, state and reason', (t) => {
  t.deepEqual(volumeCondition({ health: 'healthy', replicas: [] }), { abnormal: false, message: 'healthy' });
  const replica = (id: string, node: string, state: 'in-sync' | 'rebuilding' | 'faulted', reason?: string): VolumeView['replicas'][number] =>
    ({ id, nodeName: node, deviceId: id, state, since: '', allocatedBytes: 0, dirtyBytes: 0, ...(reason ? { reason } : {}) });
  const c = volumeCondition({ health: 'degraded', replicas: [replica('r1', 'a', 'in-sync'), replica('r2', 'b', 'faulted', 'node b unreachable')] });
  t.true(c.abnormal);
  t.is(c.message, 'volume is degraded: replica r2 on b faulted (node b unreachable)');
});
