/**
 * The one wrapper every CSI method goes through. In order, before the handler runs:
 * required fields are checked (INVALID_ARGUMENT naming the spec's field), the method's own
 * validation runs, and the per-id locks are taken (a busy id is ABORTED at once). The
 * handler gets an AbortSignal that fires when the client cancels the call or its deadline
 * passes. Its result or error becomes the reply here and only here: a StorageError keeps
 * its code (rpc/status.ts), anything else is INTERNAL, and a handler that throws
 * synchronously is no different. Each call logs one line (method, ids, durationMs, code),
 * its ids including the Kubernetes names the request carries (kube-log-fields.ts);
 * at debug level the request is logged too, with every field the spec marks csi_secret
 * (and mount flags, which the spec says may be sensitive) redacted.
 *
 * A service is built from a table of methods, e.g.
 *
 *   csiService('Node', {
 *     NodeUnstageVolume: {
 *       required: ['volume_id', 'staging_target_path'],
 *       locks: (r) => [volumeLockKey(r.volumeId)],
 *       handler: (r, { signal }) => stager.unstage(r.volumeId, r.stagingTargetPath, signal),
 *     },
 *   }, { log, locks });
 *
 * Methods of the service that the table leaves out answer UNIMPLEMENTED (and are logged).
 */
import * as grpc from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { toServiceError } from '../rpc/status.js';
import { camelCase, csiSecretFields, csiServiceDefinition, type CsiServiceName } from './csi-proto.js';
import type { CsiLocks } from './csi-locks.js';
import { kubeLogFields } from './kube-log-fields.js';

/** A decoded CSI request: proto-loader's plain object, camelCase keys, defaults filled in. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type CsiRequest = Record<string, any>;

export interface CsiCallContext {
  /** Aborts when the client cancels the call or its deadline passes (reason: a StorageError). */
  signal: AbortSignal;
  /** The call's logger (method and ids bound). */
  log: Logger;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export interface CsiMethod<Req extends CsiRequest = any, Res = any> {
  /**
   * Fields that must be set, by their spec names: "volume_id", "volume_capability.access_mode";
   * through a repeated field every element is checked ("volume_capabilities.access_mode").
   * Empty strings, lists and maps count as missing (the spec: a REQUIRED repeated or map
   * field has at least one element).
   */
  required?: readonly string[];
  /** Checks beyond presence, before any lock or side effect; throws StorageError (INVALID_ARGUMENT). */
  validate?: (request: Req) => void;
  /** The lock keys of the call (csi-locks.ts `volumeLockKey`, `snapshotLockKey`). */
  locks?: (request: Req) => readonly string[];
  /** Log fields of the call's ids, when the defaults (volumeId, node, snapshot) do not fit. */
  logIds?: (request: Req) => Record<string, unknown>;
  /** Log a successful call at debug instead of info (Probe, which a liveness probe calls every few seconds). */
  quiet?: boolean;
  handler: (request: Req, ctx: CsiCallContext) => Promise<Res> | Res;
}

export type CsiMethods = Record<string, CsiMethod>;

/** What `startCsiServer` serves: one CSI service, its definition and wrapped handlers. */
export interface CsiService {
  name: CsiServiceName;
  definition: grpc.ServiceDefinition;
  handlers: grpc.UntypedServiceImplementation;
}

export interface CsiCallOptions {
  /** Parent logger (e.g. `log.child({ component: 'csi' })`). */
  log: Logger;
  /** Shared by every CSI service of the process. */
  locks: CsiLocks;
}

export function csiService(name: CsiServiceName, methods: CsiMethods, options: CsiCallOptions): CsiService {
  const definition = csiServiceDefinition(name);
  for (const method of Object.keys(methods)) {
    if (!(method in definition)) throw new Error(`csi.v1.${name} has no method ${method}`);
  }
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const [method, def] of Object.entries(definition)) {
    const spec = methods[method] ?? unimplemented(name, method);
    const requestType = (def as unknown as { requestType?: { type?: { name?: string } } }).requestType?.type?.name ?? '';
    handlers[method] = wrapCsiMethod(method, requestType, spec, options);
  }
  return { name, definition, handlers };
}

function unimplemented(service: string, method: string): CsiMethod {
  return {
    handler: () => {
      throw new StorageError(Code.UNIMPLEMENTED, `${method} is not served by this cairnd (csi.v1.${service}): check its --role`);
    },
  };
}

/** Wraps one method into a grpc-js unary handler (see the file comment). */
export function wrapCsiMethod(method: string, requestType: string, spec: CsiMethod, options: CsiCallOptions): grpc.handleUnaryCall<CsiRequest, unknown> {
  const bound = new Set(Object.keys(options.log.bindings()));
  return (call, callback) => {
    const started = performance.now();
    const request = call.request ?? {};
    const ids = Object.fromEntries(Object.entries({ ...logIdsOf(spec, request), ...kubeLogFields(request) })
      .filter(([k, v]) => v !== undefined && v !== '' && !bound.has(k)));
    const log = options.log.child({ method, ...ids });
    const cancel = cancellation(call, method);
    let release: (() => void) | undefined;

    const run = async (): Promise<unknown> => {
      checkRequired(request, spec.required ?? []);
      spec.validate?.(request);
      const taken = options.locks.tryAcquire(spec.locks ? spec.locks(request) : []);
      if ('busy' in taken) throw new StorageError(Code.ABORTED, `an operation is already pending for ${taken.busy}: retry later`, { details: { lock: taken.busy } });
      release = taken.release;
      if (log.isLevelEnabled('debug')) log.debug({ request: redactRequest(requestType, request) }, 'csi request');
      return await spec.handler(request, { signal: cancel.signal, log });
    };

    run().then(
      (response) => finish(null, response ?? {}),
      (err: unknown) => finish(err, undefined),
    );

    function finish(err: unknown, response: unknown): void {
      release?.();
      cancel.dispose();
      const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
      if (err === null) {
        log[spec.quiet ? 'debug' : 'info']({ durationMs, code: 'OK' }, 'csi call');
        callback(null, response);
        return;
      }
      const status = toServiceError(err);
      const code = grpc.status[status.code ?? grpc.status.INTERNAL];
      if (err instanceof StorageError) log.warn({ durationMs, code, error: err.message }, 'csi call');
      else log.error({ durationMs, code, err }, 'csi call');
      callback(status as grpc.ServiceError);
    }
  };
}

/** An AbortSignal that fires on the client's cancel or the call's deadline. */
function cancellation(call: grpc.ServerUnaryCall<unknown, unknown>, method: string): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  const expire = (): void => controller.abort(new StorageError(Code.DEADLINE_EXCEEDED, `${method}: the call's deadline passed`));
  // A passed deadline also arrives as 'cancelled' (the client's own deadline timer usually
  // resets the stream first, which the server cannot tell from a cancel): by the clock, it
  // is DEADLINE_EXCEEDED when the server's deadline has passed, else CANCELLED.
  const onCancelled = (): void => {
    if (Number.isFinite(deadlineMs) && Date.now() >= deadlineMs) expire();
    else controller.abort(new StorageError(Code.CANCELLED, `${method}: the client cancelled the call`));
  };
  call.on('cancelled', onCancelled);
  if (call.cancelled) onCancelled();
  const timer = Number.isFinite(deadlineMs) ? setTimeout(expire, Math.min(Math.max(deadlineMs - Date.now(), 0), 2 ** 31 - 1)) : undefined;
  return {
    signal: controller.signal,
    dispose: () => {
      if (timer) clearTimeout(timer);
      call.removeListener('cancelled', onCancelled);
    },
  };
}

/** The call's ids for its log line; never throws (a malformed request is the wrapper's to refuse). */
function logIdsOf(spec: CsiMethod, request: CsiRequest): Record<string, unknown> {
  try {
    return spec.logIds ? spec.logIds(request) : defaultLogIds(request);
  } catch {
    return defaultLogIds(request);
  }
}

function defaultLogIds(request: CsiRequest): Record<string, unknown> {
  return {
    volume: request.volumeId || request.sourceVolumeId, // a CSI volume_id is the volume's name
    publishedNode: request.nodeId, // only ControllerPublish and ControllerUnpublish carry a node_id
    snapshot: request.snapshotId,
  };
}

/** INVALID_ARGUMENT naming the first required field (spec name) that is missing. */
export function checkRequired(request: CsiRequest, required: readonly string[]): void {
  for (const path of required) {
    const missing = findMissing(request, path.split('.'), '');
    if (missing !== undefined) {
      throw new StorageError(Code.INVALID_ARGUMENT, `${missing} is required`, { details: { field: missing } });
    }
  }
}

function findMissing(value: unknown, segments: string[], prefix: string): string | undefined {
  const [head, ...rest] = segments;
  if (head === undefined) return undefined;
  const at = prefix === '' ? head : `${prefix}.${head}`;
  const child = (value as Record<string, unknown> | null)?.[camelCase(head)];
  if (isEmpty(child)) return at;
  if (rest.length === 0) return undefined;
  if (Array.isArray(child)) {
    for (let i = 0; i < child.length; i++) {
      const m = findMissing(child[i], rest, `${at}[${i}]`);
      if (m !== undefined) return m;
    }
    return undefined;
  }
  return findMissing(child, rest, at);
}

function isEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === '') return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v).length === 0;
  return false;
}

const REDACTED = '[redacted]';

/**
 * A copy of `request` fit for a log: every field of its message type that carries the
 * csi_secret option is replaced, and so are mount flags inside volume capabilities.
 */
export function redactRequest(requestType: string, request: CsiRequest): CsiRequest {
  const copy: CsiRequest = { ...request };
  for (const field of csiSecretFields().get(requestType) ?? []) {
    if (field in copy) copy[field] = REDACTED;
  }
  if (copy.volumeCapability) copy.volumeCapability = redactCapability(copy.volumeCapability);
  if (Array.isArray(copy.volumeCapabilities)) copy.volumeCapabilities = copy.volumeCapabilities.map(redactCapability);
  return copy;
}

function redactCapability(capability: CsiRequest): CsiRequest {
  if (!capability?.mount?.mountFlags?.length) return capability;
  return { ...capability, mount: { ...capability.mount, mountFlags: REDACTED } };
}
