/**
 * `cairnctl rule`: apply, list, inspect and delete snapshot rules (docs/snapshots.md,
 * "Snapshot rules"). The manifest is sent as text; cairnd checks it, so that errors are the
 * same from every client.
 */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { Code, fromNodeError, StorageError } from '../common/errors.js';
import type { ApiClient, SnapshotRuleActionMessage, SnapshotRuleMessage } from './api-client.js';
import { formatAge, keyValues, table } from './format.js';

export interface RuleCommandDeps {
  withClient: <T>(fn: (client: ApiClient) => Promise<T>) => Promise<T>;
  print: (json: unknown, human: () => string) => void;
}

/** A manifest from a file, or from stdin for "-". */
async function readManifest(file: string): Promise<{ text: string; source: string }> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return { text: Buffer.concat(chunks).toString('utf8'), source: 'stdin' };
  }
  try {
    return { text: await readFile(file, 'utf8'), source: file };
  } catch (err) {
    throw fromNodeError(err, `cannot read ${file}`);
  }
}

function actionSummary(a: SnapshotRuleActionMessage): string {
  if (a.kind === 'fsfreeze') return 'fsfreeze';
  const where = a.kind === 'exec' ? ` in ${Object.entries(a.matchLabels).map(([k, v]) => `${k}=${v}`).join(',')}${a.container ? `/${a.container}` : ''} (${a.runIn})` : '';
  return `${a.kind}${where}: ${a.command.join(' ')}`;
}

function actionsCell(actions: SnapshotRuleActionMessage[]): string {
  return actions.length ? actions.map((a) => (a.kind === 'fsfreeze' ? 'fsfreeze' : a.command[0] ?? a.kind)).join(', ') : '-';
}

export function ruleRows(rules: SnapshotRuleMessage[], nowMs: number): string {
  return table(['NAME', 'NAMESPACE', 'PRE', 'POST', 'GENERATION', 'UPDATED'], rules.map((r) => [
    r.name, r.namespace || '-', actionsCell(r.pre), actionsCell(r.post), String(r.generation), formatAge(r.updatedAt, nowMs),
  ]));
}

/** `rule inspect`: the rule's facts and one row per action, with every setting (defaults included). */
export function ruleDetail(r: SnapshotRuleMessage, nowMs: number): string {
  const head = keyValues([
    ['Name', r.name], ['Namespace', r.namespace || '-'], ['Generation', String(r.generation)],
    ['Created', `${r.createdAt} (${formatAge(r.createdAt, nowMs)})`], ['Updated', `${r.updatedAt} (${formatAge(r.updatedAt, nowMs)})`],
  ]);
  const rows = (phase: string, list: SnapshotRuleActionMessage[]): string[][] => list.map((a, i) => [
    a.name || `${phase}[${i}]`, actionSummary(a), `${a.timeoutSeconds}s`, a.onError,
    a.background ? `background${a.readySeconds ? `, ready after ${a.readySeconds}s` : ', ready at READY'}` : '-',
  ]);
  const actions = [...rows('pre', r.pre), ...rows('post', r.post)];
  const implied = r.pre.some((a) => a.kind === 'fsfreeze') && !r.post.some((a) => a.kind === 'fsfreeze') ? '\n(the fsfreeze is thawed right after the snapshot, before the post actions)' : '';
  return [head, '', table(['ACTION', 'RUNS', 'TIMEOUT', 'ON ERROR', 'HOLD'], actions) + implied].join('\n');
}

export function addRuleCommands(program: Command, deps: RuleCommandDeps): void {
  const rule = program.command('rule').description('snapshot rules: what runs before and after a snapshot (application-consistent snapshots)');
  rule.command('apply').description('create or replace the SnapshotRule documents of a YAML file (several at once)')
    .requiredOption('-f, --filename <file>', 'the YAML file ("-" for stdin)')
    .action((opts: { filename: string }) => deps.withClient(async (c) => {
      const { text, source } = await readManifest(opts.filename);
      if (!text.trim()) throw new StorageError(Code.INVALID_ARGUMENT, `${source} is empty: give a file with SnapshotRule documents`);
      const results = await c.applySnapshotRules(text, source);
      deps.print(results, () => results.map((r) => `snapshotrule/${r.name} ${r.outcome}`).join('\n'));
    }));
  rule.command('list').alias('ls').description('list snapshot rules').action(() => deps.withClient(async (c) => {
    const { rules, unreadable } = await c.listSnapshotRules();
    deps.print({ rules, unreadable }, () => [rules.length ? ruleRows(rules, Date.now()) : 'no snapshot rules',
      ...unreadable.map((u) => `unreadable: ${u}`)].join('\n'));
  }));
  rule.command('inspect <name>').description('show a rule with every action and its settings').action((name: string) => deps.withClient(async (c) => {
    const r = await c.getSnapshotRule(name);
    deps.print(r, () => ruleDetail(r, Date.now()));
  }));
  rule.command('delete <name>').alias('rm').description('delete a snapshot rule').action((name: string) => deps.withClient(async (c) => {
    await c.deleteSnapshotRule(name);
    deps.print({ deleted: name }, () => `snapshotrule/${name} deleted`);
  }));
}
