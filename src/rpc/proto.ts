/** Loads Cairn's .proto files at run time (no generated code to keep in sync). */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

/** proto/ at the package root; the same from src/rpc and from dist/rpc. */
export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number, // byte counts stay below 2^53
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

export function loadPackage(file: string): grpc.GrpcObject {
  const definition = protoLoader.loadSync(file, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition);
}

/** Walks "cairn.api.v1.CairnApi" down the loaded package tree. */
export function serviceConstructor(pkg: grpc.GrpcObject, path: string): grpc.ServiceClientConstructor {
  let node: unknown = pkg;
  for (const part of path.split('.')) node = (node as Record<string, unknown>)[part];
  if (typeof node !== 'function') throw new Error(`service ${path} not found in the loaded protos`);
  return node as grpc.ServiceClientConstructor;
}
