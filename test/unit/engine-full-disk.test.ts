/**
 * A full filesystem under both a node's file pool and its node store (issue 9, item 2):
 * the ENOSPC that faults the local replica also fails the save of its dirty-region map.
 * The fault still reaches the cluster store (an embedded one, elsewhere), with
 * `fullRebuild` on the replica's entry; once that is recorded the write the replica missed
 * is acknowledged although the disk is still full. After a restart the next engine ignores
 * the node-local map and resyncs the replica in full, with every acknowledged write. Needs
 * root and loop devices: under CI=true their absence fails the test.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeId, ReplicaId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { DocEngineControl } from '../../src/cluster/engine-control.js';
import { EmbeddedStore } from '../../src/cluster/store/embedded-store.js';
import { createVolumeDoc, getVolumeDoc, updateVolumeDoc, type VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { EngineControl } from '../../src/engine/engine-types.js';
import { FileBackend } from '../../src/pool/file-backend.js';
import { ReplicaManager } from '../../src/replica/replica-manager.js';
import { NodeStore } from '../../src/store/node-store.js';
import { MiB, SIZE, VOL, engineSetup } from '../helpers/engine-fixture.js';
import { loopFsUnavailable, makeLoopFs } from '../helpers/loop-fs.js';
import { uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { requiring } from '../helpers/prereq.js';
import { replicaFixture, runBatch } from '../helpers/replica-fixture.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls for an event (never to prove that something did not happen). */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 60_000; !cond();) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await sleep(5);
  }
}

/** Fills the filesystem at `dir` with one file; returns its path. */
async function fill(dir: string): Promise<string> {
  const path = join(dir, 'filler');
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(MiB, 1);
  try {
    for (;;) await fh.write(chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await fh.close();
  }
  return path;
}

interface LocalNode {
  pool: FileBackend;
  store: NodeStore;
  manager: ReplicaManager;
  close(): Promise<void>;
}

async function localNode(dir: string): Promise<LocalNode> {
  const log = silentLogger();
  const pool = await FileBackend.open({ dir: join(dir, 'pool'), log });
  const store = NodeStore.open(join(dir, 'node.db'), log);
  const manager = new ReplicaManager({ pool, store, log });
  return {
    pool, store, manager,
    async close() {
      await manager.close();
      store.close();
      await pool.close();
    },
  };
}

requiring(await loopFsUnavailable('ext4'), test.serial)('a full disk under the pool and the node store: the missed write is acknowledged once fullRebuild is recorded, and the replica resyncs in full', async (t) => {
  const fs = await makeLoopFs('ext4', 64 * MiB);
  t.teardown(() => fs.dispose());
  let node0 = await localNode(fs.mountPoint);
  const fx1 = await replicaFixture();
  t.teardown(async () => {
    await node0.close().catch(() => undefined);
    await fx1.cleanup();
  });
  const rep0 = 'rep-0' as ReplicaId;
  await node0.manager.create({ replicaId: rep0, volumeId: VOL }, SIZE, 1, true);
  await fx1.manager.create({ replicaId: 'rep-1' as ReplicaId, volumeId: VOL }, SIZE, 1, true);
  const s = engineSetup(t, [node0.manager, fx1.manager], node0.store.dirtyMaps());
  // The cluster store lives elsewhere (as etcd would): an embedded one, in memory.
  const cluster = EmbeddedStore.open({ path: ':memory:', cluster: uniqueCluster(), log: silentLogger() });
  t.teardown(() => cluster.close());
  const since = new Date().toISOString();
  await createVolumeDoc(cluster, {
    id: VOL, name: 'data', sizeBytes: SIZE, createdAt: since, state: 'ready', replicasWanted: 2, regionBytes: MiB, epoch: 1,
    engine: { nodeId: s.nodes[0]!, epoch: 1, exported: true, startedAt: since },
    replicas: s.ids.map((id, i) => ({ id, nodeId: s.nodes[i]! as NodeId, state: 'in-sync' as const, since })),
  });
  const docControl = new DocEngineControl(cluster, 'data', 1, silentLogger());
  t.teardown(() => docControl.close());
  let recorded = 0;
  const control: EngineControl = {
    markFaulted: (ids, reason, fullRebuild) => docControl.markFaulted(ids, reason, fullRebuild).then(() => void recorded++),
    markRebuilding: (id) => docControl.markRebuilding(id),
    markInSync: (id) => docControl.markInSync(id),
  };
  const entriesInStore = async (): Promise<VolumeReplicaEntry[]> => (await getVolumeDoc(cluster, 'data'))!.doc.replicas;
  const e = await s.start({ reconnectIntervalMs: 20, control });

  const w0 = randomBytes(64 << 10);
  await e.write(0, w0); // on both replicas before the disk fills
  await e.flush();
  const filler = await fill(fs.mountPoint);
  s.connector.down.add(rep0); // no rebuild attempts while the disk is full

  // Replica 0 fails with ENOSPC, and its map cannot be saved either.
  const w1 = randomBytes(256 << 10);
  await e.write(3 * MiB, w1);
  t.is(recorded, 1);
  t.true(s.maps.attempts > s.maps.saves, 'the map save failed');
  t.deepEqual(s.maps.regions(rep0), [], 'acknowledged while the disk is full and the map not saved');
  t.like((await entriesInStore())[0], { state: 'faulted', fullRebuild: true });
  const w2 = randomBytes(4096);
  await e.write(9 * MiB + 4096, w2); // also acknowledged while the disk is full
  t.is(recorded, 1);

  await rm(filler); // space returns: the map is saved in the background
  await until('the map was saved', () => s.maps.regions(rep0).length === 2);
  t.deepEqual(s.maps.regions(rep0), [3, 9]);
  await e.close();

  // The daemon restarts; the next engine (epoch 2) sees the flag and resyncs the replica in full.
  await node0.close();
  node0 = await localNode(fs.mountPoint);
  s.connector.managers.set(s.nodes[0]!, node0.manager);
  s.connector.down.delete(rep0);
  s.maps.inner = node0.store.dirtyMaps();
  await updateVolumeDoc(cluster, 'data', (d) => ({ ...d, epoch: 2, engine: { ...d.engine!, epoch: 2 } }));
  const control2 = new DocEngineControl(cluster, 'data', 2, silentLogger());
  t.teardown(() => control2.close());
  const e2 = await s.start({ epoch: 2, reconnectIntervalMs: 20, control: control2, replicas: await entriesInStore() });
  t.is(e2.replicaViews()[0]!.dirtyBytes, SIZE, 'every region is to be copied, not the two the saved map names');
  await until('replica 0 is in sync again', () => e2.replicaViews()[0]!.state === 'in-sync');
  const replica = await node0.manager.open({ replicaId: rep0, volumeId: VOL });
  const readBack = async (offset: number, length: number): Promise<Buffer> => {
    const [r] = await runBatch(replica, replica.epoch, [{ seq: 1, op: 'read', offset, lengthBytes: length }]);
    if (r!.error) throw r!.error;
    return r!.data!;
  };
  t.true((await readBack(0, w0.length)).equals(w0));
  t.true((await readBack(3 * MiB, w1.length)).equals(w1), 'the write acknowledged while the disk was full is on the resynced replica');
  t.true((await readBack(9 * MiB + 4096, w2.length)).equals(w2));
  const entry = (await entriesInStore())[0]!;
  t.is(entry.state, 'in-sync');
  t.false('fullRebuild' in entry, 'the in-sync CAS cleared the flag');
});
