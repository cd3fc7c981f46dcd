/**
 * How cairnd reaches the Kubernetes API server: the in-cluster configuration (the service's
 * env vars and the service account's token and CA), or explicit options, and a small JSON
 * GET. Every failure is a StorageError whose code comes from the HTTP status; the
 * Kubernetes Status message goes into the error's message and details.
 *
 * The token is read again before every request: bound service account tokens rotate, and
 * the kubelet swaps the file under us. The token is never logged.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';

/** Where the kubelet mounts the service account's token, CA and namespace in a pod. */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** A larger answer is refused (a pod list of a namespace stays far below this). */
const MAX_BODY_BYTES = 32 * 1024 * 1024;

export interface KubeApiOptions {
  /** The API server's base URL: https://host:port (http:// is accepted for tests). */
  server: string;
  /** A bearer token, or a file to read it from before each request (tokenFile wins). */
  token?: string;
  tokenFile?: string;
  /** The CA that signed the API server's certificate (PEM), or a file holding it. */
  ca?: string | Buffer;
  caFile?: string;
  /** The deadline of one request, connection included. */
  requestTimeoutMs?: number;
}

/**
 * The configuration of a process running in a pod, or undefined outside Kubernetes (no
 * KUBERNETES_SERVICE_HOST). `dir` is the service account directory (tests point it elsewhere).
 */
export function inClusterConfig(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): KubeApiOptions | undefined {
  const host = env.KUBERNETES_SERVICE_HOST;
  if (!host) return undefined;
  const port = env.KUBERNETES_SERVICE_PORT || '443';
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return { server: `https://${hostPart}:${port}`, tokenFile: `${dir}/token`, caFile: `${dir}/ca.crt` };
}

/** What a request needs in RBAC terms, for the message of a 401/403. */
export interface KubeAccess {
  /** RBAC verbs, e.g. ['list'] or ['create', 'get']. */
  verbs: string[];
  /** The RBAC resource, e.g. "pods" or "pods/exec". */
  resource: string;
  namespace: string;
}

export interface KubeRequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** The credentials and TLS settings of one connection. */
export interface KubeConnectOptions {
  headers: Record<string, string>;
  ca?: string | Buffer;
}

/** The fields of a metav1.Status that Cairn reads. */
export interface KubeStatus {
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes?: { reason?: string; message?: string }[] };
}

/** Parses a metav1.Status out of a response body; undefined when it is not one. */
export function parseStatus(body: string): KubeStatus | undefined {
  try {
    const value: unknown = JSON.parse(body);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
    return value as KubeStatus;
  } catch {
    return undefined;
  }
}

function httpCode(statusCode: number): Code {
  if (statusCode === 401 || statusCode === 403) return Code.PERMISSION_DENIED;
  if (statusCode === 404) return Code.NOT_FOUND;
  if (statusCode === 400 || statusCode === 422) return Code.INVALID_ARGUMENT;
  if (statusCode === 409) return Code.ABORTED;
  if (statusCode === 429 || statusCode >= 500) return Code.UNAVAILABLE;
  return Code.UNKNOWN;
}

/** The StorageError for an HTTP answer `statusCode` with `body` (a Status, usually). */
export function httpStatusError(what: string, statusCode: number, body: string, access: KubeAccess): StorageError {
  const status = parseStatus(body);
  const said = status?.message ? `: ${status.message}` : '';
  const details = { httpStatus: statusCode, statusReason: status?.reason, verbs: access.verbs, resource: access.resource, namespace: access.namespace };
  const rbac = `the service account needs the RBAC verb(s) ${access.verbs.join(' and ')} on ${access.resource} in namespace ${access.namespace}`;
  if (statusCode === 401) {
    return new StorageError(Code.PERMISSION_DENIED, `${what}: the API server did not accept the service account token (HTTP 401${said}); ${rbac}`, { details });
  }
  if (statusCode === 403) {
    return new StorageError(Code.PERMISSION_DENIED, `${what}: forbidden (HTTP 403${said}); ${rbac}`, { details });
  }
  return new StorageError(httpCode(statusCode), `${what}: HTTP ${statusCode}${said}`, { details });
}

/** A connection that failed before any answer: UNAVAILABLE, the socket error as cause. */
export function connectionError(what: string, server: string, err: unknown): StorageError {
  const e = err as NodeJS.ErrnoException;
  const why = typeof e?.code === 'string' ? e.code : (e instanceof Error ? e.message : String(err));
  return new StorageError(Code.UNAVAILABLE, `${what}: cannot reach the API server at ${server} (${why})`, { cause: err, details: { server, errnoName: e?.code } });
}

/** The error for a fired signal: DEADLINE_EXCEEDED when its reason is a timeout, else CANCELLED. */
export function abortError(what: string, signal: AbortSignal): StorageError {
  const reason: unknown = signal.reason;
  const timedOut = (reason instanceof StorageError && reason.code === Code.DEADLINE_EXCEEDED)
    || (reason instanceof Error && reason.name === 'TimeoutError');
  return timedOut
    ? new StorageError(Code.DEADLINE_EXCEEDED, `${what}: deadline exceeded`, { cause: reason })
    : new StorageError(Code.CANCELLED, `${what}: cancelled`, { cause: reason });
}

export function deadlineError(what: string, timeoutMs: number): StorageError {
  return new StorageError(Code.DEADLINE_EXCEEDED, `${what}: no answer from the API server within ${timeoutMs} ms`, { details: { timeoutMs } });
}

async function readCredential(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new StorageError(Code.FAILED_PRECONDITION, `cannot read the ${what} at ${path} (${e.code ?? e.message})`, { cause: err, details: { path } });
  }
}

/** A client of the Kubernetes API server: credentials, URLs and JSON GETs. */
export class KubeApi {
  readonly server: URL;
  readonly requestTimeoutMs: number;

  constructor(private readonly options: KubeApiOptions, private readonly log: Logger) {
    let url: URL;
    try {
      url = new URL(options.server);
    } catch (err) {
      throw new StorageError(Code.INVALID_ARGUMENT, `invalid API server URL "${options.server}"`, { cause: err });
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new StorageError(Code.INVALID_ARGUMENT, `invalid API server URL "${options.server}": the scheme must be https (or http)`);
    }
    this.server = url;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** The URL of `path` (already encoded) with `query` on this server. */
  url(path: string, query?: URLSearchParams): URL {
    const url = new URL(this.server);
    url.pathname = `${url.pathname.replace(/\/$/, '')}${path}`;
    url.search = query ? query.toString() : '';
    return url;
  }

  /** The Authorization header (the token read now) and the CA of one connection. */
  async connectOptions(): Promise<KubeConnectOptions> {
    const headers: Record<string, string> = {};
    const token = this.options.tokenFile
      ? (await readCredential(this.options.tokenFile, 'service account token')).toString('utf8').trim()
      : this.options.token;
    if (token) headers.authorization = `Bearer ${token}`;
    const ca = this.options.caFile ? await readCredential(this.options.caFile, 'API server CA') : this.options.ca;
    return ca === undefined ? { headers } : { headers, ca };
  }

  /** GETs `path` and parses the JSON answer; `what` names the call in errors. */
  async getJson<T>(what: string, path: string, query: URLSearchParams | undefined, access: KubeAccess, opts: KubeRequestOptions = {}): Promise<T> {
    if (opts.signal?.aborted) throw abortError(what, opts.signal);
    const url = this.url(path, query);
    const conn = await this.connectOptions();
    if (opts.signal?.aborted) throw abortError(what, opts.signal);
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    const body = await this.request(what, url, conn, timeoutMs, access, opts.signal);
    try {
      return JSON.parse(body) as T;
    } catch (err) {
      throw new StorageError(Code.INTERNAL, `${what}: the API server's answer is not JSON`, { cause: err });
    }
  }

  private request(what: string, url: URL, conn: KubeConnectOptions, timeoutMs: number, access: KubeAccess, signal?: AbortSignal): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let settled = false;
      const settle = (err: StorageError | undefined, body?: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) {
          req.destroy();
          this.log.debug({ path: url.pathname, code: Code[err.code] }, 'kube api request failed');
          reject(err);
        } else resolve(body!);
      };
      const onAbort = (): void => settle(abortError(what, signal!));
      const timer = setTimeout(() => settle(deadlineError(what, timeoutMs)), timeoutMs);
      const headers = { ...conn.headers, accept: 'application/json' };
      const req = url.protocol === 'https:'
        ? https.request(url, { method: 'GET', headers, ...(conn.ca === undefined ? {} : { ca: conn.ca }) })
        : http.request(url, { method: 'GET', headers });
      signal?.addEventListener('abort', onAbort, { once: true });
      req.on('error', (err) => settle(connectionError(what, this.server.origin, err)));
      req.on('response', (res) => {
        readBody(res).then((body) => {
          const status = res.statusCode ?? 0;
          settle(status >= 200 && status < 300 ? undefined : httpStatusError(what, status, body, access), body);
        }, (err: unknown) => settle(err instanceof StorageError ? err : connectionError(what, this.server.origin, err)));
      });
      req.end();
    });
  }
}

/** Reads a response body as UTF-8, refusing one over MAX_BODY_BYTES. */
export function readBody(res: http.IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        res.destroy();
        reject(new StorageError(Code.RESOURCE_EXHAUSTED, `the API server's answer is larger than ${maxBytes} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('response aborted')));
  });
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

/** Refuses a namespace or container name (DNS label) or pod name (DNS subdomain) that Kubernetes would not have. */
export function validateName(kind: string, name: string, maxLength: number): void {
  const pattern = maxLength > 63 ? DNS_SUBDOMAIN : DNS_LABEL;
  if (typeof name !== 'string' || name.length === 0 || name.length > maxLength || !pattern.test(name)) {
    throw new StorageError(Code.INVALID_ARGUMENT, `invalid ${kind} name ${JSON.stringify(name)}`, { details: { [kind]: name } });
  }
}

function validLabelKey(key: string): boolean {
  const slash = key.lastIndexOf('/');
  const name = slash < 0 ? key : key.slice(slash + 1);
  const prefix = slash < 0 ? undefined : key.slice(0, slash);
  if (prefix !== undefined && (prefix.length === 0 || prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return false;
  return name.length > 0 && name.length <= 63 && LABEL_NAME.test(name);
}

/**
 * The equality-based label selector "k1=v1,k2=v2" (keys sorted) for `matchLabels`.
 * INVALID_ARGUMENT for an empty set (it would select every pod of the namespace) or a key
 * or value that is not a valid label.
 */
export function labelSelector(matchLabels: Record<string, string>): string {
  const keys = Object.keys(matchLabels ?? {}).sort();
  if (keys.length === 0) throw new StorageError(Code.INVALID_ARGUMENT, 'a pod selector needs at least one label');
  return keys.map((key) => {
    const value = matchLabels[key];
    const validValue = typeof value === 'string' && (value === '' || (value.length <= 63 && LABEL_NAME.test(value)));
    if (!validLabelKey(key) || !validValue) {
      throw new StorageError(Code.INVALID_ARGUMENT, `invalid label ${JSON.stringify(key)}=${JSON.stringify(value)} in a pod selector`, { details: { label: key } });
    }
    return `${key}=${value}`;
  }).join(',');
}

/** Refuses an exec target Kubernetes would not have, or an empty command. */
export function validateExecTarget(namespace: string, pod: string, container: string, command: string[]): void {
  validateName('namespace', namespace, 63);
  validateName('pod', pod, 253);
  if (container !== '') validateName('container', container, 63); // '' is the pod's default container
  if (!Array.isArray(command) || command.length === 0 || command.some((arg) => typeof arg !== 'string') || command[0] === '') {
    throw new StorageError(Code.INVALID_ARGUMENT, 'an exec command is a non-empty list of arguments, the program first');
  }
}
