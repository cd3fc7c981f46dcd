/**
 * `cairnctl snapshot group`: create, list, inspect and delete group snapshots (one cut of
 * several volumes' write stream; docs/snapshots.md, "Group snapshots"). Members are ordinary
 * snapshots: `cairnctl snapshot restore <member>` restores one. With `--rule`, a snapshot
 * rule runs for every member around the cut, and inspect shows each member's outcomes.
 */
import type { Command } from 'commander';
import { Code, StorageError } from '../common/errors.js';
import type { ApiClient, GroupSnapshotMessage } from './api-client.js';
import { formatAge, formatPause, keyValues, ruleOutcomeText, table } from './format.js';

export interface GroupCommandDeps {
  withClient: <T>(fn: (client: ApiClient) => Promise<T>) => Promise<T>;
  print: (json: unknown, human: () => string) => void;
}

const msText = (ms: number): string => `${ms.toFixed(1)} ms`;
const maxPause = (g: GroupSnapshotMessage): number => Math.max(0, ...g.members.map((m) => m.pauseUs));

export function groupRows(groups: GroupSnapshotMessage[], nowMs: number): string {
  return table(['NAME', 'STATE', 'MEMBERS', 'LONGEST PAUSE', 'TOTAL', 'AGE'], groups.map((g) => [
    g.name, g.readyToUse ? 'ready' : g.state, String(g.members.length), formatPause(maxPause(g)), msText(g.phases?.totalMs ?? 0), formatAge(g.createdAt, nowMs),
  ]));
}

/** `snapshot group inspect`: the group's facts, its phases, and one row per member with its pause window. */
export function groupDetail(g: GroupSnapshotMessage, nowMs: number): string {
  const p = g.phases ?? { preMs: 0, pauseMs: 0, cutMs: 0, resumeMs: 0, finishMs: 0, totalMs: 0 };
  const head = keyValues([
    ['Name', g.name], ['Id', g.id], ['State', g.readyToUse ? 'ready' : g.state], ['Created', `${g.createdAt} (${formatAge(g.createdAt, nowMs)})`],
    ['Phases', `pre ${msText(p.preMs)}, pause ${msText(p.pauseMs)}, cut ${msText(p.cutMs)}, resume ${msText(p.resumeMs)}, finish ${msText(p.finishMs)}`],
    ['Total', msText(p.totalMs)],
  ]);
  const rows = g.members.map((m) => [m.volumeName, m.snapshotName, formatPause(m.pauseUs), msText(m.drainMs)]);
  const rules = g.members.flatMap((m) => (m.rule ? ['', `${m.volumeName}: ${ruleOutcomeText(m.rule)}`] : []));
  return [head, '', table(['VOLUME', 'SNAPSHOT', 'WRITES PAUSED', 'DRAIN'], rows), ...rules].join('\n');
}

export function addGroupCommands(snapshot: Command, deps: GroupCommandDeps): void {
  const group = snapshot.command('group').description('group snapshots: one cut across several volumes on any nodes');
  group.command('create <name>').description('snapshot several volumes at one cut of their writes (all or nothing)')
    .requiredOption('--volumes <a,b,c>', 'the member volumes (names or ids), comma-separated')
    .option('--rule <rule>', 'run this snapshot rule for every member around the cut (cairnctl rule list)')
    .action((name: string, opts: { volumes: string; rule?: string }) => deps.withClient(async (c) => {
      const volumes = opts.volumes.split(',').map((v) => v.trim()).filter(Boolean);
      if (volumes.length === 0) throw new StorageError(Code.INVALID_ARGUMENT, '--volumes names no volume');
      const g = await c.createGroupSnapshot(name, volumes, opts.rule);
      deps.print(g, () => `group snapshot ${g.name} ${g.readyToUse ? 'ready' : g.state} (${g.members.length} members, longest pause ${formatPause(maxPause(g))}, total ${msText(g.phases?.totalMs ?? 0)})`);
    }));
  group.command('list').alias('ls').description('list group snapshots').action(() => deps.withClient(async (c) => {
    const gs = await c.listGroupSnapshots();
    deps.print(gs, () => (gs.length ? groupRows(gs, Date.now()) : 'no group snapshots'));
  }));
  group.command('inspect <name>').description('show a group snapshot: its phases and each member\'s pause').action((name: string) => deps.withClient(async (c) => {
    const g = await c.getGroupSnapshot(name);
    deps.print(g, () => groupDetail(g, Date.now()));
  }));
  group.command('delete <name>').alias('rm').description('delete a group snapshot and its member snapshots').action((name: string) => deps.withClient(async (c) => {
    await c.deleteGroupSnapshot(name);
    deps.print({ deleted: name }, () => `group snapshot ${name} deleted`);
  }));
}
