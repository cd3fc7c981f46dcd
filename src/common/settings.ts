/**
 * cairnd's settings table: every setting's key, command-line flag, environment variable,
 * description and documented default. It sits in common/ so that cairnctl (which may not
 * import daemon/) can read it too: `cairnctl spec` writes the DaemonSet's flags from it.
 * The configuration type the settings resolve into, and its resolution and validation
 * (flag over environment over default), are daemon/settings.ts and daemon/config.ts.
 */

/** What cairnd serves: `node` the data plane (and CSI Node), `controller` the CSI Controller with no data plane, `all` both (single node). */
export type DaemonRole = 'node' | 'controller' | 'all';
export const ROLES: readonly DaemonRole[] = ['node', 'controller', 'all'];

/** The keys of the settings, one per row of SETTINGS; daemon/settings.ts checks them against its DaemonConfig. */
export const SETTING_KEYS = [
  'nodeName', 'dataDir', 'poolBackend', 'poolDevices', 'poolDir', 'poolCapacityBytes', 'filePoolLayout', 'filePoolSizeBytes', 'apiSocket',
  'nbdSocketDir', 'httpListen', 'logLevel', 'logFormat', 'shutdownTimeoutMs', 'clusterName', 'etcdEndpoints', 'peerListen', 'peerAddress',
  'peerTlsCa', 'peerTlsCert', 'peerTlsKey', 'peerInsecure', 'dataListen', 'replicaTransport', 'zone', 'nodeLabels', 'nodeTtlMs',
  'replicaTimeoutMs', 'rebuildRateBytes', 'repairWaitMs', 'orphanGraceMs', 'role', 'csiSocket', 'maxVolumesPerNode', 'attachReconnectMs',
  'defaultReplicas',
] as const;
export type SettingKey = (typeof SETTING_KEYS)[number];

/** One row per setting: how it is named on the command line and in the environment. */
export interface SettingSpec {
  key: SettingKey;
  /** Commander's flag: `--name <value>`, or `--name` alone for a boolean. */
  flag: string;
  env: string;
  description: string;
  /** The default, as text; may refer to other settings (resolved in `resolveConfig`). */
  defaultText: string;
  /** A switch: the flag takes no value; the variable takes true/false/1/0. */
  boolean?: true;
}

export const SETTINGS: readonly SettingSpec[] = [
  { key: 'nodeName', flag: '--node-name <name>', env: 'CAIRN_NODE_NAME', description: 'this node\'s name in the cluster', defaultText: 'the host name' },
  { key: 'dataDir', flag: '--data-dir <dir>', env: 'CAIRN_DATA_DIR', description: 'where cairnd keeps its state', defaultText: '/var/lib/cairn' },
  { key: 'poolBackend', flag: '--pool-backend <kind>', env: 'CAIRN_POOL_BACKEND', description: 'pool backend: file, dm, or auto (dm where device-mapper is present and --pool-devices is set, else file)', defaultText: 'auto' },
  { key: 'poolDevices', flag: '--pool-devices <list>', env: 'CAIRN_POOL_DEVICES', description: 'comma-separated block devices of the dm pool, e.g. /dev/sdb,/dev/sdc', defaultText: 'none' },
  { key: 'poolDir', flag: '--pool-dir <dir>', env: 'CAIRN_POOL_DIR', description: 'directory of the file pool', defaultText: '<data-dir>/pool' },
  { key: 'poolCapacityBytes', flag: '--pool-capacity <size>', env: 'CAIRN_POOL_CAPACITY', description: 'cap on the pool size, e.g. 100GiB; 0 = the filesystem\'s size', defaultText: '0' },
  { key: 'filePoolLayout', flag: '--file-pool-layout <layout>', env: 'CAIRN_FILE_POOL_LAYOUT', description: 'file pool layout: direct (device files in the pool directory), xfs-image (on an xfs image the pool mounts: instant snapshots on any filesystem), or auto (what the pool recorded; a new pool takes direct where its filesystem can reflink, else xfs-image)', defaultText: 'auto' },
  { key: 'filePoolSizeBytes', flag: '--file-pool-size <size>', env: 'CAIRN_FILE_POOL_SIZE', description: 'size of a new file pool\'s xfs image (sparse), e.g. 500GiB; 0 = the host filesystem\'s size', defaultText: '0' },
  { key: 'apiSocket', flag: '--api-socket <path>', env: 'CAIRN_API_SOCKET', description: 'unix socket of the cairnctl gRPC API', defaultText: '<data-dir>/cairnd.sock' },
  { key: 'nbdSocketDir', flag: '--nbd-socket-dir <dir>', env: 'CAIRN_NBD_SOCKET_DIR', description: 'directory of the per-volume NBD sockets', defaultText: '<data-dir>/nbd' },
  { key: 'httpListen', flag: '--http-listen <host:port>', env: 'CAIRN_HTTP_LISTEN', description: '/metrics, /healthz, /readyz; empty to disable', defaultText: '127.0.0.1:9470' },
  { key: 'logLevel', flag: '--log-level <level>', env: 'CAIRN_LOG_LEVEL', description: 'trace, debug, info, warn, error, fatal or silent', defaultText: 'info' },
  { key: 'logFormat', flag: '--log-format <format>', env: 'CAIRN_LOG_FORMAT', description: 'json, or human for a terminal; auto = human on a TTY', defaultText: 'auto' },
  { key: 'shutdownTimeoutMs', flag: '--shutdown-timeout-ms <ms>', env: 'CAIRN_SHUTDOWN_TIMEOUT_MS', description: 'how long a graceful shutdown may take', defaultText: '30000' },
  { key: 'clusterName', flag: '--cluster-name <name>', env: 'CAIRN_CLUSTER_NAME', description: 'the cluster\'s name (keys live under /cairn/<name>/); 1-63 lower-case letters, digits or "-"', defaultText: 'default' },
  { key: 'etcdEndpoints', flag: '--etcd-endpoints <urls>', env: 'CAIRN_ETCD_ENDPOINTS', description: 'comma-separated etcd client URLs, e.g. http://etcd-0:2379,http://etcd-1:2379, for a multi-node cluster', defaultText: 'none: the embedded single-node store' },
  { key: 'peerListen', flag: '--peer-listen <host:port>', env: 'CAIRN_PEER_LISTEN', description: 'where the replica service listens for other nodes; empty to disable; port 0 picks a free port', defaultText: '0.0.0.0:9471 with --etcd-endpoints, else off' },
  { key: 'peerAddress', flag: '--peer-address <host:port>', env: 'CAIRN_PEER_ADDRESS', description: 'the host:port other nodes dial to reach this node\'s replica service', defaultText: '<node-name>:<peer-listen port>' },
  { key: 'peerTlsCa', flag: '--peer-tls-ca <file>', env: 'CAIRN_PEER_TLS_CA', description: 'PEM file of the cluster CA that signs every node\'s peer certificate', defaultText: 'none' },
  { key: 'peerTlsCert', flag: '--peer-tls-cert <file>', env: 'CAIRN_PEER_TLS_CERT', description: 'PEM file of this node\'s peer certificate', defaultText: 'none' },
  { key: 'peerTlsKey', flag: '--peer-tls-key <file>', env: 'CAIRN_PEER_TLS_KEY', description: 'PEM file of this node\'s peer private key', defaultText: 'none' },
  { key: 'peerInsecure', flag: '--peer-insecure', env: 'CAIRN_PEER_INSECURE', description: 'plaintext, unauthenticated peer traffic (development only); the variable takes true/false', defaultText: 'false', boolean: true },
  { key: 'dataListen', flag: '--data-listen <host:port>', env: 'CAIRN_DATA_LISTEN', description: 'where the replica data channel (block I/O between nodes) listens; empty to disable; port 0 picks a free port', defaultText: '<peer-listen host>:9472 while the replica service runs, else off' },
  { key: 'replicaTransport', flag: '--replica-transport <kind>', env: 'CAIRN_REPLICA_TRANSPORT', description: 'how engines send block I/O to replicas on other nodes: channel (the binary data channel) or grpc (the replica service\'s stream, slower; for comparison)', defaultText: 'channel' },
  { key: 'zone', flag: '--zone <zone>', env: 'CAIRN_ZONE', description: 'this node\'s failure domain; replicas of a volume are spread across zones', defaultText: 'none' },
  { key: 'nodeLabels', flag: '--node-labels <k=v,...>', env: 'CAIRN_NODE_LABELS', description: 'comma-separated labels of this node, e.g. disk=nvme,rack=r12', defaultText: 'none' },
  { key: 'nodeTtlMs', flag: '--node-ttl-ms <ms>', env: 'CAIRN_NODE_TTL_MS', description: 'how long a silent node still counts as up (at least 2000)', defaultText: '10000' },
  { key: 'replicaTimeoutMs', flag: '--replica-timeout-ms <ms>', env: 'CAIRN_REPLICA_TIMEOUT_MS', description: 'how long an engine waits for a replica before faulting it', defaultText: '8000' },
  { key: 'rebuildRateBytes', flag: '--rebuild-rate <size>', env: 'CAIRN_REBUILD_RATE', description: 'rebuild copy rate per replica in bytes per second, e.g. 200MiB; 0 = unlimited', defaultText: '256MiB' },
  { key: 'repairWaitMs', flag: '--repair-wait-ms <ms>', env: 'CAIRN_REPAIR_WAIT_MS', description: 'how long a replica stays faulted before the repair loop replaces it', defaultText: '300000' },
  { key: 'orphanGraceMs', flag: '--orphan-grace-ms <ms>', env: 'CAIRN_ORPHAN_GRACE_MS', description: 'how long a replica no volume lists is kept before it is deleted', defaultText: '600000' },
  { key: 'role', flag: '--role <role>', env: 'CAIRN_ROLE', description: 'what this cairnd serves: node (data plane and CSI Node, one per node), controller (CSI Controller over etcd, no data plane), or all (everything, single node)', defaultText: 'all' },
  { key: 'csiSocket', flag: '--csi-socket <path>', env: 'CAIRN_CSI_SOCKET', description: 'unix socket of the CSI services, e.g. /var/lib/kubelet/plugins/csi.cairn.dev/csi.sock on a node', defaultText: '<data-dir>/csi.sock' },
  { key: 'maxVolumesPerNode', flag: '--max-volumes-per-node <n>', env: 'CAIRN_MAX_VOLUMES_PER_NODE', description: 'volumes Kubernetes may stage on this node (CSI NodeGetInfo); 0 = no limit', defaultText: '0' },
  { key: 'attachReconnectMs', flag: '--attach-reconnect-ms <ms>', env: 'CAIRN_ATTACH_RECONNECT_MS', description: 'how long a staged volume\'s device holds I/O while no cairnd serves it (a restart) before failing it (rounded up to whole seconds; at least 1000)', defaultText: '120000' },
  { key: 'defaultReplicas', flag: '--default-replicas <n>', env: 'CAIRN_DEFAULT_REPLICAS', description: 'replicas of a volume that does not say (1-3)', defaultText: '3 with --etcd-endpoints, else 1' },
];

/** A unix socket path must fit sun_path (108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107;
export const DEFAULT_PEER_PORT = 9471;
export const DEFAULT_DATA_PORT = 9472;
/** The port of /metrics, /healthz and /readyz in --http-listen's default. */
export const DEFAULT_HTTP_PORT = 9470;
export const REPLICA_TRANSPORTS = ['channel', 'grpc'] as const;
export type ReplicaTransport = (typeof REPLICA_TRANSPORTS)[number];
export const MIN_NODE_TTL_MS = 2000;


/** The setting's row. Every key has one (the unit test of the table checks it). */
export function specOf(key: SettingKey): SettingSpec {
  return SETTINGS.find((s) => s.key === key)!;
}

/** The setting's flag without its value placeholder: `--peer-tls-ca`. */
export function flagName(key: SettingKey): string {
  return specOf(key).flag.split(' ')[0]!;
}

/** The property commander stores a setting's flag under: `--peer-tls-ca` -> `peerTlsCa`. */
export function commanderAttribute(setting: SettingSpec): string {
  return setting.flag.slice(2).split(' ')[0]!.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
