/**
 * Ordering rules of the replica core, on a device whose operations complete only when the
 * test says so: a flush waits for the writes before it, and a newer epoch's requests wait
 * for every request accepted under an older one. Order is asserted, never timing.
 */
import test from 'ava';
import type { DeviceId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import type { BlockDevice } from '../../src/pool/backend.js';
import { DEFAULT_REPLICA_LIMITS, type IoRequest, type IoResult } from '../../src/replica/io-types.js';
import { Replica } from '../../src/replica/replica.js';
import { NodeStore } from '../../src/store/node-store.js';

/** A device that logs each operation and completes it only on `release(tag)`. */
class GatedDevice implements BlockDevice {
  readonly id = 'rep-g' as DeviceId;
  readonly sizeBytes = 1 << 20;
  readonly started: string[] = [];
  private readonly gates = new Map<string, () => void>();

  private op(tag: string): Promise<void> {
    this.started.push(tag);
    return new Promise((resolve) => this.gates.set(tag, resolve));
  }

  release(tag: string): void {
    this.gates.get(tag)!();
  }

  write(offset: number, data: Uint8Array): Promise<void> { return this.op(`write@${offset}:${data[0]}`); }
  read(): Promise<Buffer> { return this.op('read').then(() => Buffer.alloc(0)); }
  flush(): Promise<void> { return this.op('flush'); }
  trim(offset: number): Promise<void> { return this.op(`trim@${offset}`); }
  writeZeroes(offset: number): Promise<void> { return this.op(`zero@${offset}`); }
  async close(): Promise<void> {}
}

async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

function setup(t: { teardown: (fn: () => void) => void }): { replica: Replica; device: GatedDevice; results: IoResult[]; store: NodeStore } {
  const store = NodeStore.open(':memory:', silentLogger());
  t.teardown(() => store.close());
  const record = {
    id: 'rep-g' as ReplicaId, volumeId: 'vol-g' as VolumeId, deviceId: 'rep-g' as DeviceId, state: 'in-sync' as const,
    createdAt: new Date().toISOString(), epoch: 1, rebuild: { doneBytes: 0, totalBytes: 0, checkpoint: Buffer.alloc(0) },
  };
  store.insertHostedReplica(record);
  const device = new GatedDevice();
  const replica = new Replica({ record, sizeBytes: device.sizeBytes, openDevice: async () => device, store, limits: DEFAULT_REPLICA_LIMITS, log: silentLogger() });
  return { replica, device, results: [], store };
}

const write = (seq: number, offset: number, byte: number): IoRequest => ({ seq, op: 'write', offset, lengthBytes: 0, data: Buffer.from([byte]) });

test('a flush waits for the writes accepted before it, not for later ones', async (t) => {
  const { replica, device, results } = setup(t);
  replica.runBatch(1, [write(1, 0, 1), write(2, 512, 2), { seq: 3, op: 'flush', offset: 0, lengthBytes: 0 }], (r) => results.push(r));
  await turns();
  replica.runBatch(1, [write(4, 1024, 4)], (r) => results.push(r));
  await turns();
  t.deepEqual(device.started, ['write@0:1', 'write@512:2', 'write@1024:4'], 'the flush has not reached the device');
  device.release('write@0:1');
  await turns();
  t.false(device.started.includes('flush'));
  device.release('write@512:2');
  await turns();
  t.true(device.started.includes('flush'), 'the flush runs once both earlier writes are done, while write 4 is still pending');
  device.release('flush');
  await turns();
  t.deepEqual(results.map((r) => r.seq), [1, 2, 3]);
});

test('a newer epoch waits for every request accepted under the older one', async (t) => {
  const { replica, device, results, store } = setup(t);
  replica.runBatch(1, [write(1, 0, 1)], (r) => results.push(r));
  await turns();
  replica.runBatch(2, [write(2, 0, 2)], (r) => results.push(r));
  t.is(store.getHostedReplica('rep-g' as ReplicaId)!.epoch, 2, 'the newer epoch is durable before its request runs');
  replica.runBatch(1, [write(3, 0, 3)], (r) => results.push(r));
  await turns();
  t.deepEqual(device.started, ['write@0:1'], 'the epoch-2 write waits; the late epoch-1 write was refused');
  t.regex(results.find((r) => r.seq === 3)!.error!.message, /stale epoch 1 < 2/);
  device.release('write@0:1');
  await turns();
  t.deepEqual(device.started, ['write@0:1', 'write@0:2'], 'the old write landed first, the new one after it');
  device.release('write@0:2');
  await turns();
  t.deepEqual(results.map((r) => [r.seq, r.error?.code]), [[3, 9], [1, undefined], [2, undefined]]);
});
