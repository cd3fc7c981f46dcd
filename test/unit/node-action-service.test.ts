/**
 * The engine service's node-scoped actions (cairn.engine.v1 RunCommand, StopCommand,
 * FreezeFilesystem, ThawFilesystem, RenewLease) over real gRPC on loopback: a coordinator's
 * `command` runs on the serving node as a real process (exit code, output tails, the
 * volume's environment), a background one held until it is ended; a volume not staged there
 * is FAILED_PRECONDITION; a freeze or a command whose lease is not renewed is undone by the
 * node by itself. The filesystem freeze is a fake here (FIFREEZE runs in
 * test/integration/remote-rule.test.ts).
 */
import * as grpc from '@grpc/grpc-js';
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { engineService, engineServiceConstructor } from '../../src/engine/engine-service.js';
import { unaryCall } from '../../src/rpc/unary-call.js';
import { runToEnd, startHeld } from '../../src/snapshot/action-session.js';
import type { FrozenFs, FsFreezer, RuleContext } from '../../src/snapshot/action-transport.js';
import { NodeCommandTransport } from '../../src/snapshot/node-actions.js';
import { NodeActionHost, nodeActionHandlers } from '../../src/snapshot/node-action-service.js';
import { RemoteNodeActions, RoutedActions } from '../../src/snapshot/remote-actions.js';
import type { RuleAction } from '../../src/snapshot/snapshot-rule.js';
import type { StagedVolumeRecord } from '../../src/store/staged-volume-record.js';
import { waitFor } from '../helpers/cluster.js';

const log = silentLogger();
const staged = {
  volume: 'db', volumeId: 'vol-1', state: 'staged', stagingPath: '/staging/db', devicePath: '/dev/loop9', accessType: 'mount',
} as unknown as StagedVolumeRecord;

/** Counts freezes and thaws; `nextThaw()` settles at the next thaw. */
class FakeFreezer implements FsFreezer {
  freezes = 0;
  thaws = 0;
  private onThaw = (): void => undefined;
  nextThaw(): Promise<void> {
    return new Promise<void>((resolve) => { this.onThaw = resolve; });
  }
  freeze(ctx: RuleContext): Promise<FrozenFs> {
    if (ctx.volume !== 'db') return Promise.reject(new StorageError(Code.FAILED_PRECONDITION, `volume "${ctx.volume}" is not staged on node node-b`));
    this.freezes++;
    return Promise.resolve({ target: '/staging/db', thaw: () => { this.thaws++; this.onThaw(); return Promise.resolve(); } });
  }
}

interface Fixture { client: grpc.Client; freezer: FakeFreezer; routed: RoutedActions }

async function serve(t: ExecutionContext, leaseMs: number): Promise<Fixture> {
  const freezer = new FakeFreezer();
  const command = new NodeCommandTransport({ nodeName: 'node-b', staged: (v) => (v === 'db' ? staged : undefined) });
  const host = new NodeActionHost({ command, freezer, log });
  const server = new grpc.Server();
  const svc = engineService(() => { throw new StorageError(Code.FAILED_PRECONDITION, 'no engine here'); }, log, nodeActionHandlers(() => host, log));
  server.addService(svc.definition, svc.handlers);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  const Ctor = engineServiceConstructor();
  const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
  });
  const remote = new RemoteNodeActions('node-b', client, log, leaseMs);
  const routed = new RoutedActions({ nodeName: 'controller-0', remote: () => Promise.resolve(remote) });
  return { client, freezer, routed };
}

const ctx: RuleContext = { volume: 'db', volumeId: 'vol-1', snapshot: 'snap-1', engineNode: 'node-b' };
const action = (command: string[], more: Partial<RuleAction> = {}): RuleAction =>
  ({ kind: 'command', command, timeoutSeconds: 10, onError: 'Fail', runIn: 'one', background: false, ...more });

test('a command runs on the staging node: its exit code, output tails and the volume\'s environment come back', async (t) => {
  const { routed } = await serve(t, 5000);
  const a = action(['sh', '-c', 'echo "$CAIRN_VOLUME $CAIRN_SNAPSHOT $CAIRN_STAGING_PATH"; echo cannot flush >&2; exit 3']);
  const targets = await routed.targets(a, ctx, new AbortController().signal);
  t.deepEqual(targets, ['node-b']);
  const o = await runToEnd({ transport: routed, action: a, label: 'flush', phase: 'pre', index: 0, target: 'node-b', ctx });
  t.is(o.exitCode, 3);
  t.is(o.status, 'failed');
  t.is(o.stdoutTail.trim(), 'db snap-1 /staging/db');
  t.is(o.stderrTail.trim(), 'cannot flush');
  t.is(o.error?.code, 'FAILED_PRECONDITION');
});

test('a volume not staged on that node, or a program not installed there: FAILED_PRECONDITION saying so', async (t) => {
  const { routed } = await serve(t, 5000);
  const other = await runToEnd({ transport: routed, action: action(['true']), label: 'x', phase: 'pre', index: 0, target: 'node-b', ctx: { ...ctx, volume: 'idle' } });
  t.is(other.error?.code, 'FAILED_PRECONDITION');
  t.regex(other.error?.message ?? '', /not staged on node node-b/);
  const missing = await runToEnd({ transport: routed, action: action(['no-such-program-xyz']), label: 'x', phase: 'pre', index: 0, target: 'node-b', ctx });
  t.is(missing.error?.code, 'FAILED_PRECONDITION');
  t.regex(missing.error?.message ?? '', /not installed on node node-b/);
});

test('a background command is held across renewals until it is ended; a timeout kills it', async (t) => {
  const { routed } = await serve(t, 300);
  const dir = mkdtempSync(join(tmpdir(), 'cairn-held-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const marker = join(dir, 'survived');
  const held = await startHeld({
    transport: routed, action: action(['sh', '-c', `echo READY; sleep 1; touch ${marker}; exec sleep 600.417`], { background: true }), label: 'lock', phase: 'pre', index: 0, target: 'node-b', ctx,
  });
  if (!('end' in held)) return t.fail(`not held: ${held.error?.message}`);
  // The marker appears once the command has lived more than three leases: the renewals kept it.
  await waitFor(() => existsSync(marker), Boolean, 'the held command to outlive three leases', 10_000, 50);
  t.true(held.alive());
  const ended = await held.end(false, 1000);
  t.is(ended.status, 'succeeded');
  const slow = await runToEnd({ transport: routed, action: action(['sleep', '600.419'], { timeoutSeconds: 1 }), label: 'slow', phase: 'pre', index: 0, target: 'node-b', ctx });
  t.is(slow.error?.code, 'DEADLINE_EXCEEDED');
});

test('a freeze is thawed by its coordinator; one whose lease is not renewed is thawed by the node, and a command is killed', async (t) => {
  const { client, freezer, routed } = await serve(t, 300);
  const frozen = await routed.freeze(ctx, new AbortController().signal);
  t.is(frozen.target, 'node-b:/staging/db');
  await frozen.thaw();
  t.is(freezer.thaws, 1);
  // A coordinator that goes away: nothing renews the lease.
  const thawedByNode = freezer.nextThaw();
  const { mountPoint } = await unaryCall<{ mountPoint: string }>(client, 'FreezeFilesystem', { target: { volume: 'db' }, leaseId: 'gone-1', leaseMs: 200 }, 5000);
  t.is(mountPoint, '/staging/db');
  await thawedByNode;
  t.is(freezer.thaws, 2);
  t.deepEqual(await unaryCall(client, 'ThawFilesystem', { leaseId: 'gone-1' }, 5000), { leaseExpired: true });
  await t.throwsAsync(unaryCall(client, 'RenewLease', { leaseId: 'gone-1', leaseMs: 200 }, 5000), { message: /has ended/ });

  const run = (client as unknown as Record<string, (req: object) => grpc.ClientReadableStream<{ end?: { signal: string } }>>).RunCommand!;
  const call = run.call(client, { target: { volume: 'db' }, command: ['sleep', '600.421'], leaseId: 'gone-2', leaseMs: 200 });
  const end = await new Promise<{ signal: string }>((resolve, reject) => {
    call.on('data', (m: { end?: { signal: string } }) => m.end && resolve(m.end));
    call.on('error', reject);
  });
  t.is(end.signal, 'SIGKILL');
});
