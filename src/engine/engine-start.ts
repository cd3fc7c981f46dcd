/**
 * How the volume engine (volume-engine.ts) starts: it opens I/O to every replica the document
 * calls in sync, in parallel. Those that cannot be reached, and those the document calls
 * rebuilding (this engine does not write to them until it reaches them), are faulted durably,
 * with their dirty-region maps saved (or `fullRebuild` recorded), before the engine serves
 * anything. A replica that has seen a newer epoch fences the engine; none reachable is
 * UNAVAILABLE.
 */
import { Code, StorageError, isStaleEpoch } from '../common/errors.js';
import { type Member, newestEpochOf, openReplicaIo, replicaError } from './engine-member.js';
import type { RebuilderDeps } from './engine-rebuild.js';
import { RegionMap } from './region-map.js';

/** The engine's parts that its start uses: those the rebuilder is given, short of the locks and the rate. */
export type EngineStartDeps = Pick<RebuilderDeps, 'ctx' | 'life' | 'members' | 'maps' | 'faults' | 'connector' | 'control'>;

/** Opens the in-sync replicas and faults the rest (see above); the engine starts its timers after. */
export async function openMembers(deps: EngineStartDeps): Promise<void> {
  const { ctx } = deps;
  const { failed, reasons } = await openInSync(deps);
  const notSaved: Member[] = [];
  for (const m of failed) {
    m.map = deps.maps.load(m) ?? RegionMap.full(ctx.sizeBytes, ctx.regionBytes);
    if (!deps.faults.trySave(m)) notSaved.push(m);
  }
  const rebuilding: Member[] = [];
  for (const m of deps.members.values()) {
    if (m.entry.state === 'in-sync') continue;
    if (m.entry.state === 'rebuilding') rebuilding.push(m);
    deps.maps.restore(m);
  }
  deps.members.refresh();
  // A replica the document calls rebuilding is not written to until this engine reaches it: it
  // must not stay "rebuilding", or a later engine elsewhere would trust its rebuild checkpoint,
  // which lacks what this engine writes meanwhile.
  const toFault = [...failed, ...rebuilding];
  if (toFault.length > 0) {
    const why = [...reasons, ...rebuilding.map((m) => `${m.id}: rebuilding again once this engine reaches it`)];
    await deps.faults.controlStep(async () => {
      await deps.control.markFaulted(toFault.map((m) => m.id), `engine start at epoch ${ctx.epoch}: ${why.join('; ')}`, notSaved.map((m) => m.id));
      for (const m of notSaved) m.fullRebuild = true;
    });
    ctx.log.warn({ replicas: toFault.map((m) => m.id), reasons: why, fullRebuild: notSaved.map((m) => m.id) }, 'replicas not in the I/O path at engine start; faulted');
  }
  if (notSaved.length > 0) deps.faults.saveInBackground();
}

/** Opens the in-sync replicas in parallel; throws when fenced or when none answers. */
async function openInSync(deps: EngineStartDeps): Promise<{ failed: Member[]; reasons: string[] }> {
  const { ctx } = deps;
  const wanted = [...deps.members.values()].filter((m) => m.entry.state === 'in-sync');
  const results = await Promise.allSettled(wanted.map((m) => openReplicaIo(ctx, deps.connector, m)));
  const failed: Member[] = [];
  const reasons: string[] = [];
  let stale: StorageError | undefined;
  results.forEach((r, i) => {
    const m = wanted[i]!;
    if (r.status === 'fulfilled') {
      m.io = r.value;
      m.role = 'in-sync';
      return;
    }
    const err = replicaError(m, r.reason, ctx.timeoutMs);
    if (isStaleEpoch(err)) stale ??= err;
    failed.push(m);
    reasons.push(`${m.id} on node ${m.entry.nodeId}: ${err.message}`);
  });
  if (stale) throw deps.life.fence(newestEpochOf(stale), stale);
  if (failed.length === wanted.length) {
    throw new StorageError(Code.UNAVAILABLE, `no in-sync replica of volume ${ctx.name} is reachable: ${reasons.join('; ') || 'none is in sync'}`,
      { details: { volumeId: ctx.volumeId } });
  }
  return { failed, reasons };
}
