/**
 * The snapshot rule RPCs of the cairnctl API (ApplySnapshotRule, ListSnapshotRules,
 * GetSnapshotRule, DeleteSnapshotRule): thin handlers over the rule store. The manifest is
 * parsed and checked here, in the daemon, so that every client gets the same validation.
 */
import type * as grpc from '@grpc/grpc-js';
import type { SnapshotRuleRecord } from '../cluster/snapshot-types.js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { parseRuleManifest } from '../snapshot/rule-manifest.js';
import type { SnapshotRuleStore, StoredRule } from '../snapshot/rule-store.js';
import type { RuleAction } from '../snapshot/snapshot-rule.js';
import { unary } from '../rpc/status.js';

export interface RuleApiContext {
  /** The rules in the cluster store; the rule RPCs answer UNIMPLEMENTED without it. */
  rules?: SnapshotRuleStore;
  nodeName: string;
  log: Logger;
}

function actionMessage(a: RuleAction): object {
  return {
    name: a.name ?? '', kind: a.kind, container: a.container ?? '', command: [...a.command], matchLabels: { ...a.matchLabels },
    timeoutSeconds: a.timeoutSeconds, onError: a.onError, runIn: a.runIn, background: a.background, readySeconds: a.readySeconds ?? 0,
  };
}

export function ruleMessage(s: StoredRule): object {
  const r = s.rule;
  return {
    name: r.name, namespace: r.namespace ?? '', pre: r.pre.map(actionMessage), post: r.post.map(actionMessage), generation: s.generation,
    createdAt: s.createdAt, updatedAt: s.updatedAt, labels: { ...r.labels }, annotations: { ...r.annotations },
  };
}

function requireRules(ctx: RuleApiContext): SnapshotRuleStore {
  if (!ctx.rules) throw new StorageError(Code.UNIMPLEMENTED, `this cairnd (${ctx.nodeName}) does not serve snapshot rules: upgrade it, or ask another node`);
  return ctx.rules;
}

function requireRuleName(request: { name?: string }): string {
  if (!request.name) throw new StorageError(Code.INVALID_ARGUMENT, 'the request has no snapshot rule name');
  return request.name;
}

export function ruleApiHandlers(ctx: RuleApiContext): grpc.UntypedServiceImplementation {
  const onUnexpected = (err: unknown, method: string): void => ctx.log.error({ err, method }, 'api call failed unexpectedly');
  const h = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req) => fn(req), onUnexpected, method);
  return {
    ApplySnapshotRule: h('ApplySnapshotRule', async (req: { manifest?: string; source?: string }) => {
      const rules = requireRules(ctx);
      if (!req.manifest?.trim()) throw new StorageError(Code.INVALID_ARGUMENT, `${req.source || 'manifest'}: is empty: give a file with SnapshotRule documents`);
      const parsed = parseRuleManifest(req.manifest, req.source || 'manifest');
      const results: object[] = [];
      for (const rule of parsed) {
        const { outcome, stored } = await rules.apply(rule);
        if (outcome !== 'unchanged') ctx.log.info({ rule: rule.name, outcome, generation: stored.generation }, 'snapshot rule applied');
        results.push({ name: rule.name, outcome, rule: ruleMessage(stored) });
      }
      return { results };
    }),
    ListSnapshotRules: h('ListSnapshotRules', async () => {
      const { rules, unreadable } = await requireRules(ctx).list();
      for (const err of unreadable) ctx.log.warn({ key: err.details.key, err: err.message }, 'snapshot rule document unreadable');
      return { rules: rules.map(ruleMessage), unreadable: unreadable.map((e) => e.message) };
    }),
    GetSnapshotRule: h('GetSnapshotRule', async (req: { name?: string }) => ruleMessage(await requireRules(ctx).get(requireRuleName(req)))),
    DeleteSnapshotRule: h('DeleteSnapshotRule', async (req: { name?: string }) => {
      const name = requireRuleName(req);
      await requireRules(ctx).delete(name);
      ctx.log.info({ rule: name }, 'snapshot rule deleted');
      return {};
    }),
  };
}

/** A rule's outcome as the API shows it (a snapshot's, a group member's). */
export function ruleOutcomeMessage(r: SnapshotRuleRecord): object {
  return {
    name: r.name, ok: r.ok, durationMs: r.durationMs,
    actions: r.actions.map((a) => ({
      action: a.action, phase: a.phase, kind: a.kind, step: a.step, target: a.target, status: a.status, exited: a.exitCode !== null, exitCode: a.exitCode ?? 0,
      durationMs: a.durationMs, errorCode: a.error?.code ?? '', errorMessage: a.error?.message ?? '', outputTail: a.outputTail ?? '',
    })),
  };
}
