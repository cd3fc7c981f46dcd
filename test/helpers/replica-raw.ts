/**
 * Raw Io streams for abuse tests: send any bytes or any IoBatch as frames and collect
 * what comes back, including the final status.
 */
import * as grpc from '@grpc/grpc-js';
import type { ReplicaClient } from '../../src/replica/replica-client.js';
import { IO_METHOD_PATH, replicaServiceConstructor, type IoBatchMessage, type IoReplyBatchMessage } from '../../src/replica/replica-wire.js';

export interface RawOutcome {
  replies: IoReplyBatchMessage[];
  code: grpc.status;
  details: string;
}

/** Sends `frames` (raw bytes, or IoBatch objects to encode), half-closes, and waits for the end. */
export function rawIo(client: ReplicaClient, frames: (Buffer | IoBatchMessage)[]): Promise<RawOutcome> {
  const io = replicaServiceConstructor().service.Io!;
  const call = client.grpcClient.makeBidiStreamRequest(IO_METHOD_PATH,
    (f: Buffer | IoBatchMessage) => (Buffer.isBuffer(f) ? f : io.requestSerialize(f)),
    (b: Buffer) => io.responseDeserialize(b) as IoReplyBatchMessage);
  const replies: IoReplyBatchMessage[] = [];
  return new Promise((resolve) => {
    call.on('data', (m: IoReplyBatchMessage) => replies.push(m));
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => resolve({ replies, code: s.code, details: s.details }));
    for (const f of frames) call.write(f);
    call.end();
  });
}
