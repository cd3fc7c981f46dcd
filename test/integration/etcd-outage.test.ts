/**
 * The cluster store while etcd is away: frozen (SIGSTOP) or killed and restarted. Calls
 * fail with UNAVAILABLE within their deadline, succeed again once etcd is back, and no
 * acknowledged write is lost; watches and the node registry recover by themselves.
 * Outcomes only: the durations are reported with t.log, not asserted.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { performance } from 'node:perf_hooks';
import { Code, isStorageError } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { listNodes, NodeRegistry } from '../../src/cluster/node-registry.js';
import type { JsonValue } from '../../src/cluster/store/cluster-store.js';
import { EtcdStore } from '../../src/cluster/store/etcd-store.js';
import { collectEvents, expectCode, uniqueCluster } from '../helpers/cluster-store-conformance.js';
import { EtcdProcess, etcdMissingReason } from '../helpers/etcd.js';
import { prerequisitesMet } from '../helpers/prereq.js';

const test = anyTest as TestFn;
const log = silentLogger();
const missing = await etcdMissingReason();
const CALL_TIMEOUT_MS = 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Retries `fn` while it fails with UNAVAILABLE; returns its value and the attempts made. */
async function untilAvailable<T>(fn: () => Promise<T>, attempts = 60): Promise<{ value: T; attempts: number }> {
  for (let i = 1; ; i++) {
    try {
      return { value: await fn(), attempts: i };
    } catch (err) {
      if (!isStorageError(err, Code.UNAVAILABLE) || i >= attempts) throw err;
      await sleep(250);
    }
  }
}

async function writeAcked(s: EtcdStore, acked: Map<string, JsonValue>, from: number, to: number): Promise<number[]> {
  const revisions: number[] = [];
  for (let i = from; i < to; i++) {
    const key = `w/${String(i).padStart(3, '0')}`;
    const r = await s.txn({ guards: [{ key, modRevision: 0 }], ops: [{ type: 'put', key, value: i }] });
    if (r.succeeded) {
      acked.set(key, i);
      revisions.push(r.revision);
    }
  }
  return revisions;
}

async function assertAllAcked(t: ExecutionContext, s: EtcdStore, acked: Map<string, JsonValue>): Promise<void> {
  const { items } = await s.list('w/');
  const present = new Map(items.map((kv) => [kv.key, kv.value]));
  const lost = [...acked].filter(([k, v]) => present.get(k) !== v).map(([k]) => k);
  t.deepEqual(lost, [], 'acknowledged writes lost');
  t.true(acked.size > 0);
}

/** Every call kind fails with UNAVAILABLE while etcd cannot answer; returns the slowest failure in ms. */
async function expectAllUnavailable(t: ExecutionContext, s: EtcdStore): Promise<number> {
  const started = performance.now();
  const lease = s.grantLease(2000);
  await Promise.all([
    expectCode(t, s.get('w/000'), Code.UNAVAILABLE),
    expectCode(t, s.list('w/'), Code.UNAVAILABLE),
    expectCode(t, s.txn({ guards: [{ key: 'w/during', modRevision: 0 }], ops: [{ type: 'put', key: 'w/during', value: -1 }] }), Code.UNAVAILABLE),
    expectCode(t, lease, Code.UNAVAILABLE),
    expectCode(t, s.watch('other/', { onEvents: () => undefined }), Code.UNAVAILABLE),
  ]);
  return Math.round(performance.now() - started);
}

if (prerequisitesMet('etcd outage tests', missing)) {
  let etcd: EtcdProcess | undefined;
  test.before(async () => {
    etcd = await EtcdProcess.start();
  });
  test.after.always(async () => {
    await etcd?.stop();
  });

  test.serial('etcd frozen with SIGSTOP: UNAVAILABLE within the deadline, then service again, no acknowledged write lost', async (t) => {
    const s = new EtcdStore({ endpoints: [etcd!.endpoint], cluster: uniqueCluster(), callTimeoutMs: CALL_TIMEOUT_MS, log });
    t.teardown(() => s.close());
    const acked = new Map<string, JsonValue>();
    const before = await writeAcked(s, acked, 0, 20);
    const watched = collectEvents();
    await s.watch('w/', { onEvents: watched.onEvents }, { fromRevision: before[0]! });

    etcd!.pause();
    let failMs: number;
    try {
      failMs = await expectAllUnavailable(t, s);
      await sleep(2000); // a few seconds away in all
    } finally {
      etcd!.resume();
    }
    const resumed = performance.now();
    const back = await untilAvailable(() => s.txn({ guards: [], ops: [{ type: 'put', key: 'w/after', value: 'after' }] }));
    t.log(`frozen etcd: every call failed UNAVAILABLE within ${failMs} ms (deadline ${CALL_TIMEOUT_MS} ms); first write after SIGCONT took ${back.attempts} attempt(s), ${Math.round(performance.now() - resumed)} ms`);
    acked.set('w/after', 'after');
    const after = await writeAcked(s, acked, 20, 30);
    await assertAllAcked(t, s, acked);
    const wanted = new Set([...before, back.value.revision, ...after]);
    await watched.until((all) => [...wanted].every((r) => all.some((e) => e.modRevision === r)));
    const seen = watched.events.map((e) => e.modRevision);
    t.deepEqual(seen, [...seen].sort((a, b) => a - b), 'watch events in revision order');
    t.is(new Set(seen).size, seen.length, 'no event delivered twice');
  });

  test.serial('etcd killed and restarted: UNAVAILABLE while down; data, watch and node registration come back', async (t) => {
    const cluster = uniqueCluster();
    const s = new EtcdStore({ endpoints: [etcd!.endpoint], cluster, callTimeoutMs: CALL_TIMEOUT_MS, log });
    const registryStore = new EtcdStore({ endpoints: [etcd!.endpoint], cluster, callTimeoutMs: CALL_TIMEOUT_MS, log });
    const registry = new NodeRegistry(registryStore, { ttlMs: 2000, retryMs: 250, log });
    t.teardown(async () => {
      await registry.close();
      await Promise.all([s.close(), registryStore.close()]);
    });
    const nodeId = 'node-a' as NodeId;
    await registry.register({ nodeId, name: 'a', peerAddress: '127.0.0.1:1', labels: {}, capacity: { totalBytes: 100, freeBytes: 50 }, version: 'test' });
    const acked = new Map<string, JsonValue>();
    const before = await writeAcked(s, acked, 0, 20);
    const watched = collectEvents();
    await s.watch('w/', { onEvents: watched.onEvents }, { fromRevision: before[0]! });

    await etcd!.kill();
    const failMs = await expectAllUnavailable(t, s);
    await sleep(2500); // longer than the node lease's TTL
    await etcd!.restart();
    const restarted = performance.now();
    const back = await untilAvailable(() => s.list('w/'));
    t.log(`killed etcd: every call failed UNAVAILABLE within ${failMs} ms; first read after restart took ${back.attempts} attempt(s), ${Math.round(performance.now() - restarted)} ms`);
    await assertAllAcked(t, s, acked);
    const after = await writeAcked(s, acked, 20, 30);
    await watched.until((all) => [...before, ...after].every((r) => all.some((e) => e.modRevision === r)));
    const seen = watched.events.map((e) => e.modRevision);
    t.deepEqual(seen, [...seen].sort((a, b) => a - b));
    t.is(new Set(seen).size, seen.length);

    // The registry lost its lease locally while etcd was away and registers again by itself.
    const up = await untilUp(s, nodeId);
    t.true(up);
    t.log(`node registry: node up again ${Math.round(performance.now() - restarted)} ms after the restart`);
  });
}

async function untilUp(s: EtcdStore, nodeId: NodeId): Promise<boolean> {
  for (let i = 0; i < 80; i++) {
    const nodes = await untilAvailable(() => listNodes(s));
    if (nodes.value.find((n) => n.nodeId === nodeId)?.up) return true;
    await sleep(250);
  }
  return false;
}
