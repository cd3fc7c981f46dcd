import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import type { NodeId } from '../../src/common/ids.js';
import { largestPlaceable, placeReplicas, type PlacementNode, type PlacementRequest } from '../../src/cluster/placement.js';

const GiB = 1024 ** 3;

/** "a:z1:10" is node a in zone z1 with 10 GiB free; "a::10" has no zone; "a:z1:10:down" is down. */
function nodes(...specs: string[]): PlacementNode[] {
  return specs.map((s) => {
    const [name, zone, free, state] = s.split(':');
    const n: PlacementNode = { nodeId: `id-${name}` as NodeId, name: name!, up: state !== 'down', freeBytes: Number(free) * GiB };
    if (zone) n.zone = zone;
    return n;
  });
}

const ids = (...names: string[]): NodeId[] => names.map((n) => `id-${n}` as NodeId);

interface Case {
  title: string;
  req: PlacementRequest;
  /** Names of the chosen nodes, in order (ids where names tie). */
  chosen?: string[];
  chosenIds?: string[];
  zonesShared?: boolean;
  preferredChosen?: boolean;
}

const cases: Case[] = [
  { title: 'one replica goes to the node with the most free space', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a::5', 'b::9', 'c::7') }, chosen: ['b'] },
  { title: 'ties on free space go to the smaller name', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('c::5', 'a::5', 'b::5') }, chosen: ['a', 'b'] },
  { title: 'ties on name go to the smaller id', req: { replicas: 1, sizeBytes: GiB, nodes: [{ nodeId: 'id-2' as NodeId, name: 'x', up: true, freeBytes: GiB }, { nodeId: 'id-1' as NodeId, name: 'x', up: true, freeBytes: GiB }] }, chosenIds: ['id-1'] },
  { title: 'never two replicas on one node', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('a::100', 'b::2', 'c::2') }, chosen: ['a', 'b', 'c'] },
  { title: 'down nodes and nodes without the space are skipped', req: { replicas: 2, sizeBytes: 10 * GiB, nodes: nodes('a::50:down', 'b::9', 'c::10', 'd::11') }, chosen: ['d', 'c'] },
  { title: 'exactly the size free is enough', req: { replicas: 1, sizeBytes: 10 * GiB, nodes: nodes('a::10') }, chosen: ['a'] },
  { title: 'distinct zones beat free space', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('a1:a:90', 'a2:a:80', 'b1:b:10', 'c1:c:5') }, chosen: ['a1', 'b1', 'c1'], zonesShared: false },
  { title: 'fewer zones than replicas: distinct zones first, then distinct nodes', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('a1:a:90', 'a2:a:80', 'b1:b:10', 'b2:b:5') }, chosen: ['a1', 'b1', 'a2'], zonesShared: true },
  { title: 'one zone only: replicas still on distinct nodes', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('x:a:3', 'y:a:2', 'z:a:1') }, chosen: ['x', 'y', 'z'], zonesShared: true },
  { title: 'nodes without a zone label count as zones of their own', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('a1:a:90', 'a2:a:80', 'n::1') }, chosen: ['a1', 'n', 'a2'], zonesShared: true },
  { title: 'the zone fallback spreads evenly', req: { replicas: 4, sizeBytes: GiB, nodes: nodes('a1:a:90', 'a2:a:89', 'a3:a:88', 'b1:b:1', 'b2:b:1') }, chosen: ['a1', 'b1', 'a2', 'b2'], zonesShared: true },
  { title: 'the preferred node goes first when it qualifies', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a:z1:90', 'b:z2:5', 'c:z3:6'), preferredNode: ids('b')[0] }, chosen: ['b', 'a'], preferredChosen: true },
  { title: 'the other replicas avoid the preferred node\'s zone', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a:z1:90', 'b:z1:5', 'c:z2:6'), preferredNode: ids('b')[0] }, chosen: ['b', 'c'], preferredChosen: true },
  { title: 'a preferred node without the space is passed over', req: { replicas: 2, sizeBytes: 10 * GiB, nodes: nodes('a::90', 'b::5', 'c::60'), preferredNode: ids('b')[0] }, chosen: ['a', 'c'], preferredChosen: false },
  { title: 'a preferred node that is down is passed over', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a::90', 'b::95:down'), preferredNode: ids('b')[0] }, chosen: ['a'], preferredChosen: false },
  { title: 'an unknown preferred node is passed over', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a::90'), preferredNode: 'id-zz' as NodeId }, chosen: ['a'], preferredChosen: false },
  { title: 'requisite: the first replica goes to the required node with the most room, the rest anywhere', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a::90', 'b::5', 'c::6'), firstAmong: ids('b', 'c') }, chosen: ['c', 'a'], preferredChosen: false },
  { title: 'requisite: a preferred node among the required ones goes first', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a::90', 'b::5', 'c::6'), firstAmong: ids('b', 'c'), preferredNode: ids('b')[0] }, chosen: ['b', 'a'], preferredChosen: true },
  { title: 'requisite: a preferred node outside the required ones is passed over', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a::90', 'b::5'), firstAmong: ids('b'), preferredNode: ids('a')[0] }, chosen: ['b'], preferredChosen: false },
  { title: 'repair avoids nodes holding replicas and their zones', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a1:a:90', 'a2:a:80', 'b1:b:10', 'c1:c:5'), existing: ids('a1', 'b1') }, chosen: ['c1'], zonesShared: false },
  { title: 'repair falls back to a used zone when no other has room', req: { replicas: 1, sizeBytes: 8 * GiB, nodes: nodes('a1:a:90', 'a2:a:80', 'b1:b:10', 'c1:c:5'), existing: ids('a1', 'b1') }, chosen: ['a2'], zonesShared: true },
  { title: 'zones: only nodes in the listed zones are chosen, however much room others have', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a1:a:90', 'b1:b:5', 'c1:c:6', 'n::99'), zones: ['b', 'c'] }, chosen: ['c1', 'b1'] },
  { title: 'zones: requisite and zones together', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a1:a:90', 'b1:b:5', 'b2:b:6'), zones: ['b'], firstAmong: ids('a1', 'b1') }, chosen: ['b1'] },
  { title: 'repair of two replicas', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a::3', 'b::2', 'c::1', 'd::4'), existing: ids('d') }, chosen: ['a', 'b'] },
];

for (const c of cases) {
  test(`placement: ${c.title}`, (t) => {
    const r = placeReplicas(c.req);
    if (c.chosenIds) t.deepEqual(r.nodeIds, c.chosenIds);
    else t.deepEqual(r.nodeIds.map((id) => c.req.nodes.find((n) => n.nodeId === id)!.name), c.chosen);
    t.is(new Set(r.nodeIds).size, r.nodeIds.length);
    if (c.zonesShared !== undefined) t.is(r.zonesShared, c.zonesShared);
    if (c.preferredChosen !== undefined) t.is(r.preferredChosen, c.preferredChosen);
  });
}

interface ErrorCase { title: string; req: PlacementRequest; code: Code; message: string }

const errorCases: ErrorCase[] = [
  { title: 'too few nodes up', req: { replicas: 3, sizeBytes: GiB, nodes: nodes('a::10', 'b::10', 'c::10:down') }, code: Code.FAILED_PRECONDITION,
    message: 'replicas=3 but only 2 nodes are up (down: c)' },
  { title: 'one node up', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a::10') }, code: Code.FAILED_PRECONDITION,
    message: 'replicas=2 but only 1 node is up' },
  { title: 'no nodes at all', req: { replicas: 1, sizeBytes: GiB, nodes: [] }, code: Code.FAILED_PRECONDITION,
    message: 'replicas=1 but only 0 nodes are up' },
  { title: 'too few nodes with the space', req: { replicas: 3, sizeBytes: 10 * GiB, nodes: nodes('a::12', 'b::10', 'c::5') }, code: Code.RESOURCE_EXHAUSTED,
    message: 'replicas=3 but only 2 nodes have 10 GiB free (too little free: c 5 GiB)' },
  { title: 'one node with the space', req: { replicas: 2, sizeBytes: 1.5 * GiB, nodes: nodes('a::2', 'b::1') }, code: Code.RESOURCE_EXHAUSTED,
    message: 'replicas=2 but only 1 node has 1.5 GiB free (too little free: b 1 GiB)' },
  { title: 'repair with no other node up', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a::10', 'b::10', 'c::10:down'), existing: ids('a', 'b') }, code: Code.FAILED_PRECONDITION,
    message: '1 more replica besides 2 on a, b but only 0 other nodes are up (down: c)' },
  { title: 'repair with no other node with the space', req: { replicas: 1, sizeBytes: 4 * GiB, nodes: nodes('a::10', 'b::3'), existing: ids('a') }, code: Code.RESOURCE_EXHAUSTED,
    message: '1 more replica besides 1 on a but only 0 other nodes have 4 GiB free (too little free: b 3 GiB)' },
  { title: 'requisite: no required node has room', req: { replicas: 1, sizeBytes: 10 * GiB, nodes: nodes('a::90', 'b::5', 'c::20:down'), firstAmong: ids('b', 'c') }, code: Code.RESOURCE_EXHAUSTED,
    message: 'none of the required nodes (id-b, id-c) is up with 10 GiB free' },
  { title: 'zones: too few nodes up in them', req: { replicas: 2, sizeBytes: GiB, nodes: nodes('a1:a:10', 'b1:b:10', 'b2:b:10:down', 'c1:c:10'), zones: ['b'] }, code: Code.FAILED_PRECONDITION,
    message: 'replicas=2 but only 1 node is up in zone b (down: b2)' },
  { title: 'zones: none of them has a node', req: { replicas: 1, sizeBytes: GiB, nodes: nodes('a1:a:10', 'n::10'), zones: ['x', 'y'] }, code: Code.FAILED_PRECONDITION,
    message: 'replicas=1 but only 0 nodes are up in zones x, y' },
  { title: 'zero replicas', req: { replicas: 0, sizeBytes: GiB, nodes: nodes('a::10') }, code: Code.INVALID_ARGUMENT,
    message: 'replicas=0 is not valid: place at least 1 replica' },
  { title: 'a size that is not positive', req: { replicas: 1, sizeBytes: 0, nodes: nodes('a::10') }, code: Code.INVALID_ARGUMENT,
    message: 'size 0 bytes is not valid: use a positive whole number of bytes' },
  { title: 'a node listed twice', req: { replicas: 1, sizeBytes: GiB, nodes: [...nodes('a::10'), ...nodes('a::10')] }, code: Code.INVALID_ARGUMENT,
    message: 'node id-a is listed twice' },
];

for (const c of errorCases) {
  test(`placement fails: ${c.title}`, (t) => {
    const err = t.throws(() => placeReplicas(c.req));
    t.true(err instanceof StorageError);
    t.is((err as StorageError).code, c.code);
    t.is(err?.message, c.message);
  });
}

test('placement is deterministic whatever the order of the nodes', (t) => {
  const list = nodes('a1:a:5', 'a2:a:5', 'b1:b:5', 'b2:b:7', 'c1:c:5', 'n::5');
  const expected = placeReplicas({ replicas: 4, sizeBytes: GiB, nodes: list }).nodeIds;
  for (let i = 0; i < 20; i++) {
    const shuffled = [...list].sort(() => Math.random() - 0.5);
    t.deepEqual(placeReplicas({ replicas: 4, sizeBytes: GiB, nodes: shuffled }).nodeIds, expected);
  }
});

test('placement does not change its input', (t) => {
  const list = nodes('a:z:5', 'b:y:7');
  const copy = structuredClone(list);
  placeReplicas({ replicas: 2, sizeBytes: GiB, nodes: list, existing: [] });
  t.deepEqual(list, copy);
});

test('largest placeable: the n-th largest free among up nodes in the zones, the first replica among the required nodes', (t) => {
  const list = nodes('a1:a:90', 'a2:a:40', 'b1:b:30', 'b2:b:70:down', 'c1:c:20', 'n::10');
  t.is(largestPlaceable({ replicas: 1, nodes: list }), 90 * GiB);
  t.is(largestPlaceable({ replicas: 2, nodes: list }), 40 * GiB);
  t.is(largestPlaceable({ replicas: 3, nodes: list }), 30 * GiB);
  t.is(largestPlaceable({ replicas: 3, nodes: list, zones: ['b', 'c'] }), 0, 'only b1 and c1 are up there');
  t.is(largestPlaceable({ replicas: 2, nodes: list, zones: ['b', 'c'] }), 20 * GiB);
  t.is(largestPlaceable({ replicas: 1, nodes: list, firstAmong: ids('c1', 'n') }), 20 * GiB);
  t.is(largestPlaceable({ replicas: 2, nodes: list, firstAmong: ids('b1') }), 30 * GiB);
  t.is(largestPlaceable({ replicas: 2, nodes: list, firstAmong: ids('b2') }), 0, 'the required node is down');
  t.is(largestPlaceable({ replicas: 1, nodes: [] }), 0);
});

test('largest placeable: placement places exactly that size, and refuses one byte more', (t) => {
  const list = nodes('a1:a:90', 'a2:a:40', 'b1:b:30', 'c1:c:20', 'n::10');
  for (const req of [{ replicas: 2 }, { replicas: 3, zones: ['a', 'b'] }, { replicas: 2, firstAmong: ids('c1', 'n') }, { replicas: 3, firstAmong: ids('a2') }]) {
    const size = largestPlaceable({ ...req, nodes: list });
    t.true(size > 0, JSON.stringify(req));
    t.is(placeReplicas({ ...req, sizeBytes: size, nodes: list }).nodeIds.length, req.replicas);
    const err = t.throws(() => placeReplicas({ ...req, sizeBytes: size + 1, nodes: list }), { instanceOf: StorageError });
    t.is(err.code, Code.RESOURCE_EXHAUSTED, JSON.stringify(req));
  }
});
