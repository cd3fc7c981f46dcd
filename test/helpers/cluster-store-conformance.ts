/**
 * The ClusterStore contract as tests, run against every implementation
 * (test/unit/cluster-store-embedded.test.ts, test/integration/etcd-store.test.ts). Each
 * test gets a store of its own (a fresh cluster prefix or file), so they may run in
 * parallel. Revisions are compared by order only: a shared etcd's counter is bumped by
 * other tests' writes too. Waits are event-driven; their time limits only guard against
 * hangs.
 */
import type { ExecutionContext, TestFn } from 'ava';
import { randomUUID } from 'node:crypto';
import { Code, StorageError } from '../../src/common/errors.js';
import type { ClusterStore, JsonValue, WatchEvent } from '../../src/cluster/store/cluster-store.js';
import { guardFor, requireCommitted } from '../../src/cluster/store/cluster-store.js';
import { LeaseKeeper } from '../../src/cluster/store/lease-keeper.js';
import { silentLogger } from '../../src/common/log.js';

export interface ConformanceTarget {
  /** A fresh, empty store. */
  open(): Promise<ClusterStore>;
  /**
   * A short lease TTL the backend honours as asked (etcd: whole seconds, at least 2).
   * Keep it well above the event-loop stalls of a busy test machine.
   */
  shortTtlMs: number;
}

export const uniqueCluster = (): string => `t-${randomUUID().slice(0, 8)}`;

export async function expectCode(t: ExecutionContext, promise: Promise<unknown>, code: Code): Promise<StorageError> {
  const err = await t.throwsAsync(promise);
  t.true(err instanceof StorageError, `expected a StorageError, got ${String(err)}`);
  t.is((err as StorageError).code, code, `expected code ${Code[code]}, got ${Code[(err as StorageError).code]}: ${err?.message}`);
  return err as StorageError;
}

/** Resolves when `predicate` holds for the events seen so far; rejects after `limitMs`. */
export function collectEvents(limitMs = 20_000): { events: WatchEvent[]; batches: WatchEvent[][]; onEvents: (e: WatchEvent[]) => void; until: (p: (all: WatchEvent[]) => boolean) => Promise<void> } {
  const events: WatchEvent[] = [];
  const batches: WatchEvent[][] = [];
  const waiters: { p: (all: WatchEvent[]) => boolean; resolve: () => void }[] = [];
  return {
    events,
    batches,
    onEvents: (batch) => {
      batches.push(batch);
      events.push(...batch);
      for (const w of [...waiters]) if (w.p(events)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
    },
    until: (p) => new Promise<void>((resolve, reject) => {
      if (p(events)) return resolve();
      const timer = setTimeout(() => reject(new Error(`watch condition not met in ${limitMs} ms; saw ${JSON.stringify(events)}`)), limitMs);
      waiters.push({ p, resolve: () => { clearTimeout(timer); resolve(); } });
    }),
  };
}

const put = (key: string, value: JsonValue) => ({ type: 'put' as const, key, value });

export function clusterStoreConformance(test: TestFn, target: ConformanceTarget): void {
  const withStore = async (t: ExecutionContext): Promise<ClusterStore> => {
    const store = await target.open();
    t.teardown(() => store.close());
    return store;
  };

  test('an absent key is undefined and an empty prefix lists nothing', async (t) => {
    const s = await withStore(t);
    t.is(await s.get('volumes/none'), undefined);
    const l = await s.list('volumes/');
    t.deepEqual(l.items, []);
    t.true(Number.isInteger(l.revision) && l.revision >= 0);
  });

  test('create-if-absent succeeds once; the second gets the current value back', async (t) => {
    const s = await withStore(t);
    const r1 = await s.txn({ guards: [{ key: 'k', modRevision: 0 }], ops: [put('k', { a: 1 })] });
    t.true(r1.succeeded);
    const kv = await s.get('k');
    t.deepEqual(kv, { key: 'k', value: { a: 1 }, createRevision: r1.revision, modRevision: r1.revision, version: 1 });
    const r2 = await s.txn({ guards: [{ key: 'k', modRevision: 0 }], ops: [put('k', { a: 2 })] });
    t.false(r2.succeeded);
    if (!r2.succeeded) {
      t.true(r2.revision >= r1.revision);
      t.deepEqual(r2.current.get('k'), kv);
    }
    t.deepEqual((await s.get('k'))?.value, { a: 1 });
    const err = t.throws(() => requireCommitted(r2, 'create k'));
    t.is((err as StorageError).code, Code.ABORTED);
  });

  test('updates are guarded by mod revision; a stale guard changes nothing', async (t) => {
    const s = await withStore(t);
    const r1 = await s.txn({ guards: [], ops: [put('k', 1)] });
    const r2 = await s.txn({ guards: [{ key: 'k', modRevision: r1.revision }], ops: [put('k', 2)] });
    t.true(r2.succeeded);
    t.true(r2.revision > r1.revision);
    const stale = await s.txn({ guards: [{ key: 'k', modRevision: r1.revision }], ops: [put('k', 3)] });
    t.false(stale.succeeded);
    t.true(stale.revision >= r2.revision);
    t.deepEqual(await s.get('k'), { key: 'k', value: 2, createRevision: r1.revision, modRevision: r2.revision, version: 2 });
    t.true((await s.list('')).revision >= r2.revision);
  });

  test('a transaction applies all its operations in one revision, or none', async (t) => {
    const s = await withStore(t);
    const base = await s.txn({ guards: [], ops: [put('v/a', 'a0'), put('v/c', 'c0')] });
    const ok = await s.txn({
      guards: [{ key: 'v/a', modRevision: base.revision }, { key: 'v/b', modRevision: 0 }],
      ops: [put('v/a', 'a1'), put('v/b', 'b1'), { type: 'delete', key: 'v/c' }],
    });
    t.true(ok.succeeded);
    const after = await s.list('v/');
    t.deepEqual(after.items.map((kv) => [kv.key, kv.value, kv.modRevision]), [['v/a', 'a1', ok.revision], ['v/b', 'b1', ok.revision]]);
    const failed = await s.txn({
      guards: [{ key: 'v/a', modRevision: ok.revision }, { key: 'v/b', modRevision: 0 }],
      ops: [put('v/a', 'a2'), put('v/d', 'd2')],
    });
    t.false(failed.succeeded);
    if (!failed.succeeded) t.deepEqual([...failed.current.keys()].sort(), ['v/a', 'v/b']);
    t.deepEqual((await s.list('v/')).items, after.items);
  });

  test('deleting is guarded too, and deleting an absent key is not an error', async (t) => {
    const s = await withStore(t);
    const r = await s.txn({ guards: [], ops: [put('k', true)] });
    t.false((await s.txn({ guards: [{ key: 'k', modRevision: r.revision + 5 }], ops: [{ type: 'delete', key: 'k' }] })).succeeded);
    t.true((await s.txn({ guards: [guardFor('k', await s.get('k'))], ops: [{ type: 'delete', key: 'k' }] })).succeeded);
    t.is(await s.get('k'), undefined);
    t.true((await s.txn({ guards: [], ops: [{ type: 'delete', key: 'k' }] })).succeeded);
    const again = await s.txn({ guards: [{ key: 'k', modRevision: 0 }], ops: [put('k', 'new')] });
    t.like(await s.get('k'), { createRevision: again.revision, version: 1 });
  });

  test('list returns exactly the keys under the prefix, sorted, at one revision', async (t) => {
    const s = await withStore(t);
    await s.txn({ guards: [], ops: [put('nodes/b', 2), put('nodes/a', 1), put('nodes/a/alive', 0), put('nodesx', 9), put('node', 8)] });
    const last = await s.txn({ guards: [], ops: [put('nodes/c', 3)] });
    const l = await s.list('nodes/');
    t.deepEqual(l.items.map((kv) => kv.key), ['nodes/a', 'nodes/a/alive', 'nodes/b', 'nodes/c']);
    t.true(l.revision >= last.revision);
  });

  test('lists longer than one page come back whole', async (t) => {
    const s = await withStore(t);
    const n = 600;
    for (let i = 0; i < n; i += 100) {
      await s.txn({ guards: [], ops: Array.from({ length: 100 }, (_, j) => put(`many/${String(i + j).padStart(4, '0')}`, i + j)) });
    }
    const l = await s.list('many/');
    t.is(l.items.length, n);
    t.deepEqual(l.items.map((kv) => kv.value), Array.from({ length: n }, (_, i) => i));
  });

  test('JSON values round-trip exactly', async (t) => {
    const s = await withStore(t);
    const value: JsonValue = { s: 'zoë ✓ "q"\n', n: -1.5, big: 2 ** 52, b: false, z: null, a: [1, 'two', { three: [3] }], e: {} };
    await s.txn({ guards: [], ops: [put('json/ü', value)] });
    t.deepEqual((await s.get('json/ü'))?.value, value);
    t.deepEqual((await s.list('json/')).items[0]?.key, 'json/ü');
  });

  test('malformed requests are INVALID_ARGUMENT and change nothing', async (t) => {
    const s = await withStore(t);
    await expectCode(t, s.get('/abs'), Code.INVALID_ARGUMENT);
    await expectCode(t, s.get(''), Code.INVALID_ARGUMENT);
    await expectCode(t, s.txn({ guards: [], ops: [put('a', 1), put('a', 2)] }), Code.INVALID_ARGUMENT);
    await expectCode(t, s.txn({ guards: [{ key: 'a', modRevision: -1 }], ops: [] }), Code.INVALID_ARGUMENT);
    await expectCode(t, s.txn({ guards: [], ops: [put('a', undefined as unknown as JsonValue)] }), Code.INVALID_ARGUMENT);
    await expectCode(t, s.grantLease(0), Code.INVALID_ARGUMENT);
    t.deepEqual((await s.list('')).items, []);
  });

  test('concurrent read-modify-CAS loops lose no update', async (t) => {
    const s = await withStore(t);
    const workers = 4;
    const perWorker = 10;
    const increment = async (): Promise<void> => {
      for (;;) {
        const kv = await s.get('counter');
        const r = await s.txn({ guards: [guardFor('counter', kv)], ops: [put('counter', ((kv?.value as number | undefined) ?? 0) + 1)] });
        if (r.succeeded) return;
      }
    };
    await Promise.all(Array.from({ length: workers }, async () => {
      for (let i = 0; i < perWorker; i++) await increment();
    }));
    t.like(await s.get('counter'), { value: workers * perWorker, version: workers * perWorker });
  });

  test('a revoked lease takes its keys along; using it afterwards is NOT_FOUND', async (t) => {
    const s = await withStore(t);
    const lease = await s.grantLease(target.shortTtlMs);
    t.true(lease.ttlMs >= target.shortTtlMs);
    const r = await s.txn({ guards: [], ops: [{ type: 'put', key: 'alive/x', value: 1, leaseId: lease.id }, put('kept', 1)] });
    t.is((await s.get('alive/x'))?.leaseId, lease.id);
    t.is(await s.keepAliveLease(lease.id), lease.ttlMs);
    await s.revokeLease(lease.id);
    t.is(await s.get('alive/x'), undefined);
    t.like(await s.get('kept'), { modRevision: r.revision });
    await expectCode(t, s.keepAliveLease(lease.id), Code.NOT_FOUND);
    await expectCode(t, s.txn({ guards: [], ops: [put('other', 1), { type: 'put', key: 'alive/y', value: 1, leaseId: lease.id }] }), Code.NOT_FOUND);
    t.is(await s.get('other'), undefined);
    await t.notThrowsAsync(s.revokeLease(lease.id));
  });

  test('a lease nobody renews expires and its keys vanish; a renewed one stays', async (t) => {
    const s = await withStore(t);
    const watched = collectEvents();
    await s.watch('alive/', { onEvents: watched.onEvents });
    const dying = await s.grantLease(target.shortTtlMs);
    const kept = await LeaseKeeper.grant(s, { ttlMs: target.shortTtlMs, log: silentLogger() });
    t.teardown(() => kept.close({ revoke: false }));
    await s.txn({ guards: [], ops: [
      { type: 'put', key: 'alive/dying', value: 1, leaseId: dying.id },
      { type: 'put', key: 'alive/kept', value: 1, leaseId: kept.lease.id },
    ] });
    await watched.until((all) => all.some((e) => e.type === 'delete' && e.key === 'alive/dying'));
    t.is(await s.get('alive/dying'), undefined);
    await expectCode(t, s.keepAliveLease(dying.id), Code.NOT_FOUND);
    t.like(await s.get('alive/kept'), { leaseId: kept.lease.id });
  });

  test('a watch delivers the prefix\'s changes in order, one transaction per batch', async (t) => {
    const s = await withStore(t);
    const w = collectEvents();
    await s.watch('vol/', { onEvents: w.onEvents });
    const r1 = await s.txn({ guards: [], ops: [put('vol/a', 1), put('vol/b', 2), put('other', 0)] });
    const r2 = await s.txn({ guards: [], ops: [{ type: 'delete', key: 'vol/a' }] });
    const r3 = await s.txn({ guards: [], ops: [put('vol/b', 3)] });
    await w.until((all) => all.length >= 4);
    t.deepEqual(w.batches, [
      [{ type: 'put', key: 'vol/a', value: 1, modRevision: r1.revision, createRevision: r1.revision },
        { type: 'put', key: 'vol/b', value: 2, modRevision: r1.revision, createRevision: r1.revision }],
      [{ type: 'delete', key: 'vol/a', modRevision: r2.revision, createRevision: 0 }],
      [{ type: 'put', key: 'vol/b', value: 3, modRevision: r3.revision, createRevision: r1.revision }],
    ]);
  });

  test('a watch from a past revision replays history, then carries on live', async (t) => {
    const s = await withStore(t);
    const r1 = await s.txn({ guards: [], ops: [put('h/a', 1)] });
    await s.txn({ guards: [], ops: [put('h/a', 2)] });
    await s.txn({ guards: [], ops: [put('h/b', 3)] });
    const w = collectEvents();
    await s.watch('h/', { onEvents: w.onEvents }, { fromRevision: r1.revision + 1 });
    const r4 = await s.txn({ guards: [], ops: [put('h/a', 4)] });
    await w.until((all) => all.length >= 3);
    t.deepEqual(w.events.map((e) => [e.key, e.value]), [['h/a', 2], ['h/b', 3], ['h/a', 4]]);
    t.is(w.events[2]!.modRevision, r4.revision);
  });

  test('list then watch from its revision + 1 misses nothing and repeats nothing', async (t) => {
    const s = await withStore(t);
    await s.txn({ guards: [], ops: [put('lw/a', 1)] });
    const l = await s.list('lw/');
    await s.txn({ guards: [], ops: [put('lw/b', 2)] });
    const w = collectEvents();
    await s.watch('lw/', { onEvents: w.onEvents }, { fromRevision: l.revision + 1 });
    await s.txn({ guards: [], ops: [put('lw/c', 3)] });
    await w.until((all) => all.length >= 2);
    t.deepEqual(w.events.map((e) => e.key), ['lw/b', 'lw/c']);
  });

  test('a closed watch delivers nothing more', async (t) => {
    const s = await withStore(t);
    const w1 = collectEvents();
    const w2 = collectEvents();
    const first = await s.watch('c/', { onEvents: w1.onEvents });
    await s.watch('c/', { onEvents: w2.onEvents });
    await s.txn({ guards: [], ops: [put('c/1', 1)] });
    await w1.until((all) => all.length === 1);
    await first.close();
    await s.txn({ guards: [], ops: [put('c/2', 2)] });
    await w2.until((all) => all.length === 2);
    t.deepEqual(w1.events.map((e) => e.key), ['c/1']);
  });

  test('an aborted signal is CANCELLED; a closed store is FAILED_PRECONDITION', async (t) => {
    const s = await target.open();
    const ac = new AbortController();
    ac.abort();
    await expectCode(t, s.get('k', { signal: ac.signal }), Code.CANCELLED);
    await s.close();
    await expectCode(t, s.get('k'), Code.FAILED_PRECONDITION);
    await expectCode(t, s.txn({ guards: [], ops: [put('k', 1)] }), Code.FAILED_PRECONDITION);
    await t.notThrowsAsync(s.close());
  });
}
