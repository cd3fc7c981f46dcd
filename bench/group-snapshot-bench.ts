/**
 * Group snapshot benchmark (issue 13): `--volumes` volumes (10) on a 3-node cluster (etcd,
 * mutual TLS, rf=2, the engines spread over the three daemons), each under a 4k random write
 * load (`--qd` writes in flight per volume, through its NBD export, from this process), and
 * `--count` group snapshots of all of them, one every `--interval-ms`. Reported: the I/O
 * pause per member (p50, p99, max, as each engine measured it), the group's phases and total
 * time (the coordinator's), and the writes completed. Two variants: without hooks (the load
 * on the raw NBD exports), and with fsfreeze (the same number of other volumes staged as
 * ext4 through each node's CSI Node service, a fio 4k random-write load in each filesystem,
 * and the groups taken under a rule whose only pre action is `fsfreeze`). The goals of the
 * issue (every member's pause under 100 ms at p99, the whole group under 1 s) are printed,
 * each met or MISSED. Nothing here is asserted: it is a benchmark.
 *
 *   npm run build && npm run bench:group-snapshot -- [--quick] [--volumes 10] [--count 10] [--interval-ms 1000] [--qd 4] [--no-fsfreeze]
 */
import { execa, type ResultPromise } from 'execa';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ApiClient, type GroupSnapshotMessage } from '../src/cli/api-client.js';
import { Cluster } from '../test/helpers/cluster.js';
import { csiClient } from '../test/helpers/csi-client.js';
import { etcdMissingReason } from '../test/helpers/etcd.js';
import type { NbdBlockClient } from '../test/helpers/verified-writer.js';
import { checkBuild } from './lib/cairnd.js';
import { loadAverage, machineFacts, printTable } from './lib/machine.js';

const MiB = 2 ** 20;
const BLOCK = 4096;
const VOLUME_BYTES = 256 * MiB;

interface Options { volumes: number; count: number; intervalMs: number; qd: number; fsfreeze: boolean }

function options(): Options {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      volumes: { type: 'string', default: '10' },
      count: { type: 'string', default: '10' },
      'interval-ms': { type: 'string', default: '1000' },
      qd: { type: 'string', default: '4' },
      'no-fsfreeze': { type: 'boolean', default: false },
    },
  });
  const positive = (name: string, v: string): number => {
    const n = Number(v);
    if (!(n > 0) || !Number.isInteger(n)) throw new Error(`--${name} must be a positive whole number, got "${v}"`);
    return n;
  };
  return {
    volumes: positive('volumes', values.volumes), count: values.quick ? 3 : positive('count', values.count),
    intervalMs: positive('interval-ms', values['interval-ms']), qd: positive('qd', values.qd), fsfreeze: !values['no-fsfreeze'],
  };
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] ?? 0;
}

/** `qd` loops of 4k writes at random offsets; counts completions and errors until stopped. */
function writeLoad(clients: NbdBlockClient[], qd: number): { stop: () => Promise<{ writes: number; errors: number }> } {
  let stopped = false;
  let writes = 0;
  let errors = 0;
  const data = randomBytes(BLOCK);
  const loops = clients.flatMap((c) => Array.from({ length: qd }, async () => {
    while (!stopped) {
      try {
        await c.write(randomInt(VOLUME_BYTES / BLOCK) * BLOCK, data);
        writes++;
      } catch {
        errors++;
      }
    }
  }));
  return { stop: async () => { stopped = true; await Promise.all(loops); return { writes, errors }; } };
}

interface Taken { groups: GroupSnapshotMessage[]; failures: string[] }

/** `count` groups of `names`, one every `intervalMs`, each under `rule` when given; a group that fails is counted, not fatal. */
async function takeGroups(api: ApiClient, prefix: string, names: string[], opts: Options, rule?: string): Promise<Taken> {
  const taken: Taken = { groups: [], failures: [] };
  for (let i = 0; i < opts.count; i++) {
    const started = Date.now();
    try {
      taken.groups.push(await api.createGroupSnapshot(`${prefix}-${i}`, names, rule));
    } catch (err) {
      taken.failures.push(`${prefix}-${i}: ${(err as Error).message}`);
    }
    const left = opts.intervalMs - (Date.now() - started);
    if (left > 0) await new Promise((r) => setTimeout(r, left));
  }
  return taken;
}

function report(title: string, { groups, failures }: Taken, load: string): void {
  if (failures.length > 0) console.log(`\n${title}: ${failures.length} of ${groups.length + failures.length} groups FAILED; the first: ${failures[0]}`);
  if (groups.length === 0) return;
  const pausesMs = groups.flatMap((g) => g.members.map((m) => Number(m.pauseUs) / 1000));
  const totals = groups.map((g) => g.phases?.totalMs ?? 0);
  const phase = (k: 'preMs' | 'pauseMs' | 'cutMs' | 'resumeMs' | 'finishMs'): string => quantile(groups.map((g) => g.phases?.[k] ?? 0), 0.5).toFixed(1);
  console.log(`\n${title}: ${groups.length} groups of ${groups[0]?.members.length ?? 0} members; ${load}; load average ${loadAverage()}`);
  printTable([
    ['figure', 'p50', 'p99', 'max'],
    ['member pause (ms)', quantile(pausesMs, 0.5).toFixed(1), quantile(pausesMs, 0.99).toFixed(1), Math.max(...pausesMs).toFixed(1)],
    ['group total (ms)', quantile(totals, 0.5).toFixed(1), quantile(totals, 0.99).toFixed(1), Math.max(...totals).toFixed(1)],
  ], 1);
  console.log(`phases (p50, ms): pre ${phase('preMs')}, pause-all ${phase('pauseMs')}, cut ${phase('cutMs')}, resume ${phase('resumeMs')}, finish ${phase('finishMs')}`);
  const p99 = quantile(pausesMs, 0.99);
  console.log(`goal: every member's pause under 100 ms at p99: ${p99 < 100 ? 'met' : 'MISSED'} (${p99.toFixed(1)} ms)`);
  console.log(`goal: the whole group under 1 s: ${Math.max(...totals) < 1000 ? 'met' : 'MISSED'} (max ${Math.max(...totals).toFixed(0)} ms)`);
}

/** Without hooks: the load on the NBD exports. */
async function plainVariant(c: Cluster, api: ApiClient, opts: Options): Promise<void> {
  const clients: NbdBlockClient[] = [];
  const names: string[] = [];
  for (let v = 0; v < opts.volumes; v++) {
    const node = v % 3;
    const name = `bench-${v}`;
    names.push(name);
    await c.createVolume(name, `${VOLUME_BYTES / MiB}MiB`, 2, node, ['--prefer-node', c.nodeName(node)]);
    await c.exportVolume(node, name);
    clients.push(await c.nbd(node, name));
  }
  const load = writeLoad(clients, opts.qd);
  await new Promise((r) => setTimeout(r, 2000));
  const taken = await takeGroups(api, 'bench-grp', names, opts);
  const { writes, errors } = await load.stop();
  report('without hooks', taken, `${writes} writes completed, ${errors} failed`);
  for (const g of taken.groups) await api.deleteGroupSnapshot(g.name);
  for (const cl of clients) await cl.close();
}

/**
 * Unstages a member through its node's CSI service (thawing it first, in case a group left it
 * frozen). When that fails, says so and unmounts the directory itself; it is removed only
 * once nothing is mounted on it, so a failed unstage never deletes the volume's files.
 */
async function unstage(csi: Awaited<ReturnType<typeof csiClient>>, s: { name: string; dir: string }): Promise<void> {
  await execa('fsfreeze', ['-u', s.dir], { reject: false });
  const r = await csi.node.NodeUnstageVolume!({ volumeId: s.name, stagingTargetPath: s.dir }).catch((err: Error) => ({ code: -1, message: err.message }));
  if (r.code !== 0) {
    console.error(`unstage of ${s.name} failed (${r.message}); unmounting ${s.dir} directly`);
    await execa('umount', [s.dir], { reject: false });
  }
  if ((await execa('mountpoint', ['-q', s.dir], { reject: false })).exitCode === 0) {
    console.error(`${s.dir} is still mounted (volume ${s.name}): unmount it by hand`);
    return;
  }
  rmSync(s.dir, { recursive: true, force: true });
}

/** With fsfreeze: members staged as ext4, fio writing in each, groups under a freeze-only rule. */
async function fsfreezeVariant(c: Cluster, api: ApiClient, opts: Options): Promise<void> {
  const cap = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };
  const csi = await Promise.all([0, 1, 2].map((i) => csiClient(join(c.node(i).dataDir, 'csi.sock'))));
  const work = mkdtempSync('/tmp/cairn-bench-fs-');
  const staged: { node: number; name: string; dir: string }[] = [];
  const fios: ResultPromise[] = [];
  try {
    writeFileSync(join(work, 'rule.yaml'), 'apiVersion: cairn.dev/v1alpha1\nkind: SnapshotRule\nmetadata:\n  name: bench-freeze\nspec:\n  pre: [{kind: fsfreeze}]\n');
    const applied = await c.ctl(0, ['rule', 'apply', '-f', join(work, 'rule.yaml')]);
    if (applied.exitCode !== 0) throw new Error(`rule apply: ${applied.stderr}`);
    for (let v = 0; v < opts.volumes; v++) {
      const node = v % 3;
      const name = `bench-fs-${v}`;
      await c.createVolume(name, `${VOLUME_BYTES / MiB}MiB`, 2, node, ['--prefer-node', c.nodeName(node)]);
      const dir = mkdtempSync(`/tmp/cairn-bench-${name}-`);
      const r = await csi[node]!.node.NodeStageVolume!({ volumeId: name, stagingTargetPath: dir, volumeCapability: cap });
      if (r.code !== 0) throw new Error(`stage ${name}: ${r.message}`);
      staged.push({ node, name, dir });
      // --thread: the job runs in fio's own process, so killing it stops the load (a forked
      // job would live on, writing, and hold the output pipe execa waits for).
      fios.push(execa('fio', ['--name=load', '--thread', `--directory=${dir}`, '--rw=randwrite', '--bs=4k', '--size=64m', `--iodepth=${opts.qd}`, '--ioengine=psync',
        '--time_based', '--runtime=3600', '--fsync=16'], { reject: false }));
    }
    await new Promise((r) => setTimeout(r, 3000));
    const taken = await takeGroups(api, 'bench-fs-grp', staged.map((s) => s.name), opts, 'bench-freeze');
    report('with fsfreeze', taken, `fio 4k random writes in each ext4 (fsync every 16)`);
    for (const g of taken.groups) await api.deleteGroupSnapshot(g.name);
  } finally {
    for (const f of fios) f.kill('SIGKILL');
    await Promise.all(fios);
    for (const s of staged) await unstage(csi[s.node]!, s);
    for (const cl of csi) cl.close();
    rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  checkBuild();
  const etcd = await etcdMissingReason();
  if (etcd) throw new Error(`bench:group-snapshot needs etcd: ${etcd}`);
  const opts = options();
  console.log(`group snapshot benchmark: ${opts.volumes} volumes (rf=2) on 3 nodes, 4k random writes at QD${opts.qd} per volume, ${opts.count} groups every ${opts.intervalMs} ms`);
  for (const line of machineFacts('/tmp')) console.log(`  ${line}`);
  const c = await Cluster.start({ nodes: 3, flags: { '--replica-timeout-ms': '8000' } });
  const api = new ApiClient(c.node(0).apiSocket, 600_000);
  try {
    await plainVariant(c, api, opts);
    if (opts.fsfreeze) await fsfreezeVariant(c, api, opts);
  } finally {
    api.close();
    await c.destroy();
  }
}

await main();
