/**
 * The CSI Node service's own decisions (src/csi/node-server.ts) over a real CSI socket, with
 * a fake stager and volume views: how a volume's publication (ControllerPublishVolume)
 * decides NodeStageVolume, and how Stage and Unstage wait for the recovery of a restarted
 * cairnd. Staging itself (devices, mounts) is tested on real ones in
 * test/integration/stager.test.ts and csi-node*.test.ts.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VolumeView } from '../../src/cluster/volume-views.js';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { CsiLocks } from '../../src/csi/csi-locks.js';
import { startCsiServer, type CsiServer } from '../../src/csi/csi-server.js';
import { nodeService, publicationFor, type NodeStager } from '../../src/csi/node-server.js';
import type { StageRequest, StageResult } from '../../src/engine/stager.js';
import { csiClient, codeName, ok, type CsiMessage, type CsiTestClient } from '../helpers/csi-client.js';

const log = silentLogger();
const NODE = 'node-a';

type Publication = VolumeView['published'];

/** A stager that records what it is asked to stage and unstage. */
class FakeStager implements NodeStager {
  readonly staged: { volume: string; request: Omit<StageRequest, 'signal'> }[] = [];
  readonly unstaged: string[] = [];
  get(): undefined {
    return undefined;
  }
  async stage(volume: string, request: StageRequest): Promise<StageResult> {
    const { signal: _signal, ...rest } = request;
    this.staged.push({ volume, request: rest });
    return { devicePath: '/dev/loop9', method: 'nbdfuse-loop', stagingPath: request.stagingPath };
  }
  async unstage(volume: string): Promise<void> {
    this.unstaged.push(volume);
  }
  async expand(): Promise<{ capacityBytes: number }> {
    throw new StorageError(Code.FAILED_PRECONDITION, 'not staged');
  }
}

interface Fixture {
  csi: CsiTestClient;
  stager: FakeStager;
  staging: string;
  /** Sets a volume's publication (the volume exists from then on). */
  publish(volume: string, published: Publication): void;
}

async function fixture(t: { teardown(fn: () => unknown): void }, recovery?: Promise<void>): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-node-'));
  const stager = new FakeStager();
  const views = new Map<string, Publication>();
  const volumes = {
    async get(name: string): Promise<VolumeView> {
      const published = views.get(name);
      if (!published) throw new StorageError(Code.NOT_FOUND, `volume "${name}" does not exist`);
      return { name, published } as unknown as VolumeView;
    },
  };
  const server: CsiServer = await startCsiServer({
    socketPath: join(dir, 'csi.sock'), log,
    services: [nodeService({ nodeName: NODE, zone: '', maxVolumesPerNode: 0, stager, volumes, log, locks: new CsiLocks(), ...(recovery ? { recovery } : {}) })],
  });
  const csi = await csiClient(server.socketPath);
  t.teardown(async () => {
    csi.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { csi, stager, staging: dir, publish: (volume, published) => views.set(volume, published) };
}

const mountCap = (mode = 'SINGLE_NODE_WRITER'): CsiMessage => ({ mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode } });

test('a volume published to another node is FAILED_PRECONDITION naming that node, and nothing is staged', async (t) => {
  const f = await fixture(t);
  f.publish('pvc-1', [{ nodeId: 'node-b', readonly: false }]);
  const res = await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-1', stagingTargetPath: f.staging, volumeCapability: mountCap() });
  t.is(codeName(res), 'FAILED_PRECONDITION');
  t.regex(res.message ?? '', /published to node "node-b", not to this node "node-a"/);
  t.deepEqual(f.stager.staged, []);
});

test('published read-only here: staged read-only, also under a writer access mode; published read-write: as the mode says', async (t) => {
  const f = await fixture(t);
  f.publish('pvc-ro', [{ nodeId: NODE, readonly: true }]);
  f.publish('pvc-rw', [{ nodeId: NODE, readonly: false }]);
  ok(await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-ro', stagingTargetPath: f.staging, volumeCapability: mountCap('SINGLE_NODE_WRITER') }));
  ok(await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-rw', stagingTargetPath: f.staging, volumeCapability: mountCap('SINGLE_NODE_WRITER') }));
  ok(await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-rw', stagingTargetPath: f.staging, volumeCapability: mountCap('SINGLE_NODE_READER_ONLY') }));
  t.deepEqual(f.stager.staged.map((s) => [s.volume, s.request.readonly]), [['pvc-ro', true], ['pvc-rw', false], ['pvc-rw', true]]);
});

test('a volume published nowhere is staged (cairnctl volumes, a CO without attach); an unknown one is NOT_FOUND', async (t) => {
  const f = await fixture(t);
  f.publish('pvc-free', []);
  ok(await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-free', stagingTargetPath: f.staging, volumeCapability: mountCap() }));
  t.deepEqual(f.stager.staged.map((s) => [s.volume, s.request.readonly]), [['pvc-free', false]]);
  t.is(codeName(await f.csi.node.NodeStageVolume!({ volumeId: 'pvc-none', stagingTargetPath: f.staging, volumeCapability: mountCap() })), 'NOT_FOUND');
});

test('publicationFor: read-only entries elsewhere are named with their mode; this node among several read-only ones may stage', (t) => {
  const err = t.throws(() => publicationFor({ name: 'v', published: [{ nodeId: 'b', readonly: true }, { nodeId: 'c', readonly: true }] }, 'a'), { instanceOf: StorageError });
  t.is(err.code, Code.FAILED_PRECONDITION);
  t.regex(err.message, /"b" \(read-only\), "c" \(read-only\)/);
  t.deepEqual(publicationFor({ name: 'v', published: [{ nodeId: 'b', readonly: true }, { nodeId: 'a', readonly: true }] }, 'a'), { readonly: true });
});

test('before the restarted cairnd recovered its staged volumes, Stage and Unstage wait; a call whose deadline passes first stages nothing', async (t) => {
  let recovered!: () => void;
  const f = await fixture(t, new Promise<void>((resolve) => { recovered = resolve; }));
  f.publish('pvc-1', []);
  f.publish('pvc-2', []);
  const stage = { volumeId: 'pvc-1', stagingTargetPath: f.staging, volumeCapability: mountCap() };
  const early = await f.csi.node.NodeStageVolume!(stage, { timeoutMs: 300 });
  t.is(codeName(early), 'DEADLINE_EXCEEDED');
  t.is(codeName(await f.csi.node.NodeGetInfo!({})), 'OK', 'calls that touch no staging do not wait');

  const staging = f.csi.node.NodeStageVolume!(stage);
  const unstaging = f.csi.node.NodeUnstageVolume!({ volumeId: 'pvc-2', stagingTargetPath: f.staging });
  recovered();
  // The waiting stage got the volume lock, so the early call's handler had returned: it staged nothing.
  ok(await staging);
  ok(await unstaging);
  t.deepEqual(f.stager.staged.map((s) => s.volume), ['pvc-1']);
  t.deepEqual(f.stager.unstaged, ['pvc-2']);
});
