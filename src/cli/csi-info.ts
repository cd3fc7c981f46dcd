/**
 * `cairnctl csi info`: what a CSI sidecar or kubelet sees on cairnd's CSI socket, asked the
 * way they ask it: Identity (GetPluginInfo, Probe, GetPluginCapabilities), then the
 * Controller's and the Node's capabilities and NodeGetInfo where this process serves them
 * (a service it does not serve answers UNIMPLEMENTED, shown as "not served"). It loads the
 * CSI wire from proto/ through rpc/, as the API client does: cairnctl imports no csi/ code.
 */
import * as grpc from '@grpc/grpc-js';
import { existsSync } from 'node:fs';
import { Code, SERVER_UNREACHABLE, StorageError } from '../common/errors.js';
import { loadPackage, serviceConstructor } from '../rpc/proto.js';
import { fromServiceError, isFromServer } from '../rpc/status.js';

export interface CsiNodeInfo {
  nodeId: string;
  /** 0: no limit. */
  maxVolumesPerNode: number;
  topology: Record<string, string>;
  capabilities: string[];
}

export interface CsiInfo {
  socket: string;
  name: string;
  vendorVersion: string;
  ready: boolean;
  pluginCapabilities: string[];
  /** null where this process does not serve the Controller. */
  controllerCapabilities: string[] | null;
  /** null where this process does not serve the Node service. */
  node: CsiNodeInfo | null;
}

type Message = Record<string, unknown>;
type Call = (method: string) => Promise<Message>;

/** Asks the CSI socket at `socketPath` ("unix://" prefix allowed) what it serves. */
export async function csiInfo(socketPath: string, deadlineMs = 10_000): Promise<CsiInfo> {
  const socket = socketPath.replace(/^unix:\/\//, '');
  const pkg = loadPackage('csi/v1/csi.proto');
  const clients = ['Identity', 'Controller', 'Node'].map((s) => new (serviceConstructor(pkg, `csi.v1.${s}`))(`unix:${socket}`, grpc.credentials.createInsecure()));
  const [identity, controller, node] = clients.map((client): Call => (method) => unaryCall(client, method, socket, deadlineMs)) as [Call, Call, Call];
  try {
    const info = await identity('GetPluginInfo');
    const probe = await identity('Probe');
    const plugin = await identity('GetPluginCapabilities');
    const controllerCaps = await servedOrNull(() => controller('ControllerGetCapabilities'));
    const nodeInfo = await servedOrNull(() => node('NodeGetInfo'));
    const nodeCaps = nodeInfo ? await node('NodeGetCapabilities') : null;
    return {
      socket,
      name: String(info.name ?? ''),
      vendorVersion: String(info.vendorVersion ?? ''),
      // The spec: a Probe reply without `ready` means ready.
      ready: (probe.ready as { value?: boolean } | null)?.value ?? true,
      pluginCapabilities: capabilityNames(plugin),
      controllerCapabilities: controllerCaps ? capabilityNames(controllerCaps) : null,
      node: nodeInfo && nodeCaps ? {
        nodeId: String(nodeInfo.nodeId ?? ''),
        maxVolumesPerNode: Number(nodeInfo.maxVolumesPerNode ?? 0),
        topology: ((nodeInfo.accessibleTopology as { segments?: Record<string, string> } | null)?.segments) ?? {},
        capabilities: capabilityNames(nodeCaps),
      } : null,
    };
  } finally {
    for (const c of clients) c.close();
  }
}

/** "CONTROLLER_SERVICE", "VolumeExpansion.ONLINE", "STAGE_UNSTAGE_VOLUME", ... in the reply's order. */
function capabilityNames(reply: Message): string[] {
  const caps = (reply.capabilities ?? []) as Record<string, { type?: string } | string | undefined>[];
  return caps.map((c) => {
    if (c.rpc && typeof c.rpc === 'object') return c.rpc.type ?? '?';
    if (c.service && typeof c.service === 'object') return c.service.type ?? '?';
    if (c.volumeExpansion && typeof c.volumeExpansion === 'object') return `VolumeExpansion.${c.volumeExpansion.type ?? '?'}`;
    return '?';
  });
}

async function servedOrNull(fn: () => Promise<Message>): Promise<Message | null> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof StorageError && err.code === Code.UNIMPLEMENTED) return null;
    throw err;
  }
}

function unaryCall(client: grpc.Client, method: string, socket: string, deadlineMs: number): Promise<Message> {
  const fn = (client as unknown as Record<string, (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Message) => void) => void>)[method]!;
  return new Promise((resolve, reject) => {
    fn.call(client, {}, { deadline: Date.now() + deadlineMs }, (err, res) => {
      if (!err) return resolve(res);
      // cairnd's CSI statuses carry its origin trailer: an UNAVAILABLE without it is the
      // channel's own (the socket was not reached), as for the API client.
      if (err.code === grpc.status.UNAVAILABLE && !isFromServer(err)) {
        const why = existsSync(socket) ? 'nothing answers on the socket' : 'no socket there';
        return reject(new StorageError(Code.UNAVAILABLE, `cannot reach a CSI plugin at ${socket}: is cairnd running? (${why}; set --csi-socket or CAIRN_CSI_SOCKET)`, {
          cause: err, details: { reason: SERVER_UNREACHABLE, socket },
        }));
      }
      reject(fromServiceError(err));
    });
  });
}
