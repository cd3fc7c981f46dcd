/**
 * The CSI wire (proto/csi/v1/csi.proto, spec v1.12.0), loaded once: service definitions
 * for the server and clients, and which request fields the specification marks
 * `csi_secret` (they are never logged).
 */
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadPackage, PROTO_ROOT, serviceConstructor } from '../rpc/proto.js';

export const CSI_PROTO_FILE = 'csi/v1/csi.proto';

/** The CSI services Cairn serves (SnapshotMetadata is streaming and not served). */
export type CsiServiceName = 'Identity' | 'Controller' | 'Node' | 'GroupController';

let loaded: grpc.GrpcObject | undefined;

export function csiPackage(): grpc.GrpcObject {
  loaded ??= loadPackage(CSI_PROTO_FILE);
  return loaded;
}

/** The grpc-js client constructor of a CSI service (its `.service` is the definition). */
export function csiServiceClient(name: CsiServiceName | 'SnapshotMetadata'): grpc.ServiceClientConstructor {
  return serviceConstructor(csiPackage(), `csi.v1.${name}`);
}

export function csiServiceDefinition(name: CsiServiceName | 'SnapshotMetadata'): grpc.ServiceDefinition {
  return csiServiceClient(name).service;
}

let secrets: ReadonlyMap<string, ReadonlySet<string>> | undefined;

/**
 * Fields carrying `[(csi_secret) = true]`, by message name ("CreateVolumeRequest" →
 * {"secrets"}), in the loader's camelCase. proto-loader drops custom field options from
 * the descriptors it hands out, so they are read from the .proto source itself: one field
 * a line, as csi.proto is written.
 */
export function csiSecretFields(): ReadonlyMap<string, ReadonlySet<string>> {
  secrets ??= scanSecretFields(readFileSync(join(PROTO_ROOT, CSI_PROTO_FILE), 'utf8'));
  return secrets;
}

export function scanSecretFields(source: string): Map<string, Set<string>> {
  const found = new Map<string, Set<string>>();
  const scopes: string[] = []; // message name, or '' for enums/oneofs/services/extends
  for (const raw of source.split('\n')) {
    const line = raw.replace(/\/\/.*$/, '').trim();
    const open = /^(message|enum|oneof|service|extend)\s+([\w.]+)\s*\{/.exec(line);
    if (open) {
      scopes.push(open[1] === 'message' ? open[2]! : '');
      if (line.endsWith('}')) scopes.pop();
      continue;
    }
    const field = /(\w+)\s*=\s*\d+\s*\[[^\]]*\(csi_secret\)\s*=\s*true/.exec(line);
    const message = scopes.filter(Boolean).join('.');
    if (field && message) {
      const set = found.get(message) ?? new Set<string>();
      set.add(camelCase(field[1]!));
      found.set(message, set);
    }
    if (line.startsWith('}')) scopes.pop();
  }
  return found;
}

export function camelCase(snake: string): string {
  return snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
