/**
 * The SnapshotRule model (docs/snapshots.md, "Snapshot rules"): what runs before and after a
 * snapshot to make it application-consistent. `validateSnapshotRule` turns a parsed document
 * (YAML or JSON, already an object) into a rule with every default filled in, or throws
 * INVALID_ARGUMENT listing every problem with its path ("spec.pre[1].timeoutSeconds: ...").
 * Unknown fields are errors: a misspelt `onErorr` must not silently become the default.
 */
import { Code, StorageError } from '../common/errors.js';

export const RULE_API_VERSION = 'cairn.dev/v1alpha1';
export const RULE_KIND = 'SnapshotRule';

export type ActionKind = 'exec' | 'command' | 'fsfreeze';
export type OnError = 'Fail' | 'Continue';
export type RunIn = 'one' | 'all';
export type RulePhase = 'pre' | 'post';

export const DEFAULT_TIMEOUT_SECONDS = 30;
export const MAX_TIMEOUT_SECONDS = 3600;

export interface RuleAction {
  /** A label for outcomes and logs; outcomes say `pre[0]` etc. without one. */
  name?: string;
  kind: ActionKind;
  /** exec only: the container of the selected pods; the pod's default container when unset. */
  container?: string;
  /** exec and command: the argument list (no shell unless the list starts one). Empty for fsfreeze. */
  command: string[];
  /** exec only: pods in the volume's namespace carrying all these labels. */
  matchLabels?: Record<string, string>;
  timeoutSeconds: number;
  onError: OnError;
  /** exec only: run in the first selected pod (by name) or in every one. */
  runIn: RunIn;
  /** pre exec/command only: keep the session open until the snapshot is taken (see hook-runner.ts). */
  background: boolean;
  /** background only: ready after this long without exiting, if it has not printed READY before. */
  readySeconds?: number;
}

export interface SnapshotRule {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  pre: RuleAction[];
  post: RuleAction[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : v === undefined ? 'nothing' : JSON.stringify(v) ?? String(v));

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;

/** A DNS-1123 subdomain (Kubernetes object names): lower-case letters, digits, '-' and '.', at most 253. */
export function isDnsSubdomain(s: string): boolean {
  return s.length > 0 && s.length <= 253 && DNS_SUBDOMAIN.test(s);
}

function isLabelKey(k: string): boolean {
  const slash = k.lastIndexOf('/');
  const prefix = slash >= 0 ? k.slice(0, slash) : undefined;
  const name = slash >= 0 ? k.slice(slash + 1) : k;
  if (prefix !== undefined && !isDnsSubdomain(prefix)) return false;
  return name.length > 0 && name.length <= 63 && LABEL_NAME.test(name);
}

/** Collects problems as "path: what is wrong"; `throwIfAny` reports them all at once. */
export class Problems {
  readonly list: string[] = [];
  add(path: string, message: string): void {
    this.list.push(`${path}: ${message}`);
  }
  throwIfAny(what: string): void {
    if (this.list.length === 0) return;
    throw new StorageError(Code.INVALID_ARGUMENT, `${what} is not valid: ${this.list.join('; ')}`, { details: { problems: [...this.list] } });
  }
}

function unknownFields(v: Obj, path: string, allowed: readonly string[], p: Problems): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) p.add(path ? `${path}.${k}` : k, `unknown field (known: ${allowed.join(', ')})`);
  }
}

function stringMap(v: unknown, path: string, p: Problems, keyCheck?: (k: string) => boolean, valueCheck?: (s: string) => boolean): Record<string, string> | undefined {
  if (!isObj(v)) {
    p.add(path, `must be a map of strings, got ${show(v)}`);
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (keyCheck && !keyCheck(k)) p.add(`${path}.${k}`, 'is not a valid label key (an optional DNS subdomain and "/", then 1-63 letters, digits, "-", "_" or ".")');
    if (typeof val !== 'string') p.add(`${path}.${k}`, `must be a string, got ${show(val)}`);
    else if (valueCheck && !valueCheck(val)) p.add(`${path}.${k}`, `is not a valid label value (at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit), got ${show(val)}`);
    else out[k] = val;
  }
  return out;
}

function seconds(v: unknown, path: string, p: Problems): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_TIMEOUT_SECONDS) return v;
  p.add(path, `must be a whole number of seconds between 1 and ${MAX_TIMEOUT_SECONDS}, got ${show(v)}`);
  return undefined;
}

function oneOf<T extends string>(v: unknown, path: string, choices: readonly T[], p: Problems): T | undefined {
  if (typeof v === 'string' && (choices as readonly string[]).includes(v)) return v as T;
  p.add(path, `must be one of ${choices.join(', ')}, got ${show(v)}`);
  return undefined;
}

const ACTION_FIELDS = ['name', 'kind', 'container', 'command', 'selector', 'timeoutSeconds', 'onError', 'runIn', 'background', 'readySeconds'] as const;
/** The fields each kind takes besides name, kind, timeoutSeconds and onError. */
const KIND_FIELDS: Record<ActionKind, readonly string[]> = {
  exec: ['container', 'command', 'selector', 'runIn', 'background', 'readySeconds'],
  command: ['command', 'background', 'readySeconds'],
  fsfreeze: [],
};

function commandList(v: unknown, path: string, p: Problems): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string') || v[0] === '') {
    p.add(path, `must be a non-empty list of strings (the program, then its arguments), got ${show(v)}`);
    return [];
  }
  return [...(v as string[])];
}

function selectorLabels(v: unknown, path: string, p: Problems): Record<string, string> | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object with matchLabels, got ${show(v)}`);
    return undefined;
  }
  unknownFields(v, path, ['matchLabels'], p);
  const labels = stringMap(v.matchLabels, `${path}.matchLabels`, p, isLabelKey, (s) => s.length <= 63 && LABEL_NAME.test(s));
  if (labels && Object.keys(labels).length === 0) p.add(`${path}.matchLabels`, 'must name at least one label (an empty selector would pick every pod)');
  return labels;
}

/** The fields every kind shares; then the kind's own. */
function validateAction(v: unknown, path: string, phase: RulePhase, p: Problems): RuleAction | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object with a kind, got ${show(v)}`);
    return undefined;
  }
  unknownFields(v, path, ACTION_FIELDS, p);
  const kind = oneOf<ActionKind>(v.kind, `${path}.kind`, ['exec', 'command', 'fsfreeze'], p);
  if (!kind) return undefined;
  for (const f of ACTION_FIELDS) {
    // A field at its default is harmless on any kind: the CRD's defaulting writes runIn and background into every action.
    const atDefault = (f === 'runIn' && v[f] === 'one') || (f === 'background' && v[f] === false);
    if (v[f] !== undefined && !atDefault && !['name', 'kind', 'timeoutSeconds', 'onError'].includes(f) && !KIND_FIELDS[kind].includes(f)) {
      p.add(`${path}.${f}`, `is not a field of ${kind} actions${f === 'command' ? ' (fsfreeze runs no command)' : ''}`);
    }
  }
  const action: RuleAction = {
    kind, command: [], timeoutSeconds: DEFAULT_TIMEOUT_SECONDS, onError: 'Fail', runIn: 'one', background: false,
  };
  if (v.name !== undefined) {
    if (typeof v.name === 'string' && v.name.length >= 1 && v.name.length <= 63) action.name = v.name;
    else p.add(`${path}.name`, `must be a string of 1-63 characters, got ${show(v.name)}`);
  }
  if (v.timeoutSeconds !== undefined) action.timeoutSeconds = seconds(v.timeoutSeconds, `${path}.timeoutSeconds`, p) ?? DEFAULT_TIMEOUT_SECONDS;
  if (v.onError !== undefined) action.onError = oneOf<OnError>(v.onError, `${path}.onError`, ['Fail', 'Continue'], p) ?? 'Fail';
  if (kind === 'fsfreeze') return action;
  action.command = commandList(v.command, `${path}.command`, p);
  if (kind === 'exec') {
    if (v.container !== undefined) {
      if (typeof v.container === 'string' && DNS_LABEL.test(v.container) && v.container.length <= 63) action.container = v.container;
      else p.add(`${path}.container`, `must be a container name (a DNS label), got ${show(v.container)}`);
    }
    if (v.selector === undefined) p.add(`${path}.selector`, 'is required for exec actions: say which pods with selector.matchLabels');
    else {
      const labels = selectorLabels(v.selector, `${path}.selector`, p);
      if (labels) action.matchLabels = labels;
    }
    if (v.runIn !== undefined) action.runIn = oneOf<RunIn>(v.runIn, `${path}.runIn`, ['one', 'all'], p) ?? 'one';
  }
  validateBackground(v, action, path, phase, p);
  return action;
}

function validateBackground(v: Obj, action: RuleAction, path: string, phase: RulePhase, p: Problems): void {
  if (v.background !== undefined) {
    if (typeof v.background !== 'boolean') p.add(`${path}.background`, `must be true or false, got ${show(v.background)}`);
    else if (v.background && phase === 'post') p.add(`${path}.background`, 'only pre actions can be background: a post action has no snapshot to hold its session open for');
    else action.background = v.background;
  }
  if (v.readySeconds === undefined) return;
  const ready = seconds(v.readySeconds, `${path}.readySeconds`, p);
  if (v.background !== true) p.add(`${path}.readySeconds`, 'is only for background actions (background: true)');
  else if (ready !== undefined && ready >= action.timeoutSeconds) {
    p.add(`${path}.readySeconds`, `must be less than timeoutSeconds (${action.timeoutSeconds}): the action must be ready before it times out`);
  } else if (ready !== undefined) action.readySeconds = ready;
}

function validateActions(v: unknown, path: string, phase: RulePhase, p: Problems): RuleAction[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    p.add(path, `must be a list of actions, got ${show(v)}`);
    return [];
  }
  return v.flatMap((a, i) => validateAction(a, `${path}[${i}]`, phase, p) ?? []);
}

function validateMetadata(v: unknown, p: Problems): Pick<SnapshotRule, 'name' | 'namespace' | 'labels' | 'annotations'> {
  if (!isObj(v)) {
    p.add('metadata', `must be an object with a name, got ${show(v)}`);
    return { name: '' };
  }
  unknownFields(v, 'metadata', ['name', 'namespace', 'labels', 'annotations'], p);
  const out: Pick<SnapshotRule, 'name' | 'namespace' | 'labels' | 'annotations'> = { name: typeof v.name === 'string' ? v.name : '' };
  if (typeof v.name !== 'string' || !isDnsSubdomain(v.name)) {
    p.add('metadata.name', `must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253), got ${show(v.name)}`);
  }
  if (v.namespace !== undefined) {
    if (typeof v.namespace === 'string' && DNS_LABEL.test(v.namespace) && v.namespace.length <= 63) out.namespace = v.namespace;
    else p.add('metadata.namespace', `must be a namespace name (a DNS label of at most 63), got ${show(v.namespace)}`);
  }
  if (v.labels !== undefined) out.labels = stringMap(v.labels, 'metadata.labels', p, isLabelKey) ?? {};
  if (v.annotations !== undefined) out.annotations = stringMap(v.annotations, 'metadata.annotations', p, isLabelKey) ?? {};
  return out;
}

/** Rules that span actions: one freeze per rule, and a post fsfreeze only thaws what a pre one froze. */
function crossChecks(rule: SnapshotRule, p: Problems): void {
  const preFreezes = rule.pre.map((a, i) => (a.kind === 'fsfreeze' ? i : -1)).filter((i) => i >= 0);
  if (preFreezes.length > 1) p.add(`spec.pre[${preFreezes[1]}]`, `the filesystem is already frozen by spec.pre[${preFreezes[0]}]: freeze it once`);
  const postFreezes = rule.post.map((a, i) => (a.kind === 'fsfreeze' ? i : -1)).filter((i) => i >= 0);
  if (postFreezes.length > 1) p.add(`spec.post[${postFreezes[1]}]`, `the filesystem is already thawed by spec.post[${postFreezes[0]}]: thaw it once`);
  if (postFreezes.length > 0 && preFreezes.length === 0) {
    p.add(`spec.post[${postFreezes[0]}]`, 'an fsfreeze in post thaws the filesystem a pre fsfreeze froze, and no pre action freezes it');
  }
}

/** Checks a parsed SnapshotRule document and fills in the defaults. INVALID_ARGUMENT lists every problem. */
export function validateSnapshotRule(doc: unknown, what = 'snapshot rule'): SnapshotRule {
  const p = new Problems();
  if (!isObj(doc)) {
    p.add('(document)', `must be an object (apiVersion, kind, metadata, spec), got ${show(doc)}`);
    p.throwIfAny(what);
  }
  const v = doc as Obj;
  unknownFields(v, '', ['apiVersion', 'kind', 'metadata', 'spec'], p);
  if (v.apiVersion !== RULE_API_VERSION) p.add('apiVersion', `must be ${RULE_API_VERSION}, got ${show(v.apiVersion)}`);
  if (v.kind !== RULE_KIND) p.add('kind', `must be ${RULE_KIND}, got ${show(v.kind)}`);
  const meta = validateMetadata(v.metadata, p);
  let pre: RuleAction[] = [];
  let post: RuleAction[] = [];
  if (!isObj(v.spec)) p.add('spec', `must be an object with pre and post lists, got ${show(v.spec)}`);
  else {
    unknownFields(v.spec, 'spec', ['pre', 'post'], p);
    pre = validateActions(v.spec.pre, 'spec.pre', 'pre', p);
    post = validateActions(v.spec.post, 'spec.post', 'post', p);
    if (pre.length === 0 && post.length === 0 && p.list.length === 0) p.add('spec', 'has no pre and no post actions: a rule must do something');
  }
  const rule: SnapshotRule = { ...meta, pre, post };
  crossChecks(rule, p);
  p.throwIfAny(meta.name ? `${what} "${meta.name}"` : what);
  return rule;
}

/**
 * A SnapshotRule custom resource as the Kubernetes API returns it (with uid, resourceVersion,
 * managedFields, ... in its metadata, and the CRD's defaults written in): the rule it declares.
 */
export function ruleFromCustomResource(obj: unknown): SnapshotRule {
  const o = (isObj(obj) ? obj : {}) as { apiVersion?: unknown; kind?: unknown; metadata?: Obj; spec?: unknown };
  const m = isObj(o.metadata) ? o.metadata : {};
  const metadata: Obj = { name: m.name };
  for (const k of ['namespace', 'labels', 'annotations'] as const) if (m[k] !== undefined) metadata[k] = m[k];
  const where = typeof m.namespace === 'string' ? `${m.namespace}/${String(m.name)}` : String(m.name);
  return validateSnapshotRule({ apiVersion: o.apiVersion, kind: o.kind, metadata, spec: o.spec }, `SnapshotRule ${where}`);
}

/** The rule as a SnapshotRule document (defaults written out), the inverse of validateSnapshotRule. */
export function ruleToDocument(rule: SnapshotRule): Record<string, unknown> {
  const action = (a: RuleAction): Record<string, unknown> => ({
    ...(a.name ? { name: a.name } : {}),
    kind: a.kind,
    ...(a.container ? { container: a.container } : {}),
    ...(a.kind === 'fsfreeze' ? {} : { command: [...a.command] }),
    ...(a.matchLabels ? { selector: { matchLabels: { ...a.matchLabels } } } : {}),
    timeoutSeconds: a.timeoutSeconds,
    onError: a.onError,
    ...(a.kind === 'exec' ? { runIn: a.runIn } : {}),
    ...(a.kind === 'fsfreeze' ? {} : { background: a.background }),
    ...(a.readySeconds !== undefined ? { readySeconds: a.readySeconds } : {}),
  });
  return {
    apiVersion: RULE_API_VERSION,
    kind: RULE_KIND,
    metadata: {
      name: rule.name,
      ...(rule.namespace ? { namespace: rule.namespace } : {}),
      ...(rule.labels ? { labels: { ...rule.labels } } : {}),
      ...(rule.annotations ? { annotations: { ...rule.annotations } } : {}),
    },
    spec: { pre: rule.pre.map(action), post: rule.post.map(action) },
  };
}

/** How outcomes and logs name an action: its name, else its place ("pre[1]"). */
export function actionLabel(action: RuleAction, phase: RulePhase, index: number): string {
  return action.name ?? `${phase}[${index}]`;
}
