/**
 * cairnd's configuration type, which the settings table resolves into.
 * The table itself is common/settings.ts (cairnctl reads it too); resolution and validation
 * (flag over environment over default) live in config.ts.
 */
import type { LogFormat } from '../common/log.js';
import type { KubeApiOptions } from '../snapshot/kube-api.js';
import { commanderAttribute, SETTINGS, type DaemonRole, type ReplicaTransport, type SettingKey } from '../common/settings.js';

export {
  commanderAttribute, DEFAULT_DATA_PORT, DEFAULT_PEER_PORT, MAX_SOCKET_PATH, MIN_NODE_TTL_MS, REPLICA_TRANSPORTS, ROLES, SETTINGS, specOf,
  type DaemonRole, type ReplicaTransport, type SettingKey, type SettingSpec,
} from '../common/settings.js';

export interface DaemonConfig {
  /**
   * How to reach the Kubernetes API (snapshot-rule `exec` actions): the pod's service
   * account when cairnd runs in Kubernetes (KUBERNETES_SERVICE_HOST set), else undefined.
   */
  kubernetes?: KubeApiOptions | undefined;
  nodeName: string;
  dataDir: string;
  /** auto: dm where device-mapper is present and pool devices are set, else file (main.ts logs the choice). */
  poolBackend: 'file' | 'dm' | 'auto';
  poolDir: string;
  /** Block devices of the dm pool, in order. */
  poolDevices: string[];
  /** Caps the pool's capacity below what its filesystem has; 0 means the filesystem's size. */
  poolCapacityBytes: number;
  /**
   * Layout of the file pool: `direct` (devices on the pool directory's filesystem), `xfs-image`
   * (devices on an xfs image the pool mounts, so snapshots are reflinks on any filesystem), or
   * `auto` (the pool's recorded layout; a new pool probes reflink). See pool/file-layout.ts.
   */
  filePoolLayout: 'auto' | 'direct' | 'xfs-image';
  /** Size of a new file pool's xfs image; 0 means the host filesystem's size (the image is sparse). */
  filePoolSizeBytes: number;
  apiSocket: string;
  nbdSocketDir: string;
  /** host:port for /metrics, /healthz and /readyz; empty to switch the HTTP server off. */
  httpListen: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  logFormat: LogFormat;
  shutdownTimeoutMs: number;

  /** The cluster's name: its keys live under /cairn/<cluster>/, so clusters can share an etcd. */
  clusterName: string;
  /** etcd client URLs (http(s)://host:port); empty for the embedded single-node store. */
  etcdEndpoints: string[];
  /**
   * host:port the replica service (the peer gRPC endpoint) listens on; empty when off.
   * Port 0 picks a free port (tests).
   */
  peerListen: string;
  /**
   * host:port other nodes dial to reach this node's replica service. Empty means "derive at
   * run time": `<node-name>:<bound port>` (see `advertisedPeerAddress`), which is how port 0
   * works. Also empty while peers are off.
   */
  peerAddress: string;
  /** PEM files of peer mutual TLS (cluster CA, this node's certificate and key); empty when not given. */
  peerTlsCa: string;
  peerTlsCert: string;
  peerTlsKey: string;
  /** Plaintext, unauthenticated peer traffic: development only. Never together with the TLS files. */
  peerInsecure: boolean;
  /**
   * host:port the replica data channel (block I/O from engines, docs/replica-protocol.md)
   * listens on; empty when off. Others dial the host of the advertised peer address at the
   * port this binds.
   */
  dataListen: string;
  /** How this node's engines reach replicas on other nodes: `channel` (the data channel) or `grpc` (the control service's Io stream). */
  replicaTransport: ReplicaTransport;
  /** The node's failure domain; placement spreads a volume's replicas across zones. Empty: none. */
  zone: string;
  /** Labels recorded in the node registry (Kubernetes label syntax). */
  nodeLabels: Record<string, string>;
  /** Lease TTL of this node's registration: how long a silent node still counts as up. */
  nodeTtlMs: number;
  /** How long an engine waits for a replica's answer before faulting it out of the in-sync set. */
  replicaTimeoutMs: number;
  /** Rebuild copy rate per rebuilding replica, bytes per second; 0 = unlimited. */
  rebuildRateBytes: number;
  /** How long a replica stays faulted before the repair loop replaces it with a new one. */
  repairWaitMs: number;
  /**
   * A replica hosted here that no volume document lists (its volume was deleted, or it was
   * replaced while this node was away) is deleted once it has been so for this long.
   */
  orphanGraceMs: number;
  /** Replicas of a volume whose creation does not say (1-3). */
  defaultReplicas: number;

  /** What this process serves (see DaemonRole). */
  role: DaemonRole;
  /** Unix socket of the CSI services (the sidecars and kubelet dial it). */
  csiSocket: string;
  /** CSI NodeGetInfo max_volumes_per_node: volumes the scheduler may put on this node; 0 = no limit. */
  maxVolumesPerNode: number;
  /** How long a staged volume's kernel device holds I/O while its export is not served (a cairnd restart) before failing it. */
  attachReconnectMs: number;
}

/** Every setting is a field of DaemonConfig, and every field but `kubernetes` (from the pod's environment) is a setting. */
type Missing<A, B> = Exclude<A, B> extends never ? true : never;
const KEYS_MATCH: [Missing<SettingKey, keyof DaemonConfig>, Missing<Exclude<keyof DaemonConfig, 'kubernetes'>, SettingKey>] = [true, true];
void KEYS_MATCH;

export type RawFlags = Partial<Record<SettingKey, string>>;

/**
 * Commander's parsed options (strings, and `true` for a boolean flag) as the raw strings
 * `resolveConfig` takes, keyed by setting key. Options that were not given are left out,
 * so the environment and the defaults apply to them.
 */
export function flagsFromCommander(opts: Record<string, unknown>): RawFlags {
  const flags: RawFlags = {};
  for (const s of SETTINGS) {
    const value = opts[commanderAttribute(s)];
    if (value === undefined) continue;
    flags[s.key] = String(value);
  }
  return flags;
}
