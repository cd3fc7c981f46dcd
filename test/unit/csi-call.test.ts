/**
 * The CSI request wrapper (src/csi/csi-call.ts) behind a real CSI gRPC server on a unix
 * socket, called by the test CSI client: locks answer ABORTED, validation comes before
 * any side effect, errors map to the spec's codes, secrets never reach the log, and the
 * handler's signal fires on a client cancel and at the deadline.
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Code, StorageError } from '../../src/common/errors.js';
import { csiService, type CsiMethods } from '../../src/csi/csi-call.js';
import { CsiLocks, volumeLockKey } from '../../src/csi/csi-locks.js';
import { startCsiServer, type CsiServer } from '../../src/csi/csi-server.js';
import { csiClient, ok, type CsiTestClient } from '../helpers/csi-client.js';

interface Deferred<T = void> { promise: Promise<T>; resolve: (v: T) => void }
function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => { resolve = r; });
  return { promise, resolve };
}

const CAP = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

interface Harness { csi: CsiTestClient; server: CsiServer; lines: Record<string, unknown>[]; raw: string[]; close(): Promise<void> }

async function serve(controller: CsiMethods, node: CsiMethods = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-call-'));
  const raw: string[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => { raw.push(s); } });
  const locks = new CsiLocks();
  const server = await startCsiServer({
    socketPath: join(dir, 'csi.sock'),
    log,
    services: [csiService('Controller', controller, { log, locks }), csiService('Node', node, { log, locks })],
  });
  const csi = await csiClient(server.socketPath);
  return {
    csi, server, raw,
    get lines() { return raw.map((l) => JSON.parse(l) as Record<string, unknown>); },
    close: async () => { csi.close(); await server.close(); rmSync(dir, { recursive: true, force: true }); },
  };
}

function callLines(h: Harness, method: string): Record<string, unknown>[] {
  return h.lines.filter((l) => l.msg === 'csi call' && l.method === method);
}

test('a second call on a busy volume is ABORTED at once; other volumes and later calls go through', async (t) => {
  const entered = deferred();
  const gate = deferred();
  let created = 0;
  const h = await serve({
    CreateVolume: {
      required: ['name', 'volume_capabilities'],
      locks: (r) => [volumeLockKey(r.name)],
      logIds: (r) => ({ volume: r.name }),
      handler: async (r) => {
        if (r.name === 'slow') { entered.resolve(); await gate.promise; }
        created++;
        return { volume: { volumeId: `id-${r.name}`, capacityBytes: 4096 } };
      },
    },
    DeleteVolume: { required: ['volume_id'], locks: (r) => [volumeLockKey(r.volumeId)], handler: () => ({}) },
  });
  try {
    const first = h.csi.controller.CreateVolume!({ name: 'slow', volumeCapabilities: [CAP] });
    await entered.promise;
    const second = await h.csi.controller.CreateVolume!({ name: 'slow', volumeCapabilities: [CAP] });
    t.is(second.code, grpc.status.ABORTED);
    t.regex(second.message ?? '', /already pending for volume\/slow/);
    // The same key from another method of the same table is busy too.
    t.is((await h.csi.controller.DeleteVolume!({ volumeId: 'slow' })).code, grpc.status.ABORTED);
    t.is((await h.csi.controller.CreateVolume!({ name: 'other', volumeCapabilities: [CAP] })).code, grpc.status.OK);
    gate.resolve();
    t.is(ok(await first).volume.volumeId, 'id-slow');
    t.is((await h.csi.controller.CreateVolume!({ name: 'slow', volumeCapabilities: [CAP] })).code, grpc.status.OK);
    t.is(created, 3);
    t.deepEqual(callLines(h, 'CreateVolume').map((l) => l.code), ['ABORTED', 'OK', 'OK', 'OK']);
  } finally {
    await h.close();
  }
});

test('Controller and Node calls share the locks: NodeStageVolume on a volume being deleted is ABORTED', async (t) => {
  const entered = deferred();
  const gate = deferred();
  const h = await serve(
    { DeleteVolume: { required: ['volume_id'], locks: (r) => [volumeLockKey(r.volumeId)], handler: async () => { entered.resolve(); await gate.promise; return {}; } } },
    { NodeStageVolume: { required: ['volume_id'], locks: (r) => [volumeLockKey(r.volumeId)], handler: () => ({}) } },
  );
  try {
    const del = h.csi.controller.DeleteVolume!({ volumeId: 'v1' });
    await entered.promise;
    t.is((await h.csi.node.NodeStageVolume!({ volumeId: 'v1' })).code, grpc.status.ABORTED);
    gate.resolve();
    t.is((await del).code, grpc.status.OK);
  } finally {
    await h.close();
  }
});

test('a missing required field is INVALID_ARGUMENT naming it, before the handler runs', async (t) => {
  let sideEffects = 0;
  const h = await serve({
    CreateVolume: {
      required: ['name', 'volume_capabilities', 'volume_capabilities.access_mode'],
      validate: (r) => { if (r.parameters.bad !== undefined) throw new StorageError(Code.INVALID_ARGUMENT, 'unknown parameter "bad"'); },
      locks: (r) => [volumeLockKey(r.name)],
      handler: () => { sideEffects++; return { volume: { volumeId: 'x' } }; },
    },
    ControllerModifyVolume: { required: ['volume_id', 'mutable_parameters'], handler: () => { sideEffects++; return {}; } },
  });
  try {
    const noName = await h.csi.controller.CreateVolume!({ volumeCapabilities: [CAP] });
    t.is(noName.code, grpc.status.INVALID_ARGUMENT);
    t.is(noName.message, 'name is required');
    const noCaps = await h.csi.controller.CreateVolume!({ name: 'a' });
    t.is(noCaps.code, grpc.status.INVALID_ARGUMENT);
    t.is(noCaps.message, 'volume_capabilities is required');
    const noMode = await h.csi.controller.CreateVolume!({ name: 'a', volumeCapabilities: [CAP, { block: {} }] });
    t.is(noMode.code, grpc.status.INVALID_ARGUMENT);
    t.is(noMode.message, 'volume_capabilities[1].access_mode is required');
    const badParam = await h.csi.controller.CreateVolume!({ name: 'a', volumeCapabilities: [CAP], parameters: { bad: '1' } });
    t.is(badParam.code, grpc.status.INVALID_ARGUMENT);
    // A REQUIRED map must have at least one entry.
    const emptyMap = await h.csi.controller.ControllerModifyVolume!({ volumeId: 'v', mutableParameters: {} });
    t.is(emptyMap.code, grpc.status.INVALID_ARGUMENT);
    t.is(emptyMap.message, 'mutable_parameters is required');
    t.is(sideEffects, 0);
    t.is((await h.csi.controller.CreateVolume!({ name: 'a', volumeCapabilities: [CAP] })).code, grpc.status.OK);
    t.is(sideEffects, 1);
  } finally {
    await h.close();
  }
});

test('errors become gRPC codes at the edge: StorageError codes kept, anything else INTERNAL, sync throws too', async (t) => {
  const h = await serve({
    DeleteVolume: { handler: async () => { throw new StorageError(Code.FAILED_PRECONDITION, 'volume is still staged on node-b'); } },
    ControllerGetVolume: { handler: async () => { throw new StorageError(Code.NOT_FOUND, 'no volume v9'); } },
    ControllerExpandVolume: { handler: async () => { throw new StorageError(Code.OUT_OF_RANGE, 'too big'); } },
    ListVolumes: { handler: async () => { throw new TypeError('boom'); } },
    GetCapacity: { handler: () => { throw new Error('sync boom'); } },
    ControllerGetCapabilities: { handler: () => { throw new StorageError(Code.UNAVAILABLE, 'store down'); } },
  });
  try {
    const expect: [string, grpc.status][] = [
      ['DeleteVolume', grpc.status.FAILED_PRECONDITION], ['ControllerGetVolume', grpc.status.NOT_FOUND],
      ['ControllerExpandVolume', grpc.status.OUT_OF_RANGE], ['ListVolumes', grpc.status.INTERNAL],
      ['GetCapacity', grpc.status.INTERNAL], ['ControllerGetCapabilities', grpc.status.UNAVAILABLE],
      // Left out of the table: UNIMPLEMENTED, through the wrapper (and logged).
      ['CreateSnapshot', grpc.status.UNIMPLEMENTED],
    ];
    for (const [method, code] of expect) {
      const res = await h.csi.controller[method]!({});
      t.is(res.code, code, method);
    }
    t.is((await h.csi.controller.DeleteVolume!({})).message, 'volume is still staged on node-b');
    // The server is still up and serving after every kind of failure.
    t.is((await h.csi.controller.GetCapacity!({})).code, grpc.status.INTERNAL);
    t.is(callLines(h, 'CreateSnapshot')[0]!.code, 'UNIMPLEMENTED');
    t.is(callLines(h, 'ListVolumes')[0]!.level, 50);
  } finally {
    await h.close();
  }
});

test('one log line per call with method, ids, duration and code; secrets and mount flags never logged', async (t) => {
  const h = await serve(
    {
      CreateVolume: { logIds: (r) => ({ volume: r.name }), handler: () => { throw new StorageError(Code.RESOURCE_EXHAUSTED, 'no room'); } },
      ControllerPublishVolume: { handler: () => ({ publishContext: {} }) },
    },
    { NodeStageVolume: { handler: () => ({}) } },
  );
  try {
    await h.csi.controller.CreateVolume!({
      name: 'pvc-1', secrets: { password: 'hunter2-create' },
      volumeCapabilities: [{ mount: { fsType: 'ext4', mountFlags: ['password=hunter2-flag'] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } }],
    });
    await h.csi.controller.ControllerPublishVolume!({ volumeId: 'vol-1', nodeId: 'node-a', secrets: { token: 'hunter2-publish' }, volumeCapability: CAP });
    await h.csi.node.NodeStageVolume!({ volumeId: 'vol-1', stagingTargetPath: '/s', secrets: { key: 'hunter2-stage' }, volumeCapability: CAP });

    const all = h.raw.join('');
    t.false(all.includes('hunter2'), 'a secret value reached the log');
    const create = callLines(h, 'CreateVolume');
    t.is(create.length, 1);
    t.like(create[0], { volume: 'pvc-1', code: 'RESOURCE_EXHAUSTED', error: 'no room' });
    t.is(typeof create[0]!.durationMs, 'number');
    t.like(callLines(h, 'ControllerPublishVolume')[0], { volume: 'vol-1', publishedNode: 'node-a', code: 'OK' });
    t.like(callLines(h, 'NodeStageVolume')[0], { volume: 'vol-1', code: 'OK' });
    // At debug level the request is there, with its secrets and mount flags redacted.
    const requests = h.lines.filter((l) => l.msg === 'csi request');
    t.is(requests.length, 3);
    const createReq = requests.find((l) => l.method === 'CreateVolume')!.request as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    t.is(createReq.secrets, '[redacted]');
    t.is(createReq.volumeCapabilities[0].mount.mountFlags, '[redacted]');
    t.is(createReq.name, 'pvc-1');
  } finally {
    await h.close();
  }
});

test('the handler\'s signal aborts when the client cancels the call, and its lock is released after', async (t) => {
  const entered = deferred();
  const seen = deferred<unknown>();
  let calls = 0;
  const h = await serve({
    DeleteVolume: {
      required: ['volume_id'],
      locks: (r) => [volumeLockKey(r.volumeId)],
      handler: async (_r, { signal }) => {
        if (++calls > 1) return {};
        entered.resolve();
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        seen.resolve(signal.reason);
        throw signal.reason;
      },
    },
  });
  try {
    const abort = new AbortController();
    const call = h.csi.controller.DeleteVolume!({ volumeId: 'v1' }, { signal: abort.signal });
    await entered.promise;
    abort.abort();
    t.is((await call).code, grpc.status.CANCELLED);
    const reason = await seen.promise;
    t.true(reason instanceof StorageError);
    t.is((reason as StorageError).code, Code.CANCELLED);
    // The lock was held until the handler gave up (its log line says so), then released.
    await waitFor(() => callLines(h, 'DeleteVolume').length === 1);
    t.is(callLines(h, 'DeleteVolume')[0]!.code, 'CANCELLED');
    t.is((await h.csi.controller.DeleteVolume!({ volumeId: 'v1' })).code, grpc.status.OK);
  } finally {
    await h.close();
  }
});

test('the handler\'s signal aborts when the call\'s deadline passes', async (t) => {
  const seen = deferred<unknown>();
  const h = await serve({
    ControllerExpandVolume: {
      handler: async (_r, { signal }) => {
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        seen.resolve(signal.reason);
        throw signal.reason;
      },
    },
  });
  try {
    const res = await h.csi.controller.ControllerExpandVolume!({ volumeId: 'v' }, { timeoutMs: 300 });
    t.is(res.code, grpc.status.DEADLINE_EXCEEDED);
    const reason = (await seen.promise) as StorageError;
    // The client's deadline timer usually resets the stream just before the server's own
    // fires: the handler sees a cancel then. Either way its signal aborts.
    t.true(reason instanceof StorageError);
    t.true([Code.DEADLINE_EXCEEDED, Code.CANCELLED].includes(reason.code));
    await waitFor(() => callLines(h, 'ControllerExpandVolume').length === 1);
  } finally {
    await h.close();
  }
});

/** Waits for a condition the server reaches on its own (an event, not a duration). */
async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setImmediate(r));
}
