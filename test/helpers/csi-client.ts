/**
 * A CSI client for tests, over the driver's unix socket, as kubelet and the sidecars
 * dial it. Every method of every CSI service is a promise-returning call that never
 * rejects on a gRPC error: it resolves to `{ code, message }` with the status code, so a
 * conformance test asserts the exact code. `ok()` unwraps a success or fails with the code.
 *
 *   const csi = await csiClient(socketPath);
 *   const res = await csi.controller.CreateVolume({ name: 'pvc-1', volumeCapabilities: [...] });
 *   t.is(res.code, grpc.status.OK);
 *   const info = ok(await csi.identity.GetPluginInfo({}));
 *   csi.close();
 *
 * Requests and responses are proto-loader objects: camelCase fields, enums as strings,
 * int64 as numbers, defaults filled in.
 */
import * as grpc from '@grpc/grpc-js';
import { csiServiceClient, type CsiServiceName } from '../../src/csi/csi-proto.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type CsiMessage = Record<string, any>;

export type CsiResult<T = CsiMessage> =
  | { code: grpc.status.OK; response: T; message?: undefined }
  | { code: Exclude<grpc.status, grpc.status.OK>; message: string; response?: undefined };

export interface CallOptions {
  /** Deadline of the call, from now. */
  timeoutMs?: number;
  /** Aborting it cancels the call (the server sees the client's cancel). */
  signal?: AbortSignal;
}

export type CsiMethodCall = (request: CsiMessage, options?: CallOptions) => Promise<CsiResult>;
export type CsiServiceCalls = Record<string, CsiMethodCall>;

export interface CsiTestClient {
  identity: CsiServiceCalls;
  controller: CsiServiceCalls;
  node: CsiServiceCalls;
  groupController: CsiServiceCalls;
  close(): void;
}

const SERVICES: Record<keyof Omit<CsiTestClient, 'close'>, CsiServiceName> = {
  identity: 'Identity',
  controller: 'Controller',
  node: 'Node',
  groupController: 'GroupController',
};

/** Connects to `socketPath` (waits until the channel is ready, up to `readyTimeoutMs`). */
export async function csiClient(socketPath: string, readyTimeoutMs = 10_000): Promise<CsiTestClient> {
  const target = `unix:${socketPath.replace(/^unix:\/\//, '')}`;
  const clients: grpc.Client[] = [];
  const result: Partial<CsiTestClient> = {};
  for (const [key, name] of Object.entries(SERVICES) as [keyof typeof SERVICES, CsiServiceName][]) {
    const Ctor = csiServiceClient(name);
    const client = new Ctor(target, grpc.credentials.createInsecure());
    clients.push(client);
    result[key] = calls(client, Ctor.service);
  }
  await new Promise<void>((resolve, reject) => {
    clients[0]!.waitForReady(Date.now() + readyTimeoutMs, (err) => (err ? reject(err) : resolve()));
  });
  return { ...(result as Omit<CsiTestClient, 'close'>), close: () => clients.forEach((c) => c.close()) };
}

function calls(client: grpc.Client, definition: grpc.ServiceDefinition): CsiServiceCalls {
  const out: CsiServiceCalls = {};
  for (const method of Object.keys(definition)) {
    if (definition[method]!.responseStream) continue;
    const fn = (client as unknown as Record<string, grpc.requestCallback<CsiMessage> & ((...a: unknown[]) => grpc.ClientUnaryCall)>)[method]!.bind(client);
    out[method] = (request, options = {}) => new Promise<CsiResult>((resolve) => {
      const callOptions: grpc.CallOptions = options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
      const call = fn(request, new grpc.Metadata(), callOptions, (err: grpc.ServiceError | null, response?: CsiMessage) => {
        options.signal?.removeEventListener('abort', onAbort);
        if (err) resolve({ code: err.code as Exclude<grpc.status, grpc.status.OK>, message: err.details });
        else resolve({ code: grpc.status.OK, response: response ?? {} });
      });
      const onAbort = (): void => call.cancel();
      if (options.signal?.aborted) call.cancel();
      else options.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
  return out;
}

/** The response of a successful call; throws with the status code's name otherwise. */
export function ok<T>(result: CsiResult<T>): T {
  if (result.code === grpc.status.OK) return result.response;
  throw new Error(`CSI call failed: ${grpc.status[result.code]} (${result.code}): ${result.message}`);
}

/** The name of a status code, for readable assertions: codeName(res) === 'ABORTED'. */
export function codeName(result: CsiResult<unknown>): string {
  return grpc.status[result.code];
}
