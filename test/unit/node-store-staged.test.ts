/** The node store's records of staged volumes (migration 4): written, replaced, listed, kept across a reopen, deleted. */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VolumeId } from '../../src/common/ids.js';
import { silentLogger } from '../../src/common/log.js';
import { NodeStore } from '../../src/store/node-store.js';
import type { StagedVolumeRecord } from '../../src/store/staged-volume-record.js';

const log = silentLogger();

function record(volume: string, patch: Partial<StagedVolumeRecord> = {}): StagedVolumeRecord {
  return {
    volume, volumeId: `vol-${volume}` as VolumeId, stagingPath: `/var/lib/kubelet/staging/${volume}`, accessType: 'mount', fsType: 'ext4',
    mountFlags: ['noatime', 'discard'], readonly: false, devicePath: '', attachMethod: '', attachState: {}, state: 'staging',
    updatedAt: new Date().toISOString(), ...patch,
  };
}

test('a staged-volume record is written, replaced at each step, kept across a reopen and deleted', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-staged-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'node.db');
  let store = NodeStore.open(path, log);
  store.putStagedVolume(record('b', { accessType: 'block', fsType: '', mountFlags: [] }));
  store.putStagedVolume(record('a'));
  const staged = record('a', {
    devicePath: '/dev/loop3', attachMethod: 'nbdfuse-loop', attachState: { socketPath: '/run/a.sock', fuse: { dir: '/run/fuse-a', pid: 42 } }, state: 'staged', readonly: true,
  });
  store.putStagedVolume(staged);
  store.close();

  store = NodeStore.open(path, log);
  t.teardown(() => store.close());
  t.deepEqual(store.getStagedVolume('a'), staged);
  t.deepEqual(store.listStagedVolumes().map((r) => [r.volume, r.accessType, r.state]), [['a', 'mount', 'staged'], ['b', 'block', 'staging']]);
  store.deleteStagedVolume('a');
  store.deleteStagedVolume('a');
  t.is(store.getStagedVolume('a'), undefined);
  t.is(store.listStagedVolumes().length, 1);
});
