/**
 * PostgreSQL, application-consistent (issue 13): a real PostgreSQL on a Cairn volume (one
 * cairnd, embedded store, file pool) staged through the CSI Node service as ext4, with
 * pgbench writing and the test's own loop committing ids one transaction at a time. A rule
 * (`psql … CHECKPOINT`, then `fsfreeze`) applied with `cairnctl rule apply`, a snapshot with
 * `cairnctl snapshot create --rule`; the snapshot restored into a new volume, staged, and a
 * second PostgreSQL started on it: pg_amcheck is clean, pgbench's balances agree, and every
 * id committed before the snapshot call started is there.
 */
import test from 'ava';
import { execa, type ResultPromise } from 'execa';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotMessage } from '../../src/cli/api-client.js';
import { csiClient, ok, type CsiTestClient } from '../helpers/csi-client.js';
import { Daemon } from '../helpers/daemon.js';
import { PgServer, postgresMissing } from '../helpers/postgres.js';
import { combine, missingCommands, missingRoot, prerequisitesMet } from '../helpers/prereq.js';

const missing = combine(
  missingRoot('loop devices, FUSE, mounts, FIFREEZE and running PostgreSQL as its user'),
  existsSync('/dev/fuse') ? undefined : 'needs FUSE (/dev/fuse): modprobe fuse',
  await missingCommands('nbdfuse', 'losetup', 'mkfs.ext4', 'fsfreeze', 'runuser'),
  await postgresMissing(),
);

const cap = { mount: { fsType: 'ext4', mountFlags: [] }, accessMode: { mode: 'SINGLE_NODE_WRITER' } };

/** Inserts ids one transaction at a time; an id counts as committed once its COMMIT returned. */
class CommitLoop {
  readonly committed: number[] = [];
  private running = true;
  private readonly done: Promise<void>;
  private failure: Error | undefined;

  constructor(pg: PgServer) {
    this.done = (async () => {
      for (let id = 1; this.running; id++) {
        try {
          await pg.psql('BEGIN', `INSERT INTO committed_ids (id) VALUES (${id})`, 'COMMIT');
        } catch (err) {
          this.failure = err as Error;
          return;
        }
        this.committed.push(id);
      }
    })();
  }

  /** Resolves once `n` ids are committed (or rejects when the loop failed). */
  async waitFor(n: number): Promise<void> {
    while (this.committed.length < n) {
      if (this.failure) throw this.failure;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
    if (this.failure) throw this.failure;
  }
}

if (prerequisitesMet('PostgreSQL application-consistent snapshot', missing)) {
  test.serial('PostgreSQL under pgbench: a snapshot under a CHECKPOINT + fsfreeze rule, restored and started, checks clean with pg_amcheck and holds every transaction committed before the call', async (t) => {
    t.timeout(600_000);
    const d = await Daemon.start({ extraArgs: ['--pool-backend', 'file', '--node-name', 'node-a'] });
    const csi: CsiTestClient = await csiClient(join(d.dataDir, 'csi.sock'));
    const work = mkdtempSync('/tmp/cairn-pg-');
    const mnt = mkdtempSync('/tmp/cairn-pg-src-');
    const mnt2 = mkdtempSync('/tmp/cairn-pg-dst-');
    const servers: PgServer[] = [];
    const load: { bench?: ResultPromise; loop?: CommitLoop } = {};
    t.teardown(async () => {
      load.bench?.kill('SIGKILL');
      await load.loop?.stop().catch(() => undefined);
      for (const s of servers) await s.close();
      for (const m of [mnt, mnt2]) await execa('fsfreeze', ['-u', m], { reject: false });
      await csi.node.NodeUnstageVolume!({ volumeId: 'pg-restored', stagingTargetPath: mnt2 }).catch(() => undefined);
      await csi.node.NodeUnstageVolume!({ volumeId: 'pg', stagingTargetPath: mnt }).catch(() => undefined);
      csi.close();
      await d.destroy();
      for (const dir of [work, mnt, mnt2]) rmSync(dir, { recursive: true, force: true });
    });

    // The source: PostgreSQL on a staged ext4, pgbench running, the commit loop running.
    t.is((await d.ctl(['volume', 'create', 'pg', '--size', '512MiB'])).exitCode, 0);
    ok(await csi.node.NodeStageVolume!({ volumeId: 'pg', stagingTargetPath: mnt, volumeCapability: cap }));
    chmodSync(mnt, 0o755);
    const pg = await PgServer.open(join(mnt, 'pgdata'), { init: true });
    servers.push(pg);
    await pg.start();
    await pg.psql('CREATE TABLE committed_ids (id integer PRIMARY KEY)');
    await pg.pgbenchInit(4);
    const bench = (load.bench = pg.pgbench(['-c', '4', '-j', '2', '-T', '3600', '-n']));
    const loop = (load.loop = new CommitLoop(pg));
    await loop.waitFor(50);
    // pgbench is committing too before the snapshot.
    while (Number(await pg.psql('SELECT count(*) FROM pgbench_history')) === 0) {
      if (bench.exitCode !== null) t.fail(`pgbench exited: ${String(bench.exitCode)}`);
      await new Promise((r) => setTimeout(r, 100));
    }

    const rule = join(work, 'postgres.yaml');
    writeFileSync(rule, [
      'apiVersion: cairn.dev/v1alpha1', 'kind: SnapshotRule', 'metadata:', '  name: postgres', 'spec:', '  pre:',
      `    - {name: checkpoint, kind: command, command: [${join(pg.bin, 'psql')}, -X, -h, ${pg.socketDir}, -p, "${pg.port}", -U, postgres, -c, CHECKPOINT], timeoutSeconds: 120}`,
      '    - {kind: fsfreeze}', '',
    ].join('\n'));
    const applied = await d.ctl(['rule', 'apply', '-f', rule]);
    t.is(applied.exitCode, 0, applied.stderr);

    const before = [...loop.committed];
    const r = await d.ctl(['-o', 'json', 'snapshot', 'create', 'pg-snap', '--volume', 'pg', '--rule', 'postgres']);
    t.is(r.exitCode, 0, r.stderr);
    const snap = JSON.parse(r.stdout) as SnapshotMessage;
    t.true(snap.readyToUse);
    t.like(snap.rule, { name: 'postgres', ok: true });
    t.deepEqual(snap.rule!.actions.map((a) => `${a.action} ${a.step} ${a.status}`), ['checkpoint run succeeded', 'pre[1] freeze succeeded', 'pre[1] thaw succeeded']);
    // The writers go on after the snapshot (the thaw let them), then stop.
    const afterCall = loop.committed.length;
    await loop.waitFor(afterCall + 10);
    await loop.stop();
    const benchRows = Number(await pg.psql('SELECT count(*) FROM pgbench_history'));
    bench.kill('SIGKILL');
    await bench;
    await pg.stop();

    // The copy: restored into a new volume, staged on the same node, a second PostgreSQL on it.
    const restored = await d.ctl(['snapshot', 'restore', 'pg-snap', 'pg-restored', '--no-wait']);
    t.is(restored.exitCode, 0, restored.stderr);
    ok(await csi.node.NodeStageVolume!({ volumeId: 'pg-restored', stagingTargetPath: mnt2, volumeCapability: cap }));
    chmodSync(mnt2, 0o755);
    // The copy holds the running server's lock file; its process is not this server's.
    rmSync(join(mnt2, 'pgdata', 'postmaster.pid'), { force: true });
    const pg2 = await PgServer.open(join(mnt2, 'pgdata'), { init: false });
    servers.push(pg2);
    await pg2.start().catch((err: unknown) => t.fail(`the restored PostgreSQL did not start: ${(err as Error).message}\n${pg2.log()}`));

    const check = await execa(join(pg2.bin, 'pg_amcheck'), [...pg2.connArgs, '--all', '--install-missing', '--heapallindexed'], { reject: false });
    t.is(check.exitCode, 0, `pg_amcheck of the restored database:\n${check.stdout}\n${check.stderr}`);
    // pgbench's invariant: every transaction moves the same delta in accounts, tellers, branches and history.
    const sums = (await pg2.psql(
      'SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)',
    )).split('|');
    t.is(new Set(sums).size, 1, `pgbench balances agree in the restored database: ${sums.join(', ')}`);
    const found = new Set((await pg2.psql('SELECT id FROM committed_ids')).split('\n').filter(Boolean).map(Number));
    const lost = before.filter((id) => !found.has(id));
    const restoredBenchRows = Number(await pg2.psql('SELECT count(*) FROM pgbench_history'));
    t.log(`ids committed before the snapshot call: ${before.length}; after the loop stopped: ${loop.committed.length}; rows in the restored table: ${found.size}; `
      + `committed before the call but missing: ${lost.length}; pgbench history rows at the end: ${benchRows}, in the restored copy: ${restoredBenchRows}; balance sums ${sums[0]}`);
    t.true(restoredBenchRows > 0, 'pgbench\'s transactions before the snapshot are in the copy');
    t.deepEqual(lost, [], 'every id committed before the snapshot call is in the restored database');
    // The loop is sequential: when the call returned, ids up to afterCall were committed and one more at most was on its way.
    t.deepEqual([...found].filter((id) => id > afterCall + 1), [], 'nothing begun after the snapshot call returned is in the copy');
    t.true(before.length >= 50);
  });
}
