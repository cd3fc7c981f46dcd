/**
 * One unary call on a grpc-js client made from a service definition, by method name, with a
 * deadline; a failure becomes the StorageError the server sent (rpc/status.ts).
 */
import type * as grpc from '@grpc/grpc-js';
import { fromServiceError } from './status.js';

type UnaryMethod = (request: object, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export function unaryCall<Res>(client: grpc.Client, method: string, request: object, deadlineMs: number): Promise<Res> {
  const fn = (client as unknown as Record<string, UnaryMethod | undefined>)[method];
  if (!fn) return Promise.reject(new TypeError(`the client has no method ${method}`));
  return new Promise<Res>((resolve, reject) => {
    fn.call(client, request, { deadline: Date.now() + deadlineMs }, (err, res) => {
      if (err) reject(fromServiceError(err));
      else resolve(res as Res);
    });
  });
}
