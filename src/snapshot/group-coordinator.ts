/**
 * The group snapshot coordinator: one cut of the write stream across many volumes, on
 * whichever nodes serve them (docs/snapshots.md, "Group snapshots"). Phases, each with a
 * deadline:
 *
 *   pre hooks → pause every served member's engine (cairn.engine.v1 PauseVolume, on a lease)
 *   and wait until ALL are paused → cut every served member under one group id (one
 *   snapshot id per member), each member resuming as soon as its own copies are cut → finish
 *   all (copies whole; a volume no engine serves is copied here, directly from its in-sync
 *   replicas at its document's epoch: nobody writes to it, and an engine that starts meanwhile
 *   fences the copy) → documents ready.
 *
 * The cut is the moment the last member paused: no resume is asked before it. A write in a
 * member's copy went through that member's gate before its pause, so before that moment; a
 * write acknowledged before it was sent went through its own gate earlier still, while that
 * gate was open, which (no member having resumed yet) was before that member's pause: it is
 * in its member's copy. So the copies hold a prefix of the write stream. A member resuming
 * early only lets writes on that are after the cut everywhere: the members still paused hold
 * theirs until their own cut, and the copies taken already are fixed.
 * All or nothing: anything failing before the group is ready resumes every engine, aborts
 * every member's copies and removes the member documents, and the error names the member.
 * An engine that loses the coordinator resumes at its lease; a crash mid-group leaves
 * documents `creating` that `collect` (the repair leader) undoes.
 */
import { Code, StorageError, isStorageError } from '../common/errors.js';
import { newSnapshotId, validateName, type NodeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import { withTimeout } from '../common/timeout.js';
import type { SnapshotControls } from '../cluster/snapshot-service.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import type { EngineBarrierClient } from '../engine/engine-client.js';
import { createGroupDoc, getGroupDoc, listGroupDocs, updateGroupDoc, type GroupPhases, type GroupSnapshotDoc } from './group-doc.js';
import { createMemberDocs, markMembersReady, removeMembers, resolveMembers, type MemberRun } from './group-members.js';

/** Where the phases can be reached from outside: pre actions (snapshot rules), and a point between pause and cut. */
export interface GroupHooks {
  /** Before any pause. A failure fails the group. */
  pre?(group: GroupSnapshotDoc): Promise<void>;
  /** Every member paused, none cut yet. A failure fails the group. */
  paused?(group: GroupSnapshotDoc): Promise<void>;
  /** Every member cut and resumed, before the finish: where a rule's thaws and post actions may start. */
  resumed?(group: GroupSnapshotDoc): void;
  /** The pre step's deadline (a rule's pre actions); the phase deadline by default. */
  preDeadlineMs?: number;
}

export interface GroupCoordinatorOptions {
  store: ClusterStore;
  /** The engine service of a node. */
  engines: (nodeId: NodeId) => Promise<EngineBarrierClient>;
  /** The replica service of a node: direct copies of volumes no engine serves. */
  controls: SnapshotControls;
  /** Member snapshots are deleted through it. */
  snapshots: SnapshotService;
  log: Logger;
  /** Each engine's pause lease; 10000 ms by default. */
  leaseMs?: number;
  /** Each phase's deadline but the finish's; 10000 ms by default. */
  phaseDeadlineMs?: number;
  /** The finish's deadline (a file pool fills copies after the cut); 10 minutes by default. */
  finishDeadlineMs?: number;
  /** A `creating` group older than this was left by a crash (longer than every phase's deadline together); 15 minutes by default. */
  staleCreatingMs?: number;
  hooks?: GroupHooks;
}

export interface CreateGroupInput {
  name: string;
  /** Member volumes, by name or id. */
  volumes: string[];
  /** This group's hook points (a snapshot rule's, group-rules.ts), instead of the coordinator's. */
  hooks?: GroupHooks;
}

const ms = (since: number): number => Math.round((performance.now() - since) * 1000) / 1000;

export class GroupCoordinator {
  private readonly locks = new KeyedLock();
  private readonly inFlight = new Set<string>();
  private readonly log: Logger;

  constructor(private readonly opts: GroupCoordinatorOptions) {
    this.log = opts.log.child({ component: 'group-snapshots' });
  }

  async create(input: CreateGroupInput): Promise<GroupSnapshotDoc> {
    const name = validateName('group snapshot', input.name);
    if (input.volumes.length === 0) throw new StorageError(Code.INVALID_ARGUMENT, `group snapshot "${name}": name its member volumes`, { details: { groupSnapshot: name } });
    return this.locks.run(name, async () => {
      const existing = await getGroupDoc(this.opts.store, name);
      if (existing) return this.existing(existing.doc, input.volumes);
      const volumes = await resolveMembers(this.opts.store, input.volumes);
      const group: GroupSnapshotDoc = {
        id: `grp-${crypto.randomUUID()}`, name, state: 'creating', readyToUse: false, createdAt: new Date().toISOString(), members: [],
        phases: { preMs: 0, pauseMs: 0, cutMs: 0, resumeMs: 0, finishMs: 0, totalMs: 0 },
      };
      group.members = volumes.map((v) => ({ volumeId: v.id, volumeName: v.name, snapshotId: newSnapshotId(), snapshotName: `${name}-${v.name}`, pauseUs: 0, drainMs: 0 }));
      if (!(await createGroupDoc(this.opts.store, group))) {
        throw new StorageError(Code.ABORTED, `group snapshot "${name}" was created concurrently; run the command again`, { details: { groupSnapshot: name } });
      }
      this.inFlight.add(group.id);
      let runs: MemberRun[] = [];
      try {
        runs = await createMemberDocs(this.opts.store, group, volumes);
        const ready = await this.take(group, runs, input.hooks ?? this.opts.hooks ?? {});
        this.log.info({ groupSnapshot: name, groupId: group.id, members: runs.length, phases: ready.phases, pauseUs: ready.members.map((m) => m.pauseUs) }, 'group snapshot taken');
        return ready;
      } catch (err) {
        await this.undo(group, runs, err);
        throw err;
      } finally {
        this.inFlight.delete(group.id);
      }
    });
  }

  /** The phases; throws naming the member at the first failure (the caller undoes). */
  private async take(group: GroupSnapshotDoc, runs: MemberRun[], hooks: GroupHooks): Promise<GroupSnapshotDoc> {
    const started = performance.now();
    const phases: GroupPhases = { ...group.phases };
    let since = performance.now();
    await this.step('pre', group, () => hooks.pre?.(group) ?? Promise.resolve(), hooks.preDeadlineMs);
    phases.preMs = ms(since);
    since = performance.now();
    await this.each('pause', runs, async (r, engine) => {
      const paused = await engine.pause(r.volume.id, group.id, this.leaseMs);
      r.paused = true;
      r.drainMs = paused.drainMs;
    });
    phases.pauseMs = ms(since);
    await this.step('paused', group, () => hooks.paused?.(group) ?? Promise.resolve());
    since = performance.now();
    let resumeMs = 0;
    await this.each('cut', runs, async (r, engine) => {
      r.asked = true;
      const cut = await engine.cut(r.volume.id, group.id, r.snap.id);
      r.copies = cut.copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId }));
      r.sizeBytes = cut.copies[0]?.sizeBytes || r.volume.sizeBytes;
      const resuming = performance.now();
      await this.resumeOne(group, r);
      resumeMs = Math.max(resumeMs, ms(resuming));
    });
    phases.cutMs = ms(since);
    phases.resumeMs = resumeMs;
    hooks.resumed?.(group);
    since = performance.now();
    await this.each('finish', runs, async (r, engine) => {
      const copies = await engine.finish(r.volume.id, r.snap.id);
      r.copies = copies.map((c) => ({ nodeId: c.nodeId, replicaId: c.replicaId }));
    }, (r) => this.directCopies(r), this.opts.finishDeadlineMs ?? 10 * 60_000);
    phases.finishMs = ms(since);
    await markMembersReady(this.opts.store, runs);
    phases.totalMs = ms(started);
    const members = runs.map((r) => ({ volumeId: r.volume.id, volumeName: r.volume.name, snapshotId: r.snap.id, snapshotName: r.snap.name, pauseUs: r.pauseUs, drainMs: r.drainMs }));
    const ready = await updateGroupDoc(this.opts.store, group.name, (d) => {
      if (d.id !== group.id || d.state !== 'creating') throw new StorageError(Code.ABORTED, `group snapshot "${group.name}" was deleted while it was taken`);
      return { ...d, state: 'ready', readyToUse: true, members, phases };
    });
    return ready!;
  }

  private get leaseMs(): number {
    return this.opts.leaseMs ?? 10_000;
  }

  /** Runs `fn` on every member at once, served ones with their engine, under the phase's deadline; throws naming every member that failed. */
  private async each(phase: string, runs: MemberRun[], fn: (r: MemberRun, engine: EngineBarrierClient) => Promise<void>,
    unserved?: (r: MemberRun) => Promise<void>, deadlineMs = this.opts.phaseDeadlineMs ?? 10_000): Promise<void> {
    const results = await Promise.allSettled(runs.map(async (r) => {
      const work = r.engineNode ? this.opts.engines(r.engineNode).then((e) => fn(r, e)) : (unserved?.(r) ?? Promise.resolve());
      await withTimeout(work, deadlineMs, `${phase} of volume "${r.volume.name}"${r.engineNode ? ` on node ${r.engineNode}` : ''}`);
    }));
    const failed = results.flatMap((res, i) => (res.status === 'rejected' ? [{ r: runs[i]!, err: res.reason as Error }] : []));
    if (failed.length === 0) return;
    const first = failed[0]!.err;
    throw new StorageError(isStorageError(first) ? first.code : Code.INTERNAL,
      `group snapshot: the ${phase} failed for ${failed.map((f) => `volume "${f.r.volume.name}" (${f.err.message})`).join('; ')}; every engine resumed and no member snapshot is kept`,
      { cause: first, details: { phase, volumes: failed.map((f) => f.r.volume.name) } });
  }

  private async step(phase: string, group: GroupSnapshotDoc, fn: () => Promise<void>, deadlineMs = this.opts.phaseDeadlineMs ?? 10_000): Promise<void> {
    try {
      await withTimeout(fn(), deadlineMs, `the ${phase} step of group snapshot "${group.name}"`);
    } catch (err) {
      throw new StorageError(isStorageError(err) ? err.code : Code.INTERNAL, `group snapshot "${group.name}": the ${phase} step failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A volume no engine serves: every in-sync replica copied at the document's epoch (a replica that saw a newer one refuses: an engine started). */
  private async directCopies(r: MemberRun): Promise<void> {
    r.asked = true;
    const sizes = await Promise.all(r.snap.copies.map(async (c) =>
      (await (await this.opts.controls.control(c.nodeId)).snapshotReplica({ replicaId: c.replicaId, volumeId: r.volume.id }, r.volume.epoch, r.snap.id)).sizeBytes));
    r.copies = r.snap.copies;
    r.sizeBytes = sizes[0] || r.volume.sizeBytes;
  }

  /** Resumes every served member (those whose pause failed too: a late pause is then refused). */
  private async resumeAll(group: GroupSnapshotDoc, runs: MemberRun[]): Promise<void> {
    await Promise.all(runs.filter((r) => r.engineNode).map((r) => this.resumeOne(group, r)));
  }

  /** Resumes a served member; its pause in µs is kept. Idempotent. A failed resume is logged: the lease reopens the gate. */
  private async resumeOne(group: GroupSnapshotDoc, r: MemberRun): Promise<void> {
    try {
      r.pauseUs = await withTimeout(this.opts.engines(r.engineNode!).then((e) => e.resume(r.volume.id, group.id)), this.opts.phaseDeadlineMs ?? 10_000, `resume of volume "${r.volume.name}"`);
    } catch (err) {
      if (r.paused) r.pauseUs = this.leaseMs * 1000; // at most the lease
      this.log.warn({ groupSnapshot: group.name, volume: r.volume.name, engineNode: r.engineNode, err: (err as Error).message }, 'engine not resumed by the coordinator; its lease reopens it');
    }
  }

  /** After a failure: every engine resumed, every copy aborted, member documents and the group's removed. */
  private async undo(group: GroupSnapshotDoc, runs: MemberRun[], cause: unknown): Promise<void> {
    this.log.warn({ groupSnapshot: group.name, groupId: group.id, err: (cause as Error).message }, 'group snapshot failed; resuming and removing its members');
    await this.resumeAll(group, runs);
    await Promise.all(runs.filter((r) => r.engineNode && r.asked).map(async (r) => {
      try {
        await withTimeout(this.opts.engines(r.engineNode!).then((e) => e.abort(r.volume.id, r.snap.id)), this.opts.phaseDeadlineMs ?? 10_000, `abort of volume "${r.volume.name}"`);
      } catch (err) {
        this.log.warn({ groupSnapshot: group.name, volume: r.volume.name, err: (err as Error).message }, 'member copies not aborted by their engine; deleted with the member snapshot');
      }
    }));
    await removeMembers(this.opts.store, this.opts.snapshots, runs, this.log);
    await this.dropGroupDoc(group.name, group.id);
  }

  /** Deletes the group's document once no member document is left; else leaves it `deleting` for `collect`. */
  private async dropGroupDoc(name: string, id: string): Promise<void> {
    try {
      const left = await Promise.all((await getGroupDoc(this.opts.store, name))?.doc.members.map((m) => this.opts.snapshots.get(m.snapshotId).then(() => true, () => false)) ?? []);
      const gone = !left.some(Boolean);
      await updateGroupDoc(this.opts.store, name, (d) => (d.id !== id ? undefined : gone ? 'delete' : { ...d, state: 'deleting', readyToUse: false }));
    } catch (err) {
      if (!isStorageError(err, Code.NOT_FOUND)) this.log.warn({ groupSnapshot: name, err: (err as Error).message }, 'group snapshot document not removed now; the repair leader removes it');
    }
  }

  /** The same name again: the group when its members are the same volumes, else ALREADY_EXISTS. */
  private existing(doc: GroupSnapshotDoc, volumes: readonly string[]): GroupSnapshotDoc {
    const same = volumes.length === doc.members.length && volumes.every((v) => doc.members.some((m) => m.volumeId === v || m.volumeName === v));
    if (!same) {
      throw new StorageError(Code.ALREADY_EXISTS, `group snapshot "${doc.name}" already exists for volumes ${doc.members.map((m) => m.volumeName).join(',')}: choose another name`,
        { details: { groupSnapshot: doc.name } });
    }
    if (doc.state === 'creating') throw new StorageError(Code.UNAVAILABLE, `group snapshot "${doc.name}" is still being taken; try again`, { details: { groupSnapshot: doc.name } });
    if (doc.state === 'deleting') throw new StorageError(Code.FAILED_PRECONDITION, `group snapshot "${doc.name}" is being deleted`, { details: { groupSnapshot: doc.name } });
    return doc;
  }

  async get(name: string): Promise<GroupSnapshotDoc> {
    const doc = (await getGroupDoc(this.opts.store, name))?.doc;
    if (!doc || doc.state === 'deleting') throw new StorageError(Code.NOT_FOUND, `group snapshot "${name}" not found`, { details: { groupSnapshot: name } });
    return doc;
  }

  async list(): Promise<GroupSnapshotDoc[]> {
    const { docs, unreadable } = await listGroupDocs(this.opts.store);
    for (const err of unreadable) this.log.error({ err: err.message }, 'skipping a malformed group snapshot document');
    return docs.map((d) => d.doc).filter((d) => d.state !== 'deleting').sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1));
  }

  /** Removes the members, then the group's document. Not an error when there is none. */
  async delete(name: string): Promise<void> {
    await this.locks.run(name, async () => {
      const found = (await getGroupDoc(this.opts.store, name))?.doc;
      if (!found) return;
      const marked = await updateGroupDoc(this.opts.store, name, (d) => (d.state === 'deleting' ? undefined : { ...d, state: 'deleting', readyToUse: false }));
      for (const m of marked?.members ?? []) await this.opts.snapshots.delete(m.snapshotId);
      await this.dropGroupDoc(name, found.id);
      this.log.info({ groupSnapshot: name, groupId: found.id }, 'group snapshot deleted');
    });
  }

  /** For the repair leader: finishes `deleting` groups, and undoes `creating` ones a crash left (older than the stale limit). */
  async collect(now = Date.now()): Promise<void> {
    const staleMs = this.opts.staleCreatingMs ?? 15 * 60_000;
    for (const { doc } of (await listGroupDocs(this.opts.store)).docs) {
      const stale = doc.state === 'creating' && !this.inFlight.has(doc.id) && now - Date.parse(doc.createdAt) >= staleMs;
      if (doc.state !== 'deleting' && !stale) continue;
      if (stale) this.log.warn({ groupSnapshot: doc.name, groupId: doc.id }, 'group snapshot left half-taken by a crash; removing its members');
      await this.delete(doc.name).catch((err: unknown) => this.log.warn({ groupSnapshot: doc.name, err: (err as Error).message }, 'group snapshot cleanup failed; retrying next pass'));
    }
  }
}
