import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { DocEngineControl } from '../../src/cluster/engine-control.js';
import type { ClusterStore, JsonValue } from '../../src/cluster/store/cluster-store.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import {
  createVolumeDoc, getVolumeDoc, parseVolumeDoc, regionBytesFor, updateVolumeDoc, volumeDocToJson, volumeHealth, type VolumeDoc,
} from '../../src/cluster/volume-doc.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';

const log = silentLogger();
const MiB = 1 << 20;

function doc(overrides: Partial<VolumeDoc> = {}): VolumeDoc {
  const since = '2026-11-24T00:00:00.000Z';
  return {
    id: 'vol-1' as VolumeId, name: 'db', sizeBytes: 64 * MiB, createdAt: since, state: 'ready', replicasWanted: 3, regionBytes: MiB, epoch: 4,
    engine: { nodeId: 'a' as NodeId, epoch: 4, exported: true, startedAt: since },
    replicas: (['a', 'b', 'c'] as const).map((n) => ({ id: `rep-${n}` as ReplicaId, nodeId: n as NodeId, state: 'in-sync' as const, since })),
    ...overrides,
  };
}

function open(): EmbeddedStore {
  return EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), leaseCheckIntervalMs: 50, log });
}

test('a document survives the JSON round trip and a malformed one is DATA_LOSS naming the key', (t) => {
  const d = doc({ replicas: [{ id: 'rep-a' as ReplicaId, nodeId: 'a' as NodeId, state: 'faulted', since: 'x', reason: 'EIO' }] });
  t.deepEqual(parseVolumeDoc('volumes/db', JSON.parse(JSON.stringify(volumeDocToJson(d)))), d);
  const err = t.throws(() => parseVolumeDoc('volumes/db', { ...(volumeDocToJson(d) as object), epoch: -1 }), { instanceOf: StorageError });
  t.is(err.code, Code.DATA_LOSS);
  t.regex(err.message, /volumes\/db.*epoch/);
  t.throws(() => parseVolumeDoc('volumes/db', { ...(volumeDocToJson(d) as object), replicas: [{ id: 'x' }] }), { message: /replica entry/ });
});

test('fullRebuild on a replica entry: kept through the round trip, absent means false, a non-boolean is malformed; fields a parser does not know are ignored', (t) => {
  const since = '2026-11-24T00:00:00.000Z';
  const d = doc({ replicas: [{ id: 'rep-a' as ReplicaId, nodeId: 'a' as NodeId, state: 'faulted', since, reason: 'ENOSPC', fullRebuild: true }] });
  const json = JSON.parse(JSON.stringify(volumeDocToJson(d))) as { replicas: { [key: string]: JsonValue }[] };
  t.is(json.replicas[0]!.fullRebuild, true);
  t.deepEqual(parseVolumeDoc('volumes/db', json), d);
  t.false('fullRebuild' in (volumeDocToJson(doc()) as { replicas: object[] }).replicas[0]!, 'not written when false');
  const bad = { ...json, replicas: [{ ...json.replicas[0], fullRebuild: 'yes' }] };
  t.throws(() => parseVolumeDoc('volumes/db', bad), { message: /fullRebuild/ });
  // A newer release's field on an entry (as fullRebuild is to an older parser) leaves the document readable.
  const newer = { ...json, replicas: [{ ...json.replicas[0], someLaterField: 1 }] };
  t.deepEqual(parseVolumeDoc('volumes/db', newer), d);
});

test('published, fsType and zones: kept through the round trip, absent when empty, malformed entries are DATA_LOSS', (t) => {
  const d = doc({ published: [{ nodeId: 'b' as NodeId, readonly: false }], fsType: 'xfs', zones: ['z1', 'z2'] });
  const json = JSON.parse(JSON.stringify(volumeDocToJson(d))) as { [key: string]: JsonValue };
  t.deepEqual(parseVolumeDoc('volumes/db', json), d);
  const plain = volumeDocToJson(doc({ published: [] })) as object;
  t.false('published' in plain, 'an empty publication list is not written');
  t.false('fsType' in plain);
  t.false('zones' in plain);
  t.false('published' in parseVolumeDoc('volumes/db', { ...json, published: [] }), 'an empty list reads as none');
  const err = t.throws(() => parseVolumeDoc('volumes/db', { ...json, published: [{ nodeId: 'b' }] }), { instanceOf: StorageError });
  t.is(err.code, Code.DATA_LOSS);
  t.throws(() => parseVolumeDoc('volumes/db', { ...json, published: 'b' }), { message: /published/ });
  t.throws(() => parseVolumeDoc('volumes/db', { ...json, fsType: 4 }), { message: /fsType/ });
  t.throws(() => parseVolumeDoc('volumes/db', { ...json, zones: ['z1', 3] }), { message: /zones/ });
});

test('region size keeps the bitmap at most 256 Ki regions', (t) => {
  t.is(regionBytesFor(64 * MiB), MiB);
  t.is(regionBytesFor(256 * 1024 * MiB), MiB);
  t.is(regionBytesFor(256 * 1024 * MiB + 1), 2 * MiB);
  t.is(regionBytesFor(2 ** 50), 4096 * MiB);
});

test('health: healthy, degraded with fewer in sync than wanted, faulted with none', (t) => {
  t.is(volumeHealth(doc()), 'healthy');
  const d = doc();
  d.replicas[2]!.state = 'rebuilding';
  t.is(volumeHealth(d), 'degraded');
  for (const r of d.replicas) r.state = 'faulted';
  t.is(volumeHealth(d), 'faulted');
});

test('updates are compare-and-swap: a racing writer re-decides on the fresh document', async (t) => {
  const store = open();
  t.teardown(() => store.close());
  t.true(await createVolumeDoc(store, doc()));
  t.false(await createVolumeDoc(store, doc()), 'a second create of the same name loses');
  // Another writer commits between this read and the swap: the first txn loses.
  let raced = false;
  const racing: ClusterStore = Object.assign(Object.create(store) as ClusterStore, {
    get: (key: string) => store.get(key),
    txn: async (req: Parameters<ClusterStore['txn']>[0]) => {
      if (!raced) {
        raced = true;
        await updateVolumeDoc(store, 'db', (other) => ({ ...other, epoch: other.epoch + 10 }));
      }
      return store.txn(req);
    },
  });
  let calls = 0;
  const result = await updateVolumeDoc(racing, 'db', (d) => {
    calls++;
    return { ...d, epoch: d.epoch + 1 };
  });
  t.is(calls, 2, 'decided again on the fresh document');
  t.is(result!.doc.epoch, 15);
  t.is((await getVolumeDoc(store, 'db'))!.doc.epoch, 15);
  await t.throwsAsync(updateVolumeDoc(store, 'nope', (d) => d), { message: /volume "nope" not found/ });
});

test('an extra guard that fails (leadership lost) aborts the update and changes nothing', async (t) => {
  const store = open();
  t.teardown(() => store.close());
  await createVolumeDoc(store, doc());
  const err = await t.throwsAsync(updateVolumeDoc(store, 'db', (d) => ({ ...d, epoch: 99 }), () => [{ key: 'leaders/repair', modRevision: 12345 }]));
  t.is((err as StorageError).code, Code.ABORTED);
  t.is((await getVolumeDoc(store, 'db'))!.doc.epoch, 4);
});

test('engine control: faults and rejoins by CAS; a newer epoch fences it', async (t) => {
  const store = open();
  t.teardown(() => store.close());
  await createVolumeDoc(store, doc());
  const control = new DocEngineControl(store, 'db', 4, log);
  await control.markFaulted(['rep-c' as ReplicaId], 'EIO on write');
  let d = (await getVolumeDoc(store, 'db'))!.doc;
  t.deepEqual(d.replicas.map((r) => r.state), ['in-sync', 'in-sync', 'faulted']);
  t.is(d.replicas[2]!.reason, 'EIO on write');
  t.is(volumeHealth(d), 'degraded');
  await control.markRebuilding('rep-c' as ReplicaId);
  await control.markInSync('rep-c' as ReplicaId);
  d = (await getVolumeDoc(store, 'db'))!.doc;
  t.deepEqual(d.replicas.map((r) => r.state), ['in-sync', 'in-sync', 'in-sync']);
  t.is(d.replicas[2]!.reason, undefined);

  await updateVolumeDoc(store, 'db', (x) => ({ ...x, epoch: 5 }));
  const err = await t.throwsAsync(control.markFaulted(['rep-b' as ReplicaId], 'timeout'));
  t.is((err as StorageError).code, Code.FAILED_PRECONDITION);
  t.regex((err as Error).message, /epoch 5.*epoch 4 is fenced/);
  t.is((await getVolumeDoc(store, 'db'))!.doc.replicas[1]!.state, 'in-sync', 'a fenced engine changed nothing');
});

test('engine control waits through a store outage and lands the change once the store is back', async (t) => {
  const real = open();
  t.teardown(() => real.close());
  await createVolumeDoc(real, doc());
  let down = true;
  let refused = 0;
  let onSecondTry = (): void => undefined;
  const secondTry = new Promise<void>((r) => (onSecondTry = r));
  const flaky: ClusterStore = Object.assign(Object.create(real) as ClusterStore, {
    get: (key: string) => {
      if (!down) return real.get(key);
      if (++refused === 2) onSecondTry();
      return Promise.reject(new StorageError(Code.UNAVAILABLE, 'etcd is away'));
    },
  });
  const control = new DocEngineControl(flaky, 'db', 4, log);
  let settled = false;
  const pending = control.markFaulted(['rep-b' as ReplicaId], 'timeout').then(() => (settled = true));
  // The store refused the change and the control tried again: the refusal did not settle it.
  await secondTry;
  t.false(settled, 'the change (and the write waiting on it) waits while the store is away');
  down = false;
  await pending;
  t.is((await getVolumeDoc(real, 'db'))!.doc.replicas[1]!.state, 'faulted');

  const closing = new DocEngineControl(flaky, 'db', 4, log);
  down = true;
  const abandoned = closing.markFaulted(['rep-c' as ReplicaId], 'timeout');
  closing.close();
  t.is(((await t.throwsAsync(abandoned)) as StorageError).code, Code.CANCELLED);
});

test('claim (the PVC a volume was made for): kept through the round trip, absent when none, a claim without name or namespace is DATA_LOSS', (t) => {
  const d = doc({ claim: { name: 'data-web-0', namespace: 'shop' } });
  const json = JSON.parse(JSON.stringify(volumeDocToJson(d))) as { [key: string]: JsonValue };
  t.deepEqual(parseVolumeDoc('volumes/db', json), d);
  t.false('claim' in (volumeDocToJson(doc()) as object));
  const err = t.throws(() => parseVolumeDoc('volumes/db', { ...json, claim: { name: 'data-web-0' } }), { instanceOf: StorageError, message: /claim/ });
  t.is(err.code, Code.DATA_LOSS);
});
