/**
 * CSI benchmark (issue 10): the latency kubelet and the sidecars see on cairnd's CSI
 * socket, measured with a real gRPC client (test/helpers/csi-client.ts) against real
 * daemons of the compiled dist/, one setup at a time (bench/lib/csi-targets.ts): a single
 * cairnd on the embedded store, one on a real etcd, and two on etcd with 2-replica volumes.
 *
 * 1. CreateVolume: N sequential calls, then rounds of M concurrent ones (each a distinct
 *    name), each batch followed by DeleteVolume of all of it (timed the same way). The
 *    reference peer is the same daemon's cairnctl API create/delete (the gRPC API cairnctl
 *    uses) on the same volumes, interleaved batch by batch: the ratio is the CSI layer's
 *    own cost. One untimed create and delete on each path warms the channels first.
 * 2. NodeStageVolume + NodePublishVolume of K ext4 mount volumes and K raw block volumes
 *    (on a kernel without nbd: nbdfuse + loop), then NodeUnpublish, NodeUnstage and
 *    DeleteVolume of each. The reference peer, interleaved volume by volume, is plain
 *    Linux on a sparse file of the same size (bench/lib/plain-stage.ts: losetup, mkfs.ext4,
 *    mount, bind mount; for block losetup and a bind of the device node).
 *
 * p50/p99 are nearest-rank percentiles (the p99 of 20 samples is the slowest). The goal
 * lines of the issue are printed with the figures: CreateVolume p99 under 200 ms with 20
 * concurrent calls, stage+publish under 1 s (judged on the p99). Needs root, etcd, FUSE,
 * nbdfuse, nbdkit, losetup and mkfs.ext4. Everything it makes (daemons, etcd, mounts, loop
 * devices, nbdfuse processes, temp dirs) is removed at the end, on failure and on Ctrl-C.
 *
 *   npm run build && npm run bench:csi -- [--targets embedded,etcd,etcd-rf2] [--sequential 100]
 *       [--concurrent 20] [--rounds 3] [--stage-volumes 10] [--size-mib 1024]
 *       [--parts create,stage] [--quick] [--json OUT]
 *
 * Each flag has an env var: BENCH_TARGETS, BENCH_SEQUENTIAL, BENCH_CONCURRENT, BENCH_ROUNDS,
 * BENCH_STAGE_VOLUMES, BENCH_SIZE_MIB, BENCH_PARTS, BENCH_JSON. --quick changes the defaults
 * only: 20 sequential, 1 round of 20 concurrent, 3 volumes of each type, embedded and etcd.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { findMount } from '../src/engine/mounter.js';
import { codeName, ok, type CsiMessage } from '../test/helpers/csi-client.js';
import { etcdMissingReason } from '../test/helpers/etcd.js';
import { has } from '../test/helpers/run.js';
import { sweepAttachments } from './lib/attach-sweep.js';
import { checkBuild } from './lib/cairnd.js';
import { startTarget, TARGET_KINDS, type CsiTarget, type TargetKind } from './lib/csi-targets.js';
import { formatMs, summarize, timed } from './lib/latency.js';
import { loadAverage, machineFacts, printTable } from './lib/machine.js';
import { plainCreate, plainDelete, plainPublish, plainStage, plainUnpublish, plainUnstage, type PlainVolume } from './lib/plain-stage.js';

const MiB = 2 ** 20;
const CREATE_GOAL_MS = 200;
const STAGE_GOAL_MS = 1000;
const MOUNT_CAP: CsiMessage = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
const BLOCK_CAP: CsiMessage = { block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

interface Options {
  targets: TargetKind[];
  sequential: number;
  concurrent: number;
  rounds: number;
  stageVolumes: number;
  sizeBytes: number;
  parts: Set<string>;
  json: string | undefined;
}

function options(): Options {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      targets: { type: 'string' }, sequential: { type: 'string' }, concurrent: { type: 'string' }, rounds: { type: 'string' },
      'stage-volumes': { type: 'string' }, 'size-mib': { type: 'string' }, parts: { type: 'string' },
      quick: { type: 'boolean', default: false }, json: { type: 'string' },
    },
  });
  // A flag, else its env var, else the default (--quick changes only the defaults).
  const q = values.quick;
  const pick = (flag: string | undefined, envValue: string | undefined, normal: string, quick: string): string => flag ?? envValue ?? (q ? quick : normal);
  const count = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a whole number of at least 1, got "${v}"`);
    return n;
  };
  const targets = pick(values.targets, env.BENCH_TARGETS, TARGET_KINDS.join(','), 'embedded,etcd').split(',');
  const unknown = targets.filter((k) => !(TARGET_KINDS as readonly string[]).includes(k));
  if (unknown.length) throw new Error(`--targets: unknown ${unknown.join(', ')}; use ${TARGET_KINDS.join(', ')}`);
  const partList = pick(values.parts, env.BENCH_PARTS, 'create,stage', 'create,stage');
  const parts = new Set(partList.split(','));
  if ([...parts].some((p) => p !== 'create' && p !== 'stage')) throw new Error(`--parts takes create and/or stage, got "${partList}"`);
  return {
    targets: targets as TargetKind[],
    sequential: count('sequential', pick(values.sequential, env.BENCH_SEQUENTIAL, '100', '20')),
    concurrent: count('concurrent', pick(values.concurrent, env.BENCH_CONCURRENT, '20', '20')),
    rounds: count('rounds', pick(values.rounds, env.BENCH_ROUNDS, '3', '1')),
    stageVolumes: count('stage-volumes', pick(values['stage-volumes'], env.BENCH_STAGE_VOLUMES, '10', '3')),
    sizeBytes: count('size-mib', pick(values['size-mib'], env.BENCH_SIZE_MIB, '1024', '1024')) * MiB,
    parts, json: values.json ?? env.BENCH_JSON,
  };
}

/** A staged Cairn volume or a reference volume, kept until it is undone so that cleanup can undo it. */
interface Tracked {
  target: CsiTarget | undefined;
  staged: Map<string, { staging: string; targetPath?: string }>;
  plain: Set<PlainVolume>;
}

interface Bench {
  opts: Options;
  /** Set by Ctrl-C: the measuring stops at its next step while cleanup runs. */
  stopping: boolean;
  dir: string;
  tracked: Tracked;
  createRows: string[][];
  stageRows: string[][];
  goals: string[];
  json: Record<string, Record<string, unknown>>;
}

const load1 = (): number => loadavg()[0]!;
const going = (b: Bench): void => {
  if (b.stopping) throw new Error('interrupted');
};
const loadRange = (xs: number[]): string => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;
const ratio = (a: number, b: number): string => (b > 0 ? (a / b).toFixed(2) : '');

/* ------------------------------------------------------------------ CreateVolume */

interface CreatePath {
  via: 'csi' | 'api';
  create(name: string): Promise<unknown>;
  delete(name: string): Promise<unknown>;
}

function createPaths(t: CsiTarget, sizeBytes: number): CreatePath[] {
  return [
    {
      via: 'csi',
      create: async (name) => ok(await t.csi.controller.CreateVolume!({
        name, capacityRange: { requiredBytes: sizeBytes }, volumeCapabilities: [MOUNT_CAP], parameters: { replicas: String(t.replicas) },
      })),
      delete: async (volumeId) => ok(await t.csi.controller.DeleteVolume!({ volumeId })),
    },
    {
      via: 'api',
      create: (name) => t.api.createVolume(name, sizeBytes, { replicas: t.replicas }),
      delete: (name) => t.api.deleteVolume(name, false),
    },
  ];
}

type Samples = Record<'csi' | 'api', { create: number[]; delete: number[]; load: number[] }>;

async function createBatch(b: Bench, p: CreatePath, names: string[], concurrent: boolean, into: Samples): Promise<void> {
  going(b);
  const each = async (fn: (name: string) => Promise<unknown>): Promise<number[]> => (concurrent
    ? Promise.all(names.map(async (n) => (await timed(() => fn(n))).ms))
    : names.reduce<Promise<number[]>>(async (acc, n) => [...(await acc), (await timed(() => fn(n))).ms], Promise.resolve([])));
  into[p.via].create.push(...(await each(p.create)));
  into[p.via].delete.push(...(await each(p.delete)));
  into[p.via].load.push(load1());
}

async function createPart(b: Bench, t: CsiTarget): Promise<void> {
  const { opts } = b;
  const paths = createPaths(t, opts.sizeBytes);
  for (const p of paths) {
    await p.create(`bench-warm-${p.via}`);
    await p.delete(`bench-warm-${p.via}`);
  }
  const names = (tag: string, n: number): string[] => Array.from({ length: n }, (_, i) => `bench-${tag}-${String(i).padStart(3, '0')}`);
  const empty = (): Samples => ({ csi: { create: [], delete: [], load: [] }, api: { create: [], delete: [], load: [] } });
  const sequential = empty();
  for (const p of paths) await createBatch(b, p, names(`${p.via}-s`, opts.sequential), false, sequential);
  const concurrent = empty();
  for (let r = 0; r < opts.rounds; r++) {
    for (const p of paths) await createBatch(b, p, names(`${p.via}-c${r}`, opts.concurrent), true, concurrent);
  }
  const modes: [string, Samples][] = [['sequential', sequential], [`${opts.concurrent} concurrent`, concurrent]];
  for (const [mode, s] of modes) {
    for (const call of ['create', 'delete'] as const) {
      const csi = summarize(s.csi[call]);
      const api = summarize(s.api[call]);
      b.createRows.push([t.label, `${call === 'create' ? 'Create' : 'Delete'}Volume`, mode, String(csi.n), formatMs(csi.p50Ms), formatMs(csi.p99Ms),
        formatMs(api.p50Ms), formatMs(api.p99Ms), ratio(csi.p50Ms, api.p50Ms), ratio(csi.p99Ms, api.p99Ms), loadRange([...s.csi.load, ...s.api.load])]);
    }
  }
  const p99 = summarize(concurrent.csi.create).p99Ms;
  b.goals.push(`${t.label}: CreateVolume p99 with ${opts.concurrent} concurrent calls ${formatMs(p99)} (goal < ${CREATE_GOAL_MS} ms: ${p99 < CREATE_GOAL_MS ? 'met' : 'MISSED'})`);
  b.json[t.kind]!.create = { sequential, concurrent };
}

/* ------------------------------------------------------------------ NodeStage + NodePublish */

const STEPS = ['stage', 'publish', 'stage+publish', 'unpublish', 'unstage', 'delete'] as const;
type Step = (typeof STEPS)[number];
type StepSamples = Record<Step, number[]>;
const emptySteps = (): StepSamples => Object.fromEntries(STEPS.map((s) => [s, []])) as unknown as StepSamples;

async function stageCairn(b: Bench, t: CsiTarget, name: string, cap: CsiMessage, into: StepSamples): Promise<void> {
  going(b);
  const staging = join(b.dir, `${t.kind}-${name}-staging`);
  const targetPath = join(b.dir, `${t.kind}-${name}-target`);
  await mkdir(staging);
  const entry: { staging: string; targetPath?: string } = { staging };
  b.tracked.staged.set(name, entry);
  const stage = await timed(async () => ok(await t.csi.node.NodeStageVolume!({ volumeId: name, stagingTargetPath: staging, volumeCapability: cap })));
  entry.targetPath = targetPath;
  const publish = await timed(async () => ok(await t.csi.node.NodePublishVolume!({ volumeId: name, stagingTargetPath: staging, targetPath, volumeCapability: cap })));
  if (!(await findMount(targetPath))) throw new Error(`NodePublishVolume of ${name} answered OK but nothing is mounted at ${targetPath}`);
  into.stage.push(stage.ms);
  into.publish.push(publish.ms);
  into['stage+publish'].push(stage.ms + publish.ms);
}

async function unstageCairn(b: Bench, t: CsiTarget, name: string, into: StepSamples): Promise<void> {
  const entry = b.tracked.staged.get(name)!;
  into.unpublish.push((await timed(async () => ok(await t.csi.node.NodeUnpublishVolume!({ volumeId: name, targetPath: entry.targetPath })))).ms);
  into.unstage.push((await timed(async () => ok(await t.csi.node.NodeUnstageVolume!({ volumeId: name, stagingTargetPath: entry.staging })))).ms);
  b.tracked.staged.delete(name);
  await rmdir(entry.staging);
  into.delete.push((await timed(async () => ok(await t.csi.controller.DeleteVolume!({ volumeId: name })))).ms);
}

async function stagePlain(b: Bench, v: PlainVolume, into: StepSamples): Promise<void> {
  going(b);
  const staging = `${v.file}-staging`;
  await mkdir(staging);
  const stage = await timed(() => plainStage(v, staging));
  const publish = await timed(() => plainPublish(v, `${v.file}-target`));
  into.stage.push(stage.ms);
  into.publish.push(publish.ms);
  into['stage+publish'].push(stage.ms + publish.ms);
}

async function unstagePlain(b: Bench, v: PlainVolume, into: StepSamples): Promise<void> {
  into.unpublish.push((await timed(() => plainUnpublish(v))).ms);
  into.unstage.push((await timed(() => plainUnstage(v))).ms);
  await rmdir(`${v.file}-staging`);
  into.delete.push((await timed(() => plainDelete(v))).ms);
  b.tracked.plain.delete(v);
}

async function stagePart(b: Bench, t: CsiTarget): Promise<void> {
  const { opts } = b;
  const kinds = [{ type: 'ext4', cap: MOUNT_CAP, block: false }, { type: 'block', cap: BLOCK_CAP, block: true }];
  for (const k of kinds) {
    const names = Array.from({ length: opts.stageVolumes }, (_, i) => `bench-stage-${k.type}-${i}`);
    for (const name of names) {
      ok(await t.csi.controller.CreateVolume!({ name, capacityRange: { requiredBytes: opts.sizeBytes }, volumeCapabilities: [k.cap], parameters: { replicas: String(t.replicas) } }));
    }
    const plain: PlainVolume[] = [];
    for (let i = 0; i < names.length; i++) {
      const v = await plainCreate(join(b.dir, `plain-${t.kind}-${k.type}-${i}.img`), opts.sizeBytes, k.block);
      b.tracked.plain.add(v);
      plain.push(v);
    }
    const cairn = emptySteps();
    const ref = emptySteps();
    const load: number[] = [];
    for (let i = 0; i < names.length; i++) {
      await stageCairn(b, t, names[i]!, k.cap, cairn);
      await stagePlain(b, plain[i]!, ref);
      load.push(load1());
    }
    for (let i = 0; i < names.length; i++) {
      await unstageCairn(b, t, names[i]!, cairn);
      await unstagePlain(b, plain[i]!, ref);
      load.push(load1());
    }
    for (const step of STEPS) {
      const c = summarize(cairn[step]);
      const r = summarize(ref[step]);
      b.stageRows.push([t.label, k.type, step, String(c.n), formatMs(c.p50Ms), formatMs(c.p99Ms), formatMs(r.p50Ms), formatMs(r.p99Ms),
        step === 'delete' ? '' : ratio(c.p50Ms, r.p50Ms), loadRange(load)]);
    }
    const p99 = summarize(cairn['stage+publish']).p99Ms;
    b.goals.push(`${t.label}: NodeStage+NodePublish p99 (${k.type}, ${opts.sizeBytes / MiB} MiB) ${formatMs(p99)} (goal < 1 s: ${p99 < STAGE_GOAL_MS ? 'met' : 'MISSED'})`);
    b.json[t.kind]![`stage-${k.type}`] = { cairn, plain: ref, load };
  }
}

/* ------------------------------------------------------------------ cleanup and main */

/**
 * Undoes what is still staged (through CSI, reviving the daemons if a Ctrl-C stopped them),
 * then sweeps the rest. False when the graceful path failed somewhere (the daemons' logs are
 * then worth keeping).
 */
async function undoTracked(b: Bench): Promise<boolean> {
  const t = b.tracked.target;
  let clean = true;
  if (t && b.tracked.staged.size > 0) {
    await t.revive().catch((err: unknown) => console.error(`cleanup: cannot restart the daemons to unstage: ${String(err)}`));
    for (const [volumeId, e] of [...b.tracked.staged]) {
      const unpublish = e.targetPath ? await t.csi.node.NodeUnpublishVolume!({ volumeId, targetPath: e.targetPath }, { timeoutMs: 30_000 }) : undefined;
      const unstage = await t.csi.node.NodeUnstageVolume!({ volumeId, stagingTargetPath: e.staging }, { timeoutMs: 60_000 });
      const failed = [unpublish, unstage].find((r) => r && r.code !== 0);
      if (failed) console.error(`cleanup: undoing ${volumeId} through CSI failed: ${codeName(failed)} ${failed.message ?? ''}`);
      clean &&= !failed;
    }
    b.tracked.staged.clear();
  }
  for (const v of b.tracked.plain) await plainUnpublish(v).then(() => plainUnstage(v)).catch(() => undefined);
  b.tracked.plain.clear();
  const left = await sweepAttachments([b.dir, ...(t?.dataDirs() ?? [])]);
  if (left.length) console.warn(`cleanup: removed what the graceful path left: ${left.join('; ')}`);
  return clean && left.length === 0;
}

async function prerequisites(opts: Options): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:csi needs root (loop devices, FUSE and mounts)');
  const missingEtcd = opts.targets.some((k) => k !== 'embedded') ? await etcdMissingReason() : undefined;
  if (missingEtcd) throw new Error(`cannot run the etcd targets here: ${missingEtcd} (or pass --targets embedded)`);
  for (const cmd of ['nbdfuse', 'nbdkit', 'losetup', 'mkfs.ext4', 'fusermount3', 'truncate']) {
    if (!(await has(cmd))) throw new Error(`bench:csi needs ${cmd}: run scripts/install-deps.sh`);
  }
}

function printResults(b: Bench): void {
  if (b.createRows.length) {
    console.log(`\nCreateVolume / DeleteVolume (${b.opts.sizeBytes / MiB} MiB volumes, ext4 capability): CSI against the same daemon's cairnctl API; ${b.opts.sequential} sequential, ${b.opts.rounds} x ${b.opts.concurrent} concurrent`);
    printTable([['target', 'call', 'mode', 'n', 'CSI p50', 'CSI p99', 'API p50', 'API p99', 'x API p50', 'x API p99', 'load'], ...b.createRows], 3);
  }
  if (b.stageRows.length) {
    const attach = existsSync('/sys/module/nbd') ? '/dev/nbdX' : 'nbdfuse + loop (this kernel has no nbd driver)';
    console.log(`\nNodeStage/NodePublish and teardown (${b.opts.stageVolumes} volumes of ${b.opts.sizeBytes / MiB} MiB per type, attached through ${attach}): Cairn against plain Linux on a file (losetup, mkfs.ext4, mount, bind)`);
    printTable([['target', 'volume', 'step', 'n', 'Cairn p50', 'Cairn p99', 'Linux p50', 'Linux p99', 'x Linux p50', 'load'], ...b.stageRows], 3);
  }
  console.log(`\nGoals (load average now ${loadAverage()}):`);
  for (const g of b.goals) console.log(`  ${g}`);
}

async function main(): Promise<void> {
  const opts = options();
  checkBuild();
  await prerequisites(opts);
  const dir = await mkdtemp('/tmp/cairn-csi-bench-');
  const b: Bench = { opts, dir, stopping: false, tracked: { target: undefined, staged: new Map(), plain: new Set() }, createRows: [], stageRows: [], goals: [], json: {} };
  let failed = false;
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => (cleaning ??= (async () => {
    // grpc-js waits for a lost socket on unref'd timers: without this the process could
    // exit in the middle of the cleanup, leaving mounts and daemons behind.
    const keepAlive = setInterval(() => undefined, 60_000);
    try {
      const clean = await undoTracked(b).catch((err: unknown) => {
        console.error(`cleanup: ${String(err)}`);
        return false;
      });
      await b.tracked.target?.destroy(failed || !clean);
      await rm(dir, { recursive: true, force: true });
    } finally {
      clearInterval(keepAlive);
    }
  })());
  // process.on, not once: execa's signal-exit handler re-raises the signal (and the
  // process dies mid-cleanup) when it finds itself the only listener left.
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(signal, () => {
      if (b.stopping) {
        console.error(`${signal}: still cleaning up (mounts, loop devices, daemons); kill -9 ${process.pid} abandons them`);
        return;
      }
      console.error(`\n${signal}: undoing what the bench made`);
      b.stopping = true;
      void cleanup().finally(() => process.exit(code));
    });
  }
  console.log('Machine:');
  for (const line of machineFacts(dir)) console.log(`  ${line}`);
  try {
    for (const kind of opts.targets) {
      going(b);
      const t = await startTarget(kind);
      b.tracked.target = t;
      going(b); // a Ctrl-C during the start: the finally below destroys t
      b.json[kind] = { label: t.label };
      console.log(`\n${t.label}: cairnd pid(s) ${t.pids().join(', ')}, load ${loadAverage()}`);
      if (opts.parts.has('create')) await createPart(b, t);
      if (opts.parts.has('stage')) await stagePart(b, t);
      const clean = await undoTracked(b);
      // Still tracked while it stops: a Ctrl-C now waits for the same destroy.
      await t.destroy(!clean);
      b.tracked.target = undefined;
    }
    printResults(b);
    if (opts.json) await writeFile(opts.json, JSON.stringify({ opts: { ...opts, parts: [...opts.parts] }, goals: b.goals, targets: b.json }, null, 2));
  } catch (err) {
    failed = !b.stopping;
    throw err;
  } finally {
    await cleanup();
    await b.tracked.target?.destroy(failed); // started after a Ctrl-C's cleanup had begun
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
