/**
 * The engine service of every node (cairn.engine.v1), for the group coordinator: this node's
 * own engines directly, other nodes' over their peer port (mutual TLS; the address from the
 * node registry), one client per node, made on first use. A node that is down or unknown is
 * UNAVAILABLE. The same service runs a rule's node-scoped actions on another node
 * (`actions`, remote-actions.ts).
 */
import type { ChannelCredentials, Client } from '@grpc/grpc-js';
import { Code, StorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { listNodes } from '../cluster/node-registry.js';
import type { ClusterStore } from '../cluster/store/cluster-store.js';
import { EngineClient, localEngineBarrier, type EngineBarrierClient } from '../engine/engine-client.js';
import { engineServiceConstructor, type EngineLookup } from '../engine/engine-service.js';
import { peerChannelCredentials, type PeerTlsConfig } from '../rpc/tls.js';
import { RemoteNodeActions } from './remote-actions.js';

export interface EnginePeersOptions {
  nodeId: NodeId;
  store: ClusterStore;
  tls: PeerTlsConfig;
  log: Logger;
  /** This node's engines (a node daemon); none on a controller. */
  local?: EngineLookup;
}

export class EnginePeers {
  private readonly clients = new Map<NodeId, EngineClient>();
  private readonly actionClients = new Map<NodeId, { client: Client; actions: RemoteNodeActions }>();
  private credentials: ChannelCredentials | undefined;

  constructor(private readonly opts: EnginePeersOptions) {}

  async engines(nodeId: NodeId): Promise<EngineBarrierClient> {
    if (nodeId === this.opts.nodeId && this.opts.local) return localEngineBarrier(this.opts.local);
    const known = this.clients.get(nodeId);
    if (known) return known;
    const client = new EngineClient(await this.addressOf(nodeId), this.credentialsFor());
    this.clients.set(nodeId, client);
    return client;
  }

  /** Node `nodeId`'s `command` and `fsfreeze` actions, over its engine service. */
  async actions(nodeId: NodeId): Promise<RemoteNodeActions> {
    const known = this.actionClients.get(nodeId);
    if (known) return known.actions;
    const Ctor = engineServiceConstructor();
    const client = new Ctor(await this.addressOf(nodeId), this.credentialsFor());
    const actions = new RemoteNodeActions(nodeId, client, this.opts.log);
    this.actionClients.set(nodeId, { client, actions });
    return actions;
  }

  private async addressOf(nodeId: NodeId): Promise<string> {
    const node = (await listNodes(this.opts.store, this.opts.log)).find((n) => n.nodeId === nodeId);
    if (!node?.up || !node.peerAddress) {
      throw new StorageError(Code.UNAVAILABLE, `node ${nodeId} is down or has no peer address: its engines cannot be reached`, { details: { node: nodeId } });
    }
    return node.peerAddress;
  }

  private credentialsFor(): ChannelCredentials {
    this.credentials ??= peerChannelCredentials(this.opts.tls, this.opts.log);
    return this.credentials;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    for (const c of this.actionClients.values()) c.client.close();
    this.clients.clear();
    this.actionClients.clear();
  }
}
