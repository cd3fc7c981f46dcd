/**
 * Memory handed to a local replica's native I/O stays owned by that I/O until the native
 * call completed, whatever happened to the request's promise (issue 9, item 1).
 *
 * The local replica here is a fake whose "native" completion is released by hand: like a
 * thread-pool preadv/pwritev, it touches the caller's buffers only when it completes. The
 * engine's timeout sweep cancels its stalled requests; the caller (acting as the NBD
 * request runner) gives its pooled buffers back to the shared BufferPool, and another
 * volume's requests take memory from that pool. When the stalled calls finally complete,
 * neither the other volume's bytes nor the bytes that reach the device may change.
 */
import test, { type ExecutionContext } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { heldMemoryCount } from '../../src/common/memory-holds.js';
import type { VolumeReplicaEntry } from '../../src/cluster/volume-doc.js';
import type { DirtyMapStore, ReplicaConnector, ReplicaControl, ReplicaIo } from '../../src/engine/engine-types.js';
import { BufferPool } from '../../src/engine/nbd/buffer-pool.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { VolumeEngine } from '../../src/engine/volume-engine.js';
import type { IoRequest, IoResult } from '../../src/replica/io-types.js';
import type { Replica } from '../../src/replica/replica.js';
import { TestControl } from '../helpers/engine-fixture.js';

const MiB = 1 << 20;
const SIZE = 4 * MiB;

/** A replica in memory whose requests complete on the next microtask, or, while `stall` is set, only when released. */
class ManualReplica {
  readonly disk = Buffer.alloc(SIZE);
  stall = false;
  private readonly stalled: (() => void)[] = [];
  constructor(readonly id: ReplicaId) {}

  get waiting(): number {
    return this.stalled.length;
  }

  admitEpoch(): void { /* any epoch */ }

  runBatch(_epoch: number, requests: readonly IoRequest[], sink: (r: IoResult) => void): void {
    for (const r of requests) {
      const complete = (): void => sink(this.perform(r));
      if (this.stall) this.stalled.push(complete);
      else queueMicrotask(complete);
    }
  }

  /** The stalled native calls complete now, touching the memory they were given. */
  release(): void {
    for (const complete of this.stalled.splice(0)) complete();
  }

  private perform(r: IoRequest): IoResult {
    switch (r.op) {
      case 'write': {
        let at = r.offset;
        for (const p of r.parts ?? [r.data!]) {
          this.disk.set(p, at);
          at += p.byteLength;
        }
        return { seq: r.seq };
      }
      case 'read': {
        if (!r.targets) return { seq: r.seq, data: Buffer.from(this.disk.subarray(r.offset, r.offset + r.lengthBytes)) };
        let at = r.offset;
        for (const t of r.targets) {
          t.set(this.disk.subarray(at, at + t.byteLength));
          at += t.byteLength;
        }
        return { seq: r.seq };
      }
      case 'trim':
      case 'write-zeroes':
        this.disk.fill(0, r.offset, r.offset + r.lengthBytes);
        return { seq: r.seq };
      default:
        return { seq: r.seq };
    }
  }
}

class MemoryMaps implements DirtyMapStore {
  private readonly maps = new Map<string, { regionBytes: number; bits: Buffer }>();
  load(v: VolumeId, r: ReplicaId): { regionBytes: number; bits: Buffer } | undefined { return this.maps.get(`${v}/${r}`); }
  save(v: VolumeId, r: ReplicaId, regionBytes: number, bits: Buffer): void { this.maps.set(`${v}/${r}`, { regionBytes, bits: Buffer.from(bits) }); }
  delete(v: VolumeId, r: ReplicaId): void { this.maps.delete(`${v}/${r}`); }
}

class ManualConnector implements ReplicaConnector {
  readonly opened = new Set<ReplicaId>();
  constructor(private readonly replicas: Map<ReplicaId, ManualReplica>) {}
  async openIo(_volumeId: VolumeId, entry: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
    // Once dropped, a replica stays away (no rebuild in these tests).
    if (this.opened.has(entry.id)) throw new StorageError(Code.UNAVAILABLE, `replica ${entry.id} stays away`);
    this.opened.add(entry.id);
    return new LocalReplicaIo(this.replicas.get(entry.id)! as unknown as Replica, epoch, entry.nodeId);
  }
  control(): Promise<ReplicaControl> {
    return Promise.reject(new StorageError(Code.UNAVAILABLE, 'no control calls here'));
  }
}

interface Vol {
  engine: VolumeEngine;
  replicas: ManualReplica[];
}

/** A volume whose replica 0 is on this node (reads go there); the sweep gives up on a request after ~100 ms. */
async function volume(t: ExecutionContext, name: string, rf: number): Promise<Vol> {
  const replicas = Array.from({ length: rf }, (_, i) => new ManualReplica(`${name}-rep-${i}` as ReplicaId));
  const entries = replicas.map((r, i) => ({ id: r.id, nodeId: `node-${i}` as NodeId, state: 'in-sync' as const, since: new Date().toISOString() }));
  const engine = await VolumeEngine.start({
    volumeId: name as VolumeId, name, sizeBytes: SIZE, regionBytes: MiB, epoch: 1, replicas: entries, localNodeId: 'node-0' as NodeId,
    connector: new ManualConnector(new Map(replicas.map((r) => [r.id, r]))), control: new TestControl(), dirtyMaps: new MemoryMaps(),
    replicaTimeoutMs: 100, reconnectIntervalMs: 60_000, log: silentLogger(),
  });
  // The engine's sweep timer does not keep the process alive; the tests wait on it.
  const alive = setInterval(() => undefined, 1000);
  t.teardown(async () => {
    clearInterval(alive);
    for (const r of replicas) r.release();
    await engine.close().catch(() => undefined);
  });
  return { engine, replicas };
}

/** One request's pooled memory, as the NBD request runner takes and gives it. */
function take(pool: BufferPool, bytes: number): { views: Buffer[]; owned: Buffer[] } {
  const views: Buffer[] = [];
  const owned: Buffer[] = [];
  pool.take(bytes, views, owned);
  return { views, owned };
}

/** Other requests come and go on the pool meanwhile, as they would on a busy daemon (last in, first out). */
function churn(pool: BufferPool, bytes: number): void {
  const reqs = Array.from({ length: 8 }, () => take(pool, bytes));
  for (const r of reqs.reverse()) pool.give(r.owned);
}

for (const bytes of [4096, 512 << 10]) {
  test.serial(`a stalled local read (${bytes} bytes) that timed out does not write into another volume's pooled memory`, async (t) => {
    const pool = new BufferPool();
    const a = await volume(t, 'vol-a', 2);
    const b = await volume(t, 'vol-b', 1);
    await a.engine.write(0, Buffer.alloc(bytes, 0xaa));
    a.replicas[0]!.stall = true; // the local disk stops answering
    const read = take(pool, bytes);
    await a.engine.readInto(0, read.views); // timed out locally, served by replica 1
    t.true(Buffer.concat(read.views).equals(Buffer.alloc(bytes, 0xaa)));
    t.is(a.replicas[0]!.waiting, 1, 'the local read is still running');
    pool.give(read.owned); // the reply went out: the runner gives its memory back
    churn(pool, bytes);
    // Another volume's write payload, from the same pool.
    const write = take(pool, bytes);
    for (const v of write.views) v.fill(0xbb);
    a.replicas[0]!.release(); // the stalled read completes now
    await b.engine.writev(0, write.views);
    pool.give(write.owned);
    t.true((await b.engine.read(0, bytes)).equals(Buffer.alloc(bytes, 0xbb)), 'volume b reads back what it wrote');
    t.true(b.replicas[0]!.disk.subarray(0, bytes).equals(Buffer.alloc(bytes, 0xbb)), 'volume b\'s device got its own bytes');
    t.is(heldMemoryCount(), 0, 'nothing stays held once the native call completed');
  });

  test.serial(`a stalled local write (${bytes} bytes) that timed out writes its own bytes, not another volume's`, async (t) => {
    const pool = new BufferPool();
    const a = await volume(t, 'vol-a', 2);
    const b = await volume(t, 'vol-b', 1);
    a.replicas[0]!.stall = true;
    const write = take(pool, bytes);
    for (const v of write.views) v.fill(0xcc);
    await a.engine.writev(MiB, write.views); // timed out locally; acknowledged once replica 0 is faulted
    t.is(a.replicas[0]!.waiting, 1, 'the local write is still running');
    pool.give(write.owned);
    churn(pool, bytes);
    const other = take(pool, bytes);
    for (const v of other.views) v.fill(0xdd);
    await b.engine.writev(MiB, other.views);
    a.replicas[0]!.release(); // the stalled write reaches the disk now
    pool.give(other.owned);
    t.true(a.replicas[0]!.disk.subarray(MiB, MiB + bytes).equals(Buffer.alloc(bytes, 0xcc)), 'volume a\'s late write carries volume a\'s bytes');
    t.true(a.replicas[1]!.disk.subarray(MiB, MiB + bytes).equals(Buffer.alloc(bytes, 0xcc)));
    t.true(b.replicas[0]!.disk.subarray(MiB, MiB + bytes).equals(Buffer.alloc(bytes, 0xdd)));
    t.is(heldMemoryCount(), 0);
  });
}

test.serial('a stalled local write given up by a fence writes its own bytes, not another volume\'s', async (t) => {
  const pool = new BufferPool();
  const a = await volume(t, 'vol-a', 2);
  const b = await volume(t, 'vol-b', 1);
  a.replicas[0]!.stall = true;
  const bytes = 512 << 10;
  const write = take(pool, bytes);
  for (const v of write.views) v.fill(0xee);
  const pending = a.engine.writev(2 * MiB, write.views, true);
  a.engine.applyDoc({ id: 'vol-a', epoch: 2, replicas: [] } as unknown as Parameters<VolumeEngine['applyDoc']>[0]); // a newer engine took over
  const err = await t.throwsAsync(pending);
  t.is((err as StorageError).code, Code.FAILED_PRECONDITION);
  t.is(a.replicas[0]!.waiting, 1, 'the local write is still running');
  pool.give(write.owned); // the runner answered the error and gave the memory back
  churn(pool, bytes);
  const other = take(pool, bytes);
  for (const v of other.views) v.fill(0x77);
  await b.engine.writev(2 * MiB, other.views);
  a.replicas[0]!.release();
  pool.give(other.owned);
  t.true(a.replicas[0]!.disk.subarray(2 * MiB, 2 * MiB + bytes).equals(Buffer.alloc(bytes, 0xee)), 'the late write carries the fenced engine\'s own bytes');
  t.true(b.replicas[0]!.disk.subarray(2 * MiB, 2 * MiB + bytes).equals(Buffer.alloc(bytes, 0x77)));
  t.is(heldMemoryCount(), 0);
});
