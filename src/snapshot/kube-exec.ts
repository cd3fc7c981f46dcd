/**
 * The Kubernetes pods/exec transport of snapshot-rule `exec` actions: list the running pods
 * a rule selects, and run a command in one of their containers.
 *
 * The protocol (facts from the Kubernetes API): a WebSocket upgrade of
 * GET /api/v1/namespaces/{ns}/pods/{pod}/exec?container=C&command=ARG…&stdout=true&stderr=true
 * offering the subprotocols v5.channel.k8s.io and v4.channel.k8s.io. Every binary message
 * starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the exit status (a JSON
 * metav1.Status), 4 terminal resize; v5 adds 255, "close channel N" (the next byte), which
 * ends the process's stdin without closing the connection. Success is exit code 0; a
 * Failure with reason NonZeroExitCode carries the code in the cause whose reason is
 * ExitCode; any other Failure means the command did not run as asked.
 */
import WebSocket from 'ws';
import type { IncomingMessage } from 'node:http';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import {
  type KubeAccess, type KubeApi, type KubeConnectOptions, type KubeStatus,
  abortError, connectionError, deadlineError, httpStatusError, labelSelector, readBody, validateExecTarget, validateName,
} from './kube-api.js';

export interface ExecOutput { stream: 'stdout' | 'stderr'; data: Buffer }
export interface ExecResult { exitCode: number }

/**
 * One command running in a container. `output` yields the command's stdout and stderr in
 * the order the API server sent them, and ends when the session ends (it never throws:
 * failures come through `done`). `done` settles with the exit code, or rejects with a
 * StorageError: the API server's refusal (PERMISSION_DENIED, NOT_FOUND, ...), UNAVAILABLE
 * when the connection fails, FAILED_PRECONDITION when the command could not run,
 * CANCELLED/DEADLINE_EXCEEDED on the signal or after `close()` before the command exited,
 * INTERNAL when the peer breaks the protocol. `close()` ends the session: stdin is closed
 * (v5), then the connection; it resolves once the connection is closed.
 */
export interface ExecSession {
  output: AsyncIterable<ExecOutput>;
  done: Promise<ExecResult>;
  close(): Promise<void>;
}

export interface OpenExecOptions {
  signal?: AbortSignal;
  /** Open stdin too (for `background` actions: the command gets EOF at close()). */
  stdin?: boolean;
}

export const PROTOCOL_V5 = 'v5.channel.k8s.io';
export const PROTOCOL_V4 = 'v4.channel.k8s.io';
const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, status: 3, resize: 4, close: 255 } as const;
/** Output nobody has read yet beyond this is dropped (and said once in the log). */
const MAX_BUFFERED_OUTPUT_BYTES = 4 * 1024 * 1024;
const MAX_STATUS_BYTES = 64 * 1024;
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** How long close() waits for the API server's closing handshake before dropping the socket. */
const CLOSE_GRACE_MS = 2_000;

const PODS_LIST: (ns: string) => KubeAccess = (namespace) => ({ verbs: ['list'], resource: 'pods', namespace });
/** A WebSocket exec is a GET that Kubernetes 1.35+ also checks for create: both are needed. */
const PODS_EXEC: (ns: string) => KubeAccess = (namespace) => ({ verbs: ['create', 'get'], resource: 'pods/exec', namespace });

interface PodList { items?: { metadata?: { name?: unknown; deletionTimestamp?: unknown }; status?: { phase?: unknown } }[] }

export class KubeExecClient {
  constructor(private readonly api: KubeApi, private readonly log: Logger) {}

  /** The names of the Running pods of `namespace` that match every label, not being deleted, sorted. */
  async listPods(namespace: string, matchLabels: Record<string, string>, opts: { signal?: AbortSignal } = {}): Promise<string[]> {
    validateName('namespace', namespace, 63);
    const query = new URLSearchParams({ labelSelector: labelSelector(matchLabels) });
    const what = `list pods in namespace ${namespace}`;
    const list = await this.api.getJson<PodList>(what, `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods`, query, PODS_LIST(namespace), opts);
    if (!Array.isArray(list?.items)) throw new StorageError(Code.INTERNAL, `${what}: the answer has no items list`);
    const names = list.items
      .filter((p) => p?.status?.phase === 'Running' && !p.metadata?.deletionTimestamp && typeof p.metadata?.name === 'string')
      .map((p) => p.metadata!.name as string);
    return names.sort();
  }

  /** Starts `command` (an argument list, no shell) in `container` of `pod` ('' for the pod's default container). */
  openExec(namespace: string, pod: string, container: string, command: string[], opts: OpenExecOptions = {}): ExecSession {
    const what = container ? `exec in container ${container} of pod ${namespace}/${pod}` : `exec in pod ${namespace}/${pod}`;
    const session = new KubeExecSession(what, Boolean(opts.stdin), this.api.requestTimeoutMs,
      this.log.child({ namespace, pod, container }), opts.signal);
    try {
      validateExecTarget(namespace, pod, container, command);
    } catch (err) {
      session.fail(err as StorageError);
      return session;
    }
    // Without a container the API server picks the pod's default one.
    const query = new URLSearchParams(container ? { container } : {});
    for (const arg of command) query.append('command', arg);
    query.append('stdout', 'true');
    query.append('stderr', 'true');
    if (opts.stdin) query.append('stdin', 'true');
    const url = this.api.url(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}/exec`, query);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    session.start(url, this.api.connectOptions(), PODS_EXEC(namespace), command[0] ?? '');
    return session;
  }
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  return Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}

function protocolError(what: string, problem: string): StorageError {
  return new StorageError(Code.INTERNAL, `${what}: the API server broke the exec protocol: ${problem}`, { details: { reason: 'EXEC_PROTOCOL' } });
}

/** The outcome a metav1.Status on the status channel stands for. */
export function execOutcome(what: string, value: unknown): ExecResult | StorageError {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return protocolError(what, 'the status is not a JSON object');
  const status = value as KubeStatus;
  if (status.status === 'Success') return { exitCode: 0 };
  if (status.status !== 'Failure') return protocolError(what, `unknown status ${JSON.stringify(status.status)}`);
  if (status.reason === 'NonZeroExitCode') {
    const cause = status.details?.causes?.find((c) => c?.reason === 'ExitCode');
    const text = typeof cause?.message === 'string' ? cause.message : '';
    const exitCode = /^\d{1,3}$/.test(text) ? Number(text) : NaN;
    if (!(exitCode >= 0 && exitCode <= 255)) return protocolError(what, `NonZeroExitCode without a valid ExitCode cause (${JSON.stringify(text)})`);
    return { exitCode };
  }
  return new StorageError(Code.FAILED_PRECONDITION, `${what} failed: ${status.message ?? status.reason ?? 'no message'}`,
    { details: { statusReason: status.reason, statusCode: status.code } });
}

/** Output waiting for its reader: a single-consumer async queue that never throws. */
class OutputQueue implements AsyncIterable<ExecOutput> {
  private readonly chunks: ExecOutput[] = [];
  private bufferedBytes = 0;
  private ended = false;
  private wake: (() => void) | undefined;

  /** False when the chunk was dropped (too much unread output). */
  push(chunk: ExecOutput): boolean {
    if (this.ended) return true;
    if (this.bufferedBytes + chunk.data.length > MAX_BUFFERED_OUTPUT_BYTES) return false;
    this.bufferedBytes += chunk.data.length;
    this.chunks.push(chunk);
    this.notify();
    return true;
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ExecOutput> {
    for (;;) {
      const chunk = this.chunks.shift();
      if (chunk) {
        this.bufferedBytes -= chunk.data.length;
        yield chunk;
      } else if (this.ended) {
        return;
      } else {
        await new Promise<void>((resolve) => { this.wake = resolve; });
      }
    }
  }
}

class KubeExecSession implements ExecSession {
  readonly output = new OutputQueue();
  readonly done: Promise<ExecResult>;
  private settle!: (outcome: ExecResult | StorageError) => void;
  private ws: WebSocket | undefined;
  private finished = false;
  private closeRequested = false;
  private droppedBytes = 0;
  private protocol = '';
  private statusBytes = Buffer.alloc(0);
  private connectTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private socketClosed: Promise<void> = Promise.resolve();
  private readonly onAbort = (): void => this.fail(abortError(this.what, this.signal!));

  constructor(private readonly what: string, private readonly stdin: boolean, private readonly connectTimeoutMs: number,
    private readonly log: Logger, private readonly signal: AbortSignal | undefined) {
    this.done = new Promise<ExecResult>((resolve, reject) => {
      this.settle = (outcome) => (outcome instanceof StorageError ? reject(outcome) : resolve(outcome));
    });
    this.done.catch(() => undefined);
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  start(url: URL, connect: Promise<KubeConnectOptions>, access: KubeAccess, program: string): void {
    if (this.signal?.aborted) return this.fail(abortError(this.what, this.signal));
    connect.then((conn) => this.dial(url, conn, access, program), (err: unknown) => this.fail(err as StorageError));
  }

  private dial(url: URL, conn: KubeConnectOptions, access: KubeAccess, program: string): void {
    if (this.finished) return;
    const ws = new WebSocket(url, [PROTOCOL_V5, PROTOCOL_V4], {
      headers: conn.headers, ...(conn.ca === undefined ? {} : { ca: conn.ca }),
      perMessageDeflate: false, followRedirects: false, maxPayload: MAX_MESSAGE_BYTES,
    });
    this.ws = ws;
    this.socketClosed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    this.connectTimer = setTimeout(() => this.fail(deadlineError(this.what, this.connectTimeoutMs)), this.connectTimeoutMs);
    ws.on('open', () => {
      clearTimeout(this.connectTimer);
      this.protocol = ws.protocol;
      this.log.debug({ protocol: ws.protocol, program }, 'exec session open');
    });
    ws.on('unexpected-response', (_req, res: IncomingMessage) => this.refused(res, access));
    ws.on('message', (data: WebSocket.RawData) => this.frame(toBuffer(data)));
    ws.on('error', (err) => this.fail(this.protocol
      ? new StorageError(Code.UNAVAILABLE, `${this.what}: the connection to the API server broke (${err.message})`, { cause: err })
      : connectionError(this.what, url.origin, err)));
    ws.on('close', (code) => this.closed(code));
  }

  private refused(res: IncomingMessage, access: KubeAccess): void {
    const statusCode = res.statusCode ?? 0;
    readBody(res, MAX_STATUS_BYTES).then(
      (body) => this.fail(httpStatusError(this.what, statusCode, body, access)),
      () => this.fail(httpStatusError(this.what, statusCode, '', access)));
  }

  private frame(message: Buffer): void {
    if (this.finished || message.length === 0) return;
    const channel = message[0]!;
    const data = message.subarray(1);
    if (channel === CHANNEL.stdout || channel === CHANNEL.stderr) {
      if (data.length > 0) this.emit({ stream: channel === CHANNEL.stdout ? 'stdout' : 'stderr', data });
    } else if (channel === CHANNEL.status) {
      this.statusFrame(data);
    } else if (channel === CHANNEL.close && this.protocol === PROTOCOL_V5) {
      this.log.debug({ channel: data[0] }, 'exec channel closed by the server');
    } else if ((channel === CHANNEL.stdin || channel === CHANNEL.resize) && data.length === 0) {
      // An empty message on a known channel carries nothing.
    } else {
      this.fail(protocolError(this.what, `an unexpected message on channel ${channel} (${data.length} bytes)`));
    }
  }

  private emit(chunk: ExecOutput): void {
    if (this.output.push(chunk)) return;
    if (this.droppedBytes === 0) this.log.warn({ maxBytes: MAX_BUFFERED_OUTPUT_BYTES }, 'exec output dropped: nobody reads it');
    this.droppedBytes += chunk.data.length;
  }

  /** The status may come in several messages: it is complete when it parses. */
  private statusFrame(data: Buffer): void {
    this.statusBytes = Buffer.concat([this.statusBytes, data]);
    const text = this.statusBytes.toString('utf8').trimStart();
    if (text.length === 0) return;
    if (!text.startsWith('{')) return this.fail(protocolError(this.what, 'the status is not JSON'));
    if (this.statusBytes.length > MAX_STATUS_BYTES) return this.fail(protocolError(this.what, `the status is over ${MAX_STATUS_BYTES} bytes`));
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return; // not complete yet
    }
    this.finish(execOutcome(this.what, value));
  }

  private closed(code: number): void {
    clearTimeout(this.graceTimer);
    if (this.finished) return;
    if (this.statusBytes.length > 0) return this.fail(protocolError(this.what, 'the status is not complete JSON'));
    if (this.closeRequested) {
      return this.fail(new StorageError(Code.CANCELLED, `${this.what}: the session was closed before the command exited`));
    }
    this.fail(new StorageError(Code.UNAVAILABLE, `${this.what}: the API server closed the connection before the exit status (WebSocket close code ${code})`,
      { details: { closeCode: code } }));
  }

  fail(err: StorageError): void {
    this.finish(err instanceof StorageError ? err : new StorageError(Code.INTERNAL, `${this.what}: ${String(err)}`, { cause: err }));
  }

  /** Settles `done` once; a failure drops the connection, a result closes it politely. */
  private finish(outcome: ExecResult | StorageError): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.connectTimer);
    this.signal?.removeEventListener('abort', this.onAbort);
    this.output.end();
    const ws = this.ws;
    if (outcome instanceof StorageError) {
      this.log.debug({ code: Code[outcome.code], droppedBytes: this.droppedBytes }, 'exec session failed');
      ws?.terminate();
    } else {
      this.log.debug({ exitCode: outcome.exitCode, droppedBytes: this.droppedBytes }, 'exec session exited');
      if (ws?.readyState === WebSocket.OPEN) this.closeSocket(ws);
    }
    this.settle(outcome);
  }

  private closeSocket(ws: WebSocket): void {
    ws.close(1000);
    this.graceTimer = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
    this.graceTimer.unref();
  }

  async close(): Promise<void> {
    if (!this.closeRequested) {
      this.closeRequested = true;
      const ws = this.ws;
      if (ws?.readyState === WebSocket.OPEN) {
        if (this.stdin && this.protocol === PROTOCOL_V5) ws.send(Buffer.from([CHANNEL.close, CHANNEL.stdin]));
        this.closeSocket(ws);
      } else if (!ws || ws.readyState === WebSocket.CONNECTING) {
        this.fail(new StorageError(Code.CANCELLED, `${this.what}: the session was closed before it started`));
      }
    }
    await this.socketClosed;
  }
}
