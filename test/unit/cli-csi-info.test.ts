/**
 * `cairnctl csi info` against a real CSI server on a unix socket (src/csi/csi-server.ts with
 * the real Identity service), with a scripted Node service instead of a daemon's: what the
 * command prints, and its exit code when the plugin is not ready or not there.
 */
import test from 'ava';
import { execa } from 'execa';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CsiInfo } from '../../src/cli/csi-info.js';
import { silentLogger } from '../../src/common/log.js';
import { csiService } from '../../src/csi/csi-call.js';
import { CsiLocks } from '../../src/csi/csi-locks.js';
import { startCsiServer, type CsiServer } from '../../src/csi/csi-server.js';
import { identityService } from '../../src/csi/identity-server.js';

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const log = silentLogger();

/** A Node service that answers NodeGetInfo and NodeGetCapabilities as a node "node-a" in zone "z1" would. */
function scriptedNode(): ReturnType<typeof csiService> {
  return csiService('Node', {
    NodeGetInfo: { handler: () => ({ nodeId: 'node-a', maxVolumesPerNode: 0, accessibleTopology: { segments: { 'topology.cairn.dev/node': 'node-a', 'topology.cairn.dev/zone': 'z1' } } }) },
    NodeGetCapabilities: { handler: () => ({ capabilities: [{ rpc: { type: 'STAGE_UNSTAGE_VOLUME' } }, { rpc: { type: 'GET_VOLUME_STATS' } }] }) },
  }, { log, locks: new CsiLocks() });
}

async function serve(t: { teardown: (fn: () => Promise<void> | void) => void }, ready: boolean, withNode: boolean): Promise<CsiServer> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-info-'));
  const services = [identityService({ log, ready: () => ready }), ...(withNode ? [scriptedNode()] : [])];
  const server = await startCsiServer({ socketPath: join(dir, 'csi.sock'), log, services });
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return server;
}

async function cairnctl(args: string[]): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  const r = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', ...args], { reject: false, env: { CAIRN_CSI_SOCKET: '' } });
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
}

test('csi info -o json: the plugin, readiness, capabilities, and the node where the Node service is served', async (t) => {
  const server = await serve(t, true, true);
  const r = await cairnctl(['-o', 'json', 'csi', 'info', '--csi-socket', server.socketPath]);
  t.is(r.exitCode, 0, r.stderr);
  const info = JSON.parse(r.stdout) as CsiInfo;
  t.deepEqual(info, {
    socket: server.socketPath, name: 'csi.cairn.dev', vendorVersion: VERSION, ready: true,
    pluginCapabilities: ['CONTROLLER_SERVICE', 'VOLUME_ACCESSIBILITY_CONSTRAINTS', 'GROUP_CONTROLLER_SERVICE', 'VolumeExpansion.ONLINE'],
    controllerCapabilities: null,
    node: { nodeId: 'node-a', maxVolumesPerNode: 0, topology: { 'topology.cairn.dev/node': 'node-a', 'topology.cairn.dev/zone': 'z1' }, capabilities: ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS'] },
  });
});

test('csi info as a table, with a unix:// endpoint as kubelet writes it; services not served say so', async (t) => {
  const server = await serve(t, true, false);
  const r = await cairnctl(['csi', 'info', '--csi-socket', `unix://${server.socketPath}`]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`^Socket: +${server.socketPath}$`, 'm'));
  t.regex(r.stdout, new RegExp(`^Plugin: +csi\\.cairn\\.dev ${VERSION.replace(/\./g, '\\.')}$`, 'm'));
  t.regex(r.stdout, /^Ready: +yes$/m);
  t.regex(r.stdout, /^Controller: +not served$/m);
  t.regex(r.stdout, /^Node: +not served$/m);
});

test('csi info exits 1 while Probe says not ready, after printing what it found', async (t) => {
  const server = await serve(t, false, true);
  const r = await cairnctl(['csi', 'info', '--csi-socket', server.socketPath]);
  t.is(r.exitCode, 1);
  t.regex(r.stdout, /^Ready: +no$/m);
  t.regex(r.stderr, /not ready yet \(Probe\).*\(UNAVAILABLE\)/);
});

test('csi info on a path where nothing serves names the socket and the flag (UNAVAILABLE, exit 1)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-csi-info-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'csi.sock');
  const r = await cairnctl(['csi', 'info', '--csi-socket', socket]);
  t.is(r.exitCode, 1);
  t.is(r.stdout, '');
  t.is(r.stderr, `cairnctl: cannot reach a CSI plugin at ${socket}: is cairnd running? (no socket there; set --csi-socket or CAIRN_CSI_SOCKET) (UNAVAILABLE)`);
});
