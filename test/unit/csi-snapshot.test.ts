/**
 * The CSI snapshot calls' pure pieces (snapshot-params.ts) and handlers
 * (controller-snapshot.ts) over an in-memory snapshot service: parameters of a
 * VolumeSnapshotClass, the Snapshot message, ListSnapshots filters and pages, sizes of a
 * volume made from a source, with the spec's codes.
 */
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, SnapshotId, VolumeId } from '../../src/common/ids.js';
import type { CreateSnapshotInput, SnapshotService, SnapshotView } from '../../src/cluster/snapshot-types.js';
import { controllerSnapshotMethods, sourceBytes } from '../../src/csi/controller-snapshot.js';
import type { CsiCallContext, CsiRequest } from '../../src/csi/csi-call.js';
import {
  contentSourceOf, decodeSnapshotToken, encodeSnapshotToken, parseSnapshotParameters, sizeForSource, snapshotMessage, snapshotPage,
} from '../../src/csi/snapshot-params.js';
import { silentLogger } from '../../src/common/log.js';

const MiB = 1024 ** 2;

function snap(name: string, volume: string, createdAt = '2025-03-01T10:00:00.250Z'): SnapshotView {
  return {
    id: `snap-id-${name}` as SnapshotId, name, sourceVolumeId: `vol-${volume}` as VolumeId, sourceVolumeName: volume, sizeBytes: 64 * MiB, createdAt,
    state: 'ready', readyToUse: true, copiesWanted: 1, pauseUs: 10, copies: [{ nodeId: 'n1' as NodeId, replicaId: 'r1' as ReplicaId, nodeUp: true }],
  };
}

/** Snapshots in memory, with the service's promises: idempotent by name, NOT_FOUND for an unknown volume. */
class MemorySnapshots implements SnapshotService {
  readonly byName = new Map<string, SnapshotView>();
  constructor(readonly volumes: string[]) {}
  async create(input: CreateSnapshotInput): Promise<SnapshotView> {
    const found = this.byName.get(input.name);
    if (found) {
      if (found.sourceVolumeName !== input.volume) throw new StorageError(Code.ALREADY_EXISTS, 'exists for another volume');
      return found;
    }
    if (!this.volumes.includes(input.volume)) throw new StorageError(Code.NOT_FOUND, `volume "${input.volume}" not found`);
    const s = snap(input.name, input.volume);
    this.byName.set(s.name, s);
    return s;
  }
  async get(nameOrId: string): Promise<SnapshotView> {
    const s = [...this.byName.values()].find((x) => x.name === nameOrId || x.id === nameOrId);
    if (!s) throw new StorageError(Code.NOT_FOUND, `snapshot "${nameOrId}" not found`);
    return s;
  }
  async list(filter?: { volume?: string }): Promise<SnapshotView[]> {
    return [...this.byName.values()].filter((s) => !filter?.volume || s.sourceVolumeName === filter.volume);
  }
  async delete(nameOrId: string): Promise<void> {
    for (const s of this.byName.values()) if (s.name === nameOrId || s.id === nameOrId) this.byName.delete(s.name);
  }
}

const ctx: CsiCallContext = { signal: new AbortController().signal, log: silentLogger() };

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'OK';
  } catch (err) {
    return err instanceof StorageError ? Code[err.code] : 'NOT A STORAGE ERROR';
  }
}

test('VolumeSnapshotClass parameters: cairn.dev/snapshot-rule and the external-snapshotter\'s keys pass (its namespace is kept for exec actions), any other key is INVALID_ARGUMENT naming it', (t) => {
  t.deepEqual(parseSnapshotParameters({
    'csi.storage.k8s.io/volumesnapshot/name': 'before-upgrade', 'csi.storage.k8s.io/volumesnapshot/namespace': 'db',
    'csi.storage.k8s.io/volumesnapshotcontent/name': 'snapcontent-1', 'csi.storage.k8s.io/snapshotter-secret-name': 's',
  }), { namespace: 'db' });
  t.deepEqual(parseSnapshotParameters(undefined), {});
  t.deepEqual(parseSnapshotParameters({ 'cairn.dev/snapshot-rule': 'postgres' }), { rule: 'postgres' });
  const badRule = t.throws(() => parseSnapshotParameters({ 'cairn.dev/snapshot-rule': 'Not A Name' })) as StorageError;
  t.is(badRule.code, Code.INVALID_ARGUMENT);
  t.is(badRule.details.field, 'parameters.cairn.dev/snapshot-rule');
  const err = t.throws(() => parseSnapshotParameters({ retain: 'yes' })) as StorageError;
  t.is(err.code, Code.INVALID_ARGUMENT);
  t.regex(err.message, /unknown key "retain"/);
  t.is(err.details.field, 'parameters.retain');
});

test('the Snapshot message: snapshot_id and source_volume_id are the names, creation_time the barrier time to the millisecond', (t) => {
  t.deepEqual(snapshotMessage({ ...snap('s1', 'pgdata'), readyToUse: false }), {
    sizeBytes: 64 * MiB, snapshotId: 's1', sourceVolumeId: 'pgdata', creationTime: { seconds: Date.UTC(2025, 2, 1, 10) / 1000, nanos: 250_000_000 },
    readyToUse: false, groupSnapshotId: '',
  });
});

test('pages in name order: max_entries per page, the token continues after the last name, a foreign token is ABORTED', (t) => {
  const all = ['c', 'a', 'e', 'b', 'd'].map((n) => snap(`s-${n}`, 'v'));
  const first = snapshotPage(all, undefined, 2);
  t.deepEqual(first.page.map((s) => s.name), ['s-a', 's-b']);
  const second = snapshotPage(all, decodeSnapshotToken(first.nextToken), 2);
  t.deepEqual(second.page.map((s) => s.name), ['s-c', 's-d']);
  // s-c deleted between pages: nothing is skipped or repeated.
  const third = snapshotPage(all.filter((s) => s.name !== 's-c'), decodeSnapshotToken(second.nextToken), 2);
  t.deepEqual(third.page.map((s) => s.name), ['s-e']);
  t.is(third.nextToken, '', 'the last page has no token');
  t.is(snapshotPage(all, undefined, 0).page.length, 5, 'max_entries 0: all');
  t.is(decodeSnapshotToken(encodeSnapshotToken('snap-1')), 'snap-1');
  for (const bad of ['garbage!', Buffer.from('after:pvc-1').toString('base64url'), encodeSnapshotToken('UPPER')]) {
    const err = t.throws(() => decodeSnapshotToken(bad)) as StorageError;
    t.is(err.code, Code.ABORTED, bad);
  }
});

test('a volume from a source: the source\'s size by default, a larger request honoured, anything smaller OUT_OF_RANGE', async (t) => {
  t.is(sizeForSource(undefined, 64 * MiB, 'the source'), 64 * MiB);
  t.is(sizeForSource({ requiredBytes: String(100 * MiB + 1) }, 64 * MiB, 'the source'), 100 * MiB + 4096);
  t.is(sizeForSource({ limitBytes: String(128 * MiB) }, 64 * MiB, 'the source'), 64 * MiB);
  t.is(await codeOf(() => sizeForSource({ requiredBytes: String(32 * MiB) }, 64 * MiB, 'the source')), 'OUT_OF_RANGE');
  t.is(await codeOf(() => sizeForSource({ limitBytes: String(32 * MiB) }, 64 * MiB, 'the source')), 'OUT_OF_RANGE');
  t.deepEqual(contentSourceOf({ volumeContentSource: { snapshot: { snapshotId: 's1' }, type: 'snapshot' } }), { snapshot: 's1' });
  t.deepEqual(contentSourceOf({ volumeContentSource: { volume: { volumeId: 'v1' }, type: 'volume' } }), { volume: 'v1' });
  t.is(contentSourceOf({ volumeContentSource: null }), undefined);
  t.is(await codeOf(() => contentSourceOf({ volumeContentSource: { snapshot: { snapshotId: '' } } })), 'INVALID_ARGUMENT');
  t.is(await codeOf(() => contentSourceOf({ volumeContentSource: { type: 'snapshot' } })), 'INVALID_ARGUMENT');

  const snapshots = new MemorySnapshots(['pgdata']);
  await snapshots.create({ name: 's1', volume: 'pgdata' });
  const volumes = { get: async (name: string) => { if (name !== 'pgdata') throw new StorageError(Code.NOT_FOUND, 'no'); return { sizeBytes: 32 * MiB } as never; } };
  t.is(await sourceBytes({ snapshot: 's1' }, snapshots, volumes, ctx.signal), 64 * MiB);
  t.is(await sourceBytes({ volume: 'pgdata' }, snapshots, volumes, ctx.signal), 32 * MiB);
  t.is(await codeOf(sourceBytes({ snapshot: 'nope' }, snapshots, volumes, ctx.signal)), 'NOT_FOUND');
  t.is(await codeOf(sourceBytes({ volume: 'nope' }, snapshots, volumes, ctx.signal)), 'NOT_FOUND');
  t.is(await codeOf(sourceBytes({ volume: 'Not A Name' }, snapshots, volumes, ctx.signal)), 'NOT_FOUND');
});

test('handlers: CreateSnapshot idempotent by name, ALREADY_EXISTS for another source, NOT_FOUND source; Delete of unknown OK; Get NOT_FOUND; List filters', async (t) => {
  const snapshots = new MemorySnapshots(['pgdata', 'logs']);
  const m = controllerSnapshotMethods(snapshots);
  const call = async (method: string, r: CsiRequest): Promise<CsiRequest> => {
    m[method]!.validate?.(r);
    return m[method]!.handler(r, ctx) as CsiRequest;
  };
  const first = await call('CreateSnapshot', { name: 'snapshot-1', sourceVolumeId: 'pgdata', parameters: {} });
  t.like(first.snapshot, { snapshotId: 'snapshot-1', sourceVolumeId: 'pgdata', readyToUse: true });
  t.deepEqual(await call('CreateSnapshot', { name: 'snapshot-1', sourceVolumeId: 'pgdata', parameters: {} }), first);
  t.is(await codeOf(call('CreateSnapshot', { name: 'snapshot-1', sourceVolumeId: 'logs', parameters: {} })), 'ALREADY_EXISTS');
  t.is(await codeOf(call('CreateSnapshot', { name: 'snapshot-2', sourceVolumeId: 'nope', parameters: {} })), 'NOT_FOUND');
  t.is(await codeOf(call('CreateSnapshot', { name: 'snapshot-2', sourceVolumeId: 'pgdata', parameters: { x: '1' } })), 'INVALID_ARGUMENT');
  t.is(await codeOf(call('CreateSnapshot', { name: 'Snapshot 2', sourceVolumeId: 'pgdata', parameters: {} })), 'INVALID_ARGUMENT');
  await call('CreateSnapshot', { name: 'snapshot-3', sourceVolumeId: 'logs', parameters: {} });

  const ids = async (r: CsiRequest): Promise<string[]> => ((await call('ListSnapshots', { maxEntries: 0, startingToken: '', ...r })).entries as CsiRequest[]).map((e) => e.snapshot.snapshotId);
  t.deepEqual(await ids({}), ['snapshot-1', 'snapshot-3']);
  t.deepEqual(await ids({ snapshotId: 'snapshot-3' }), ['snapshot-3']);
  t.deepEqual(await ids({ snapshotId: 'unknown' }), [], 'an unknown snapshot_id is an empty list');
  t.deepEqual(await ids({ sourceVolumeId: 'logs' }), ['snapshot-3']);
  t.deepEqual(await ids({ sourceVolumeId: 'unknown' }), []);
  t.deepEqual(await ids({ snapshotId: 'snapshot-3', sourceVolumeId: 'pgdata' }), [], 'both filters must match');
  t.is(await codeOf(call('ListSnapshots', { maxEntries: -1 })), 'INVALID_ARGUMENT');
  t.is(await codeOf(call('ListSnapshots', { maxEntries: 1, startingToken: 'bogus' })), 'ABORTED');

  t.like((await call('GetSnapshot', { snapshotId: 'snap-id-snapshot-3' })).snapshot, { snapshotId: 'snapshot-3' }, 'by Cairn id too');
  t.is(await codeOf(call('GetSnapshot', { snapshotId: 'unknown' })), 'NOT_FOUND');
  t.is(await codeOf(call('DeleteSnapshot', { snapshotId: 'snapshot-1' })), 'OK');
  t.is(await codeOf(call('DeleteSnapshot', { snapshotId: 'snapshot-1' })), 'OK', 'again: OK');
  t.is(await codeOf(call('DeleteSnapshot', { snapshotId: '!!' })), 'OK');
  t.deepEqual(await ids({}), ['snapshot-3']);
});

test('handlers: cairn.dev/snapshot-rule goes to the rule taker with the VolumeSnapshot\'s namespace; a repeat returns the snapshot; without a taker it is FAILED_PRECONDITION', async (t) => {
  const snapshots = new MemorySnapshots(['pgdata']);
  const asked: unknown[] = [];
  const taker = {
    create: async (input: { name: string; volume: string; rule: string; namespace?: string }): Promise<SnapshotView> => {
      asked.push({ name: input.name, volume: input.volume, rule: input.rule, namespace: input.namespace });
      return snapshots.create({ name: input.name, volume: input.volume });
    },
  };
  const params = { 'cairn.dev/snapshot-rule': 'postgres', 'csi.storage.k8s.io/volumesnapshot/namespace': 'db' };
  const m = controllerSnapshotMethods(snapshots, taker);
  const call = async (methods: typeof m, r: CsiRequest): Promise<CsiRequest> => {
    methods.CreateSnapshot!.validate?.(r);
    return methods.CreateSnapshot!.handler(r, ctx) as CsiRequest;
  };
  const first = await call(m, { name: 'snapshot-1', sourceVolumeId: 'pgdata', parameters: params });
  t.like(first.snapshot, { snapshotId: 'snapshot-1', readyToUse: true });
  t.deepEqual(asked, [{ name: 'snapshot-1', volume: 'pgdata', rule: 'postgres', namespace: 'db' }]);
  t.deepEqual(await call(m, { name: 'snapshot-1', sourceVolumeId: 'pgdata', parameters: params }), first);
  t.is(asked.length, 1, 'the repeat did not run the rule again');
  t.is(await codeOf(call(controllerSnapshotMethods(snapshots), { name: 'snapshot-2', sourceVolumeId: 'pgdata', parameters: params })), 'FAILED_PRECONDITION');
});
