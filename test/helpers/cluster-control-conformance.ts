/**
 * Node registry and leader election scenarios, run against both cluster stores
 * (test/unit/cluster-store-control.test.ts on SQLite, test/integration/etcd-control.test.ts
 * on a real etcd). Each participant gets its own store handle wrapped in a
 * `CuttableStore`: `cut()` makes every call fail UNAVAILABLE and silences its watches,
 * as if that daemon froze or lost the network. Waits re-check their condition every
 * 100 ms; their time limits only guard against hangs.
 */
import type { ExecutionContext, TestFn } from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { LeaderElection } from '../../src/cluster/leader-election.js';
import { forgetNode, listNodes, NodeRegistry, toPlacementNodes, type NodeRegistration } from '../../src/cluster/node-registry.js';
import { placeReplicas } from '../../src/cluster/placement.js';
import type { CallOptions, ClusterStore, Lease, LeaseId, TxnRequest, WatchHandlers, WatchOptions } from '../../src/cluster/store/cluster-store.js';
import { keys } from '../../src/cluster/store/keys.js';
import { expectCode } from './cluster-store-conformance.js';

export interface ControlTarget {
  /** A new cluster; `handle()` gives one more participant's view of it. */
  cluster(): Promise<{ handle: () => Promise<ClusterStore>; close: () => Promise<void> }>;
  shortTtlMs: number;
}

const log = silentLogger();
const unavailable = (): StorageError => new StorageError(Code.UNAVAILABLE, 'cut off (test)');

/** A store handle that can be cut off from the backend. */
export class CuttableStore implements ClusterStore {
  cutOff = false;
  /** With `closeInner: false`, close() leaves the inner store open (a shared embedded store). */
  constructor(private readonly inner: ClusterStore, private readonly options = { closeInner: true }) {}
  get kind(): 'etcd' | 'embedded' { return this.inner.kind; }
  cut(): void { this.cutOff = true; }
  private async pass<T>(fn: () => Promise<T>): Promise<T> {
    if (this.cutOff) throw unavailable();
    return fn();
  }
  get(key: string, o?: CallOptions) { return this.pass(() => this.inner.get(key, o)); }
  list(prefix: string, o?: CallOptions) { return this.pass(() => this.inner.list(prefix, o)); }
  txn(r: TxnRequest, o?: CallOptions) { return this.pass(() => this.inner.txn(r, o)); }
  grantLease(ttlMs: number, o?: CallOptions): Promise<Lease> { return this.pass(() => this.inner.grantLease(ttlMs, o)); }
  keepAliveLease(id: LeaseId, o?: CallOptions) { return this.pass(() => this.inner.keepAliveLease(id, o)); }
  revokeLease(id: LeaseId, o?: CallOptions) { return this.pass(() => this.inner.revokeLease(id, o)); }
  watch(prefix: string, h: WatchHandlers, o?: WatchOptions) {
    return this.pass(() => this.inner.watch(prefix, { onEvents: (e) => { if (!this.cutOff) h.onEvents(e); }, onError: h.onError }, o));
  }
  close() { return this.options.closeInner ? this.inner.close() : Promise.resolve(); }
}

/** Re-checks `cond` every 100 ms; rejects after `limitMs`. */
export async function until(cond: () => boolean | Promise<boolean>, describe: () => unknown, limitMs = 20_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met in ${limitMs} ms: ${JSON.stringify(describe())}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The one candidate that leads and that every live candidate names, or undefined. */
function agreedLeader(elections: readonly LeaderElection[], ids: readonly string[]): string | undefined {
  const leaders = elections.filter((e) => e.isLeader());
  if (leaders.length !== 1) return undefined;
  const id = ids[elections.indexOf(leaders[0]!)];
  return elections.every((e) => e.state().leader === id) ? id : undefined;
}

const registration = (id: string, zone: string, freeBytes: number): NodeRegistration => ({
  nodeId: id as NodeId, name: id, peerAddress: `127.0.0.1:${7000 + id.length}`, zone, labels: { zone, rack: 'r1' },
  capacity: { totalBytes: 100 << 20, freeBytes }, version: '0.1.0',
});

export function clusterControlConformance(test: TestFn, target: ControlTarget): void {
  async function setup(t: ExecutionContext, n: number): Promise<{ stores: CuttableStore[]; observer: ClusterStore }> {
    const cluster = await target.cluster();
    const stores = await Promise.all(Array.from({ length: n }, async () => new CuttableStore(await cluster.handle())));
    const observer = await cluster.handle();
    t.teardown(async () => {
      await Promise.all([...stores, observer].map((s) => s.close()));
      await cluster.close();
    });
    return { stores, observer };
  }

  async function elect(t: ExecutionContext, n: number) {
    const { stores, observer } = await setup(t, n);
    const ids = stores.map((_, i) => `cand-${i}`);
    const elections = stores.map((s, i) => new LeaderElection(s, { role: 'repair', candidateId: ids[i]!, ttlMs: target.shortTtlMs, retryMs: 100, log }));
    t.teardown(() => Promise.all(elections.map((e) => e.close())).then(() => undefined));
    for (const e of elections) e.start();
    await until(() => agreedLeader(elections, ids) !== undefined, () => elections.map((e) => e.state()));
    return { stores, observer, ids, elections, leader: () => agreedLeader(elections, ids) };
  }

  test('election: three candidates agree on exactly one leader', async (t) => {
    const { observer, ids, elections, leader } = await elect(t, 3);
    const id = leader()!;
    t.true(ids.includes(id));
    t.is(elections.filter((e) => e.isLeader()).length, 1);
    t.like((await observer.get(keys.leader('repair')))?.value, { candidate: id });
  });

  test('election: when the leader\'s lease is revoked, a new term begins, everyone agrees, and the old term is fenced', async (t) => {
    const { observer, ids, elections, leader } = await elect(t, 3);
    const first = leader()!;
    const old = elections[ids.indexOf(first)]!;
    const oldGuard = old.guard()!;
    const leaseId = (await observer.get(keys.leader('repair')))!.leaseId!;
    await observer.revokeLease(leaseId);
    // Usually another candidate wins; the old one may too, but only under a new lease.
    const term = (): number | undefined => elections.find((e) => e.isLeader())?.guard()?.modRevision;
    await until(() => leader() !== undefined && term() !== oldGuard.modRevision, () => elections.map((e) => e.state()));
    const next = elections[ids.indexOf(leader()!)]!;
    t.log(`leader ${first} -> ${leader()}`);
    t.not((await observer.get(keys.leader('repair')))?.leaseId, leaseId);
    const fenced = await observer.txn({ guards: [oldGuard], ops: [{ type: 'put', key: 'volumes/v1', value: 'old leader' }] });
    t.false(fenced.succeeded);
    const ok = await observer.txn({ guards: [next.guard()!], ops: [{ type: 'put', key: 'volumes/v1', value: 'new leader' }] });
    t.true(ok.succeeded);
  });

  test('election: a leader cut off from the store is replaced after its TTL, and stops leading before the next one starts', async (t) => {
    const { stores, ids, elections, leader } = await elect(t, 3);
    const first = leader()!;
    const i = ids.indexOf(first);
    const overlaps: string[] = [];
    elections.forEach((e, j) => e.onChange((s) => { if (j !== i && s.isLeader && elections[i]!.isLeader()) overlaps.push(ids[j]!); }));
    stores[i]!.cut();
    const others = elections.filter((_, j) => j !== i);
    const otherIds = ids.filter((_, j) => j !== i);
    await until(() => agreedLeader(others, otherIds) !== undefined, () => elections.map((e) => e.state()));
    t.false(elections[i]!.isLeader());
    t.deepEqual(overlaps, [], 'two candidates led at once');
  });

  test('election: closing the leader resigns, and another candidate takes over', async (t) => {
    const { ids, elections, leader } = await elect(t, 2);
    const first = leader()!;
    const old = elections[ids.indexOf(first)]!;
    await old.close();
    t.false(old.isLeader());
    const rest = elections.filter((e) => e !== old);
    await until(() => rest.length === 1 && rest[0]!.isLeader(), () => rest.map((e) => e.state()));
    t.not(ids[elections.indexOf(rest[0]!)], first);
  });

  test('registry: registered nodes are listed up with their records; capacity updates show; placement uses them', async (t) => {
    const { stores, observer } = await setup(t, 3);
    const regs = stores.map((s) => new NodeRegistry(s, { ttlMs: target.shortTtlMs, log }));
    t.teardown(() => Promise.all(regs.map((r) => r.close())).then(() => undefined));
    const gib = 1 << 30;
    await Promise.all([regs[0]!.register(registration('n1', 'a', 5 * gib)), regs[1]!.register(registration('n2', 'b', 5 * gib)), regs[2]!.register(registration('n3', 'b', 1 * gib))]);
    await regs[2]!.updateCapacity({ totalBytes: 100 << 20, freeBytes: 20 * gib });
    const nodes = await listNodes(observer);
    t.deepEqual(nodes.map((n) => [n.name, n.up, n.zone, n.capacity.freeBytes]), [['n1', true, 'a', 5 * gib], ['n2', true, 'b', 5 * gib], ['n3', true, 'b', 20 * gib]]);
    t.like(nodes[0], { peerAddress: registration('n1', 'a', 0).peerAddress, labels: { zone: 'a', rack: 'r1' }, version: '0.1.0' });
    t.true(regs.every((r) => r.isUp()));
    t.deepEqual(placeReplicas({ replicas: 2, sizeBytes: 2 * gib, nodes: toPlacementNodes(nodes) }).nodeIds, ['n3', 'n1']);
  });

  test('registry: a node cut off from the store goes down after its TTL but stays listed; it can then be forgotten', async (t) => {
    const { stores, observer } = await setup(t, 2);
    const regs = stores.map((s) => new NodeRegistry(s, { ttlMs: target.shortTtlMs, log }));
    t.teardown(() => Promise.all(regs.map((r) => r.close())).then(() => undefined));
    await regs[0]!.register(registration('n1', 'a', 1));
    await regs[1]!.register(registration('n2', 'a', 1));
    await expectCode(t, forgetNode(observer, 'n1' as NodeId), Code.FAILED_PRECONDITION);
    stores[0]!.cut();
    await until(async () => (await listNodes(observer)).find((n) => n.name === 'n1')?.up === false, () => 'n1 still up');
    t.deepEqual((await listNodes(observer)).map((n) => [n.name, n.up]), [['n1', false], ['n2', true]]);
    await forgetNode(observer, 'n1' as NodeId);
    t.deepEqual((await listNodes(observer)).map((n) => n.name), ['n2']);
  });

  test('registry: closing shows the node down at once; a lost lease is replaced by itself', async (t) => {
    const { stores, observer } = await setup(t, 2);
    const regs = stores.map((s) => new NodeRegistry(s, { ttlMs: target.shortTtlMs, retryMs: 50, log }));
    t.teardown(() => Promise.all(regs.map((r) => r.close())).then(() => undefined));
    await regs[0]!.register(registration('n1', 'a', 1));
    await regs[1]!.register(registration('n2', 'a', 1));
    await regs[0]!.close();
    t.deepEqual((await listNodes(observer)).map((n) => [n.name, n.up]), [['n1', false], ['n2', true]]);
    const alive = await observer.get(keys.nodeAlive('n2' as NodeId));
    await observer.revokeLease(alive!.leaseId!);
    await until(async () => (await listNodes(observer)).find((n) => n.name === 'n2')?.up === true, () => 'n2 still down');
    t.not((await observer.get(keys.nodeAlive('n2' as NodeId)))?.leaseId, alive!.leaseId);
  });
}
