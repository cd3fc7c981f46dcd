/**
 * The `exec` kind over a Kubernetes pods/exec client: pods are selected by labels in the
 * volume's namespace (sorted by name; `runIn: one` takes the first), the command runs in the
 * action's container (the pod's default container when the rule names none: an empty
 * container name). The client itself (src/snapshot/kube-exec.ts, the pods/exec protocol)
 * is built apart; `ExecClient` is the shape this transport needs from it.
 */
import { Code, StorageError } from '../common/errors.js';
import type { ActionSession, ActionTransport, OutputChunk, RuleContext, SessionEnd } from './action-transport.js';
import type { RuleAction } from './snapshot-rule.js';

export interface ExecSession {
  output: AsyncIterable<{ stream: 'stdout' | 'stderr'; data: Buffer }>;
  done: Promise<{ exitCode: number }>;
  /** Closes the session (the process in the container gets its stdin closed and the stream ends). */
  close(): Promise<void>;
}

export interface ExecClient {
  listPods(namespace: string, matchLabels: Record<string, string>): Promise<string[]>;
  openExec(namespace: string, pod: string, container: string, command: string[], opts: { signal?: AbortSignal; stdin?: boolean }): ExecSession;
}

function labelsText(labels: Record<string, string>): string {
  return Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',');
}

export class ExecTransport implements ActionTransport {
  constructor(private readonly client: ExecClient) {}

  async targets(action: RuleAction, ctx: RuleContext): Promise<string[]> {
    if (!ctx.namespace) {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${ctx.volume}" has no Kubernetes namespace: exec actions select pods in the namespace of the volume's claim`,
        { details: { volume: ctx.volume } });
    }
    const labels = action.matchLabels ?? {};
    const pods = [...await this.client.listPods(ctx.namespace, labels)].sort();
    if (pods.length === 0) {
      throw new StorageError(Code.FAILED_PRECONDITION, `no pod in namespace ${ctx.namespace} matches ${labelsText(labels)}: check the rule's selector.matchLabels and that the application runs`,
        { details: { namespace: ctx.namespace, matchLabels: labels } });
    }
    return pods;
  }

  start(action: RuleAction, target: string, ctx: RuleContext, onOutput: (chunk: OutputChunk) => void): ActionSession {
    const abort = new AbortController();
    // A background action gets stdin: ending its session closes it, and the command (made to
    // wait on stdin) ends; Kubernetes does not kill an exec'd process when its session ends.
    const session = this.client.openExec(ctx.namespace!, target, action.container ?? '', [...action.command], { signal: abort.signal, stdin: action.background === true });
    const pump = (async () => {
      for await (const chunk of session.output) onOutput(chunk);
    })().catch(() => undefined);
    const done: Promise<SessionEnd> = session.done.then(
      async (r) => {
        await pump;
        return { exitCode: r.exitCode };
      },
      (err: unknown) => (abort.signal.aborted ? { exitCode: null, signal: 'SIGKILL' }
        : { exitCode: null, error: err instanceof StorageError ? err : new StorageError(Code.UNAVAILABLE, `exec in pod ${target}: ${(err as Error).message}`, { cause: err }) }),
    );
    return {
      done,
      kill: () => {
        abort.abort();
        void session.close().catch(() => undefined);
      },
      stop: async (graceMs) => {
        await session.close().catch(() => undefined);
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([done, new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); })]);
        clearTimeout(timer);
        abort.abort();
        await done;
      },
    };
  }
}
