/**
 * Log fields have one meaning each and are bound once: `volume` is the volume's name,
 * `volumeId` its id, `node` the node whose cairnd printed the line, `replicaNode` the node
 * of the replica a line is about (docs/architecture.md, "Observability"). The lines of a
 * real engine (started by the cluster volume service on a single node, and an engine of
 * two replicas that rebuilds and reconciles) are captured from pino and checked for
 * duplicate keys.
 */
import test, { type ExecutionContext } from 'ava';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { ClusterVolumeService } from '../../src/cluster/cluster-volume-service.js';
import { NodeRegistry } from '../../src/cluster/node-registry.js';
import { PeerConnector, localControl } from '../../src/cluster/replica-connector.js';
import { openClusterStore } from '../../src/cluster/store/open-cluster-store.js';
import { getVolumeDoc } from '../../src/cluster/volume-doc.js';
import type { NodeId, ReplicaId, VolumeId } from '../../src/common/ids.js';
import { createLogger, type Logger } from '../../src/common/log.js';
import type { DirtyMapStore, EngineControl, ReplicaConnector, ReplicaIo, VolumeReplicaEntry } from '../../src/engine/engine-types.js';
import { ExportManager } from '../../src/engine/export-manager.js';
import { LocalReplicaIo } from '../../src/engine/replica-io.js';
import { VolumeEngine } from '../../src/engine/volume-engine.js';
import { FileBackend } from '../../src/pool/file-backend.js';
import { ReplicaManager } from '../../src/replica/replica-manager.js';
import { NodeStore } from '../../src/store/node-store.js';
import { waitFor } from '../helpers/cluster.js';

const MiB = 1 << 20;

/**
 * A pino logger writing into an array of raw lines, as the daemon writes them, with `node`
 * bound at the root as cairnd binds its own node (createLogger's `node`); `logged(msg)`
 * resolves at the first such line.
 */
function capture(node: string): { log: Logger; lines: string[]; logged(msg: string): Promise<void> } {
  const lines: string[] = [];
  const waiters: { msg: string; resolve(): void }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l !== '')) {
        lines.push(line);
        const msg = (JSON.parse(line) as { msg?: string }).msg;
        for (const w of waiters.filter((x) => x.msg === msg)) w.resolve();
      }
      done();
    },
  });
  const logged = (msg: string): Promise<void> => new Promise((resolve) => {
    if (lines.some((l) => (JSON.parse(l) as { msg?: string }).msg === msg)) resolve();
    else waiters.push({ msg, resolve });
  });
  return { log: pino({ level: 'debug' }, stream).child({ node }), lines, logged };
}

/** Keys that occur twice in one object of a JSON text (JSON.parse would keep only the last). */
function duplicateKeys(text: string): string[] {
  let i = 0;
  const dups: string[] = [];
  const ws = (): void => { while (/\s/.test(text[i] ?? '')) i++; };
  const str = (): string => {
    const start = i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      for (ws(); text[i] !== '}'; ws()) {
        if (text[i] === ',') { i++; ws(); }
        const key = str();
        if (seen.has(key)) dups.push(key);
        seen.add(key);
        ws();
        i++; // ':'
        value();
      }
      i++;
    } else if (c === '[') {
      i++;
      for (ws(); text[i] !== ']'; ws()) {
        if (text[i] === ',') i++;
        value();
      }
      i++;
    } else if (c === '"') {
      str();
    } else {
      while (i < text.length && !/[,}\]\s]/.test(text[i]!)) i++;
    }
  };
  value();
  return dups;
}

/** How many times the text names a `node` key (at any depth). */
const nodeKeys = (line: string): number => line.split('"node":').length - 1;

/**
 * Every line: no duplicate keys; `node` once, naming the node whose daemon printed it;
 * `volume` is the name and `volumeId` the id wherever they appear.
 */
function checkLines(t: ExecutionContext, lines: readonly string[], node: string, name: string, id: string): Record<string, unknown>[] {
  const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(lines.filter((l) => duplicateKeys(l).length > 0), [], 'log lines with duplicate keys');
  t.deepEqual(lines.filter((l) => nodeKeys(l) !== 1), [], 'log lines that do not name `node` exactly once');
  t.deepEqual(parsed.filter((o) => o.node !== node).map((o) => o.msg), [], '`node` is not the node that printed the line');
  t.deepEqual(parsed.filter((o) => 'volume' in o && o.volume !== name).map((o) => o.msg), [], '`volume` is not the name');
  t.deepEqual(parsed.filter((o) => 'volumeId' in o && o.volumeId !== id).map((o) => o.msg), [], '`volumeId` is not the id');
  return parsed;
}

/** The engine's line with that message (the replica service logs some of the same under `component`). */
const engineLine = (msg: string) => (o: Record<string, unknown>): boolean => o.msg === msg && !('component' in o);

test('the duplicate-key check finds a repeated key', (t) => {
  t.deepEqual(duplicateKeys('{"volume":"db","x":{"a":1,"a":[1,{"b":"}"}]},"volume":"vol-1"}'), ['a', 'volume']);
  t.deepEqual(duplicateKeys('{"volume":"db","volumeId":"vol-1","err":{"message":"a \\" b"}}'), []);
});

test('cairnd\'s root logger names its own node on every line, once, children included', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-logs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'cairnd.log');
  const fd = openSync(file, 'w');
  const log = createLogger({ level: 'info', format: 'json', destination: fd, node: 'node-a' });
  log.info({ role: 'all' }, 'cairnd started');
  log.child({ component: 'peers' }).info({ replica: 'rep-1', replicaNode: 'node-b' }, 'replica left the I/O path; faulting it');
  // The destination writes asynchronously: wait for both lines to reach the file.
  const lines = await waitFor(() => readFileSync(file, 'utf8').split('\n').filter((l) => l !== ''), (ls) => ls.length === 2, 'two log lines', 10_000, 20);
  closeSync(fd);
  t.deepEqual(lines.map(nodeKeys), [1, 1], 'each line names `node` once');
  const [root, child] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  t.like(root, { node: 'node-a', msg: 'cairnd started' });
  t.like(child, { node: 'node-a', component: 'peers', replica: 'rep-1', replicaNode: 'node-b' });
});

test('an engine started by the volume service logs volume (name) and volumeId (id) once each', async (t) => {
  const { log, lines } = capture('node-a');
  const dir = mkdtempSync(join(tmpdir(), 'cairn-logs-'));
  const nodeId = 'node-a' as NodeId;
  const store = NodeStore.open(join(dir, 'node.db'), log);
  const pool = await FileBackend.open({ dir: join(dir, 'pool'), log });
  const cluster = openClusterStore({ cluster: 'logs', etcdEndpoints: [], dataDir: dir, log });
  const manager = new ReplicaManager({ pool, store, log: log.child({ component: 'replica' }) });
  const connector = new PeerConnector({ nodeId, manager, store: cluster, tls: { insecure: true }, log: log.child({ component: 'peers' }) });
  const exports = new ExportManager(join(dir, 'nbd'), log.child({ component: 'nbd' }));
  const registry = new NodeRegistry(cluster, { ttlMs: 10_000, log: log.child({ component: 'registry' }) });
  t.teardown(async () => {
    await registry.close();
    connector.close();
    await manager.close();
    await cluster.close();
    store.close();
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await registry.register({ nodeId, name: 'node-a', peerAddress: '', labels: {}, capacity: { totalBytes: 1 << 30, freeBytes: 1 << 30 }, version: 'test' });
  const volumes = new ClusterVolumeService({
    nodeId, clusterName: 'logs', store: cluster, pool, connector, exports, dirtyMaps: store.dirtyMaps(), election: undefined,
    defaultReplicas: 1, replicaTimeoutMs: 8000, rebuildRateBytesPerSec: 0, log,
  });
  await volumes.create('db', 16 * MiB);
  await volumes.export('db');
  await volumes.unexport('db');
  await volumes.shutdown();
  const id = (await getVolumeDoc(cluster, 'db'))!.doc.id;
  const parsed = checkLines(t, lines, 'node-a', 'db', id);
  t.like(parsed.find((o) => o.msg === 'node registered'), { node: 'node-a' }, 'the registry\'s line names this node once');
  for (const msg of ['volume engine started', 'volume engine closed']) {
    const line = parsed.find(engineLine(msg));
    t.like(line, { volume: 'db', volumeId: id }, msg);
  }
});

test('an engine that rebuilds and reconciles logs volume (name), volumeId (id), its node and the replica\'s node once each', async (t) => {
  // One process plays both nodes here: every line is node-0's, the engine's node.
  const { log, lines, logged } = capture('node-0');
  const id = 'vol-0123' as VolumeId;
  const dirs: string[] = [];
  const nodes: { nodeId: NodeId; store: NodeStore; pool: FileBackend; manager: ReplicaManager }[] = [];
  t.teardown(async () => {
    for (const n of nodes) {
      await n.manager.close();
      n.store.close();
      await n.pool.close();
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const replicas: VolumeReplicaEntry[] = [];
  for (let i = 0; i < 2; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-logs-'));
    dirs.push(dir);
    const nodeId = `node-${i}` as NodeId;
    const store = NodeStore.open(join(dir, 'node.db'), log);
    const pool = await FileBackend.open({ dir: join(dir, 'pool'), log });
    const manager = new ReplicaManager({ pool, store, log: log.child({ component: 'replica' }) });
    const replicaId = `rep-${i}` as ReplicaId;
    await manager.create({ replicaId, volumeId: id }, 16 * MiB, 1, i === 0);
    nodes.push({ nodeId, store, pool, manager });
    replicas.push({ id: replicaId, nodeId, state: i === 0 ? 'in-sync' : 'faulted', since: new Date().toISOString() });
  }
  const manager = (nodeId: NodeId): ReplicaManager => nodes.find((n) => n.nodeId === nodeId)!.manager;
  const connector: ReplicaConnector = {
    async openIo(volumeId: VolumeId, entry: VolumeReplicaEntry, epoch: number): Promise<ReplicaIo> {
      const replica = await manager(entry.nodeId).open({ replicaId: entry.id, volumeId });
      replica.admitEpoch(epoch);
      return new LocalReplicaIo(replica, epoch, entry.nodeId);
    },
    async control(nodeId: NodeId) { return localControl(manager(nodeId)); },
  };
  const control: EngineControl = {
    async markFaulted() {},
    async markRebuilding() {},
    async markInSync() {},
  };
  const maps = new Map<string, { regionBytes: number; bits: Buffer }>();
  const dirtyMaps: DirtyMapStore = {
    load: (v, r) => maps.get(`${v}/${r}`),
    save: (v, r, regionBytes, bits) => void maps.set(`${v}/${r}`, { regionBytes, bits: Buffer.from(bits) }),
    delete: (v, r) => void maps.delete(`${v}/${r}`),
  };
  const engine = await VolumeEngine.start({
    volumeId: id, name: 'db', sizeBytes: 16 * MiB, regionBytes: MiB, epoch: 2, replicas, localNodeId: 'node-0' as NodeId,
    connector, control, dirtyMaps, reconnectIntervalMs: 50, log,
  });
  await engine.write(0, Buffer.alloc(4096, 7), false);
  await logged('replica rebuilt; it rejoined the in-sync set');
  await engine.reconcile();
  await engine.close();
  const parsed = checkLines(t, lines, 'node-0', 'db', id);
  for (const msg of ['replica rebuild starting', 'replica rebuilt; it rejoined the in-sync set']) {
    t.like(parsed.find(engineLine(msg)), { node: 'node-0', replica: 'rep-1', replicaNode: 'node-1' }, msg);
  }
  for (const msg of ['volume engine started', 'replica rebuild copying', 'replica rebuild finished', 'reconciling in-sync replicas after an unclean engine stop', 'volume engine closed']) {
    t.like(parsed.find(engineLine(msg)), { volume: 'db', volumeId: id, epoch: 2 }, msg);
  }
});
