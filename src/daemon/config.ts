/**
 * cairnd's configuration: every setting has a command-line flag, an environment variable
 * and a documented default. Parsed and validated once, then frozen. This is the only file
 * that reads process.env.
 *
 * Two modes follow from --etcd-endpoints: without it, one node with the embedded cluster
 * store (no peers, one replica per volume); with it, a multi-node cluster whose nodes serve
 * replicas to each other on the peer port, over mutual TLS.
 */
import { hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { Code, StorageError } from '../common/errors.js';
import type { LogFormat } from '../common/log.js';
import { parseSize } from '../common/units.js';
import type { PeerTlsConfig } from '../rpc/tls.js';
import { MAX_REPLICAS } from '../cluster/volume-doc.js';

export interface DaemonConfig {
  nodeName: string;
  dataDir: string;
  /** auto: dm where device-mapper is present and pool devices are set, else file (main.ts logs the choice). */
  poolBackend: 'file' | 'dm' | 'auto';
  poolDir: string;
  /** Block devices of the dm pool, in order. */
  poolDevices: string[];
  /** Caps the pool's capacity below what its filesystem has; 0 means the filesystem's size. */
  poolCapacityBytes: number;
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
}

/** One row per setting: how it is named on the command line and in the environment. */
export interface SettingSpec {
  key: keyof DaemonConfig;
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
  { key: 'zone', flag: '--zone <zone>', env: 'CAIRN_ZONE', description: 'this node\'s failure domain; replicas of a volume are spread across zones', defaultText: 'none' },
  { key: 'nodeLabels', flag: '--node-labels <k=v,...>', env: 'CAIRN_NODE_LABELS', description: 'comma-separated labels of this node, e.g. disk=nvme,rack=r12', defaultText: 'none' },
  { key: 'nodeTtlMs', flag: '--node-ttl-ms <ms>', env: 'CAIRN_NODE_TTL_MS', description: 'how long a silent node still counts as up (at least 2000)', defaultText: '10000' },
  { key: 'replicaTimeoutMs', flag: '--replica-timeout-ms <ms>', env: 'CAIRN_REPLICA_TIMEOUT_MS', description: 'how long an engine waits for a replica before faulting it', defaultText: '8000' },
  { key: 'rebuildRateBytes', flag: '--rebuild-rate <size>', env: 'CAIRN_REBUILD_RATE', description: 'rebuild copy rate per replica in bytes per second, e.g. 200MiB; 0 = unlimited', defaultText: '256MiB' },
  { key: 'repairWaitMs', flag: '--repair-wait-ms <ms>', env: 'CAIRN_REPAIR_WAIT_MS', description: 'how long a replica stays faulted before the repair loop replaces it', defaultText: '300000' },
  { key: 'orphanGraceMs', flag: '--orphan-grace-ms <ms>', env: 'CAIRN_ORPHAN_GRACE_MS', description: 'how long a replica no volume lists is kept before it is deleted', defaultText: '600000' },
  { key: 'defaultReplicas', flag: '--default-replicas <n>', env: 'CAIRN_DEFAULT_REPLICAS', description: 'replicas of a volume that does not say (1-3)', defaultText: '3 with --etcd-endpoints, else 1' },
];

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
/** A unix socket path must fit sun_path (108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107;
export const DEFAULT_PEER_PORT = 9471;
export const MIN_NODE_TTL_MS = 2000;

/** The same rule as the cluster store's key prefix (src/cluster/store/keys.ts). */
const CLUSTER_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** host:port with a DNS name, an IPv4 address or a bracketed IPv6 address. */
const HOST_PORT_RE = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;
const ENDPOINT_RE = /^https?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})\/?$/;
/** A Kubernetes label name or value: up to 63 characters, alphanumeric at both ends. */
const LABEL_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const LABEL_PREFIX_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

type RawFlags = Partial<Record<keyof DaemonConfig, string>>;

function specOf(key: keyof DaemonConfig): SettingSpec {
  return SETTINGS.find((s) => s.key === key)!;
}

function invalid(key: keyof DaemonConfig, value: string, why: string): StorageError {
  const setting = specOf(key);
  return new StorageError(Code.INVALID_ARGUMENT, `invalid ${setting.flag.split(' ')[0]} / ${setting.env} "${value}": ${why}`);
}

/** The property commander stores a setting's flag under: `--peer-tls-ca` -> `peerTlsCa`. */
export function commanderAttribute(setting: SettingSpec): string {
  return setting.flag.slice(2).split(' ')[0]!.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

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

/** Reads one setting at a time: flag over environment over default. */
class Reader {
  constructor(private readonly flags: RawFlags, private readonly env: NodeJS.ProcessEnv) {}

  raw(key: keyof DaemonConfig): string | undefined {
    // A boolean flag may arrive as `true` from commander when the caller passed its opts on as is.
    const flag = this.flags[key] as unknown;
    if (flag !== undefined) return String(flag);
    return this.env[specOf(key).env];
  }

  given(key: keyof DaemonConfig): boolean {
    return this.raw(key) !== undefined;
  }

  path(key: keyof DaemonConfig, fallback: string): string {
    const text = this.raw(key) ?? fallback;
    return isAbsolute(text) ? text : resolve(text);
  }

  wholeNumber(key: keyof DaemonConfig, fallback: number, min: number, why: string): number {
    const text = this.raw(key) ?? String(fallback);
    const n = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min) throw invalid(key, text, why);
    return n;
  }

  boolean(key: keyof DaemonConfig): boolean {
    const text = this.raw(key);
    if (text === undefined || text === '') return false;
    const t = text.trim().toLowerCase();
    if (t === 'true' || t === '1') return true;
    if (t === 'false' || t === '0') return false;
    throw invalid(key, text, 'write true or false (or 1 or 0)');
  }

  size(key: keyof DaemonConfig, fallback: string, why: string): number {
    const text = this.raw(key) ?? fallback;
    try {
      return parseSize(text.replace(/\/s$/, ''));
    } catch {
      throw invalid(key, text, why);
    }
  }
}

function parsePort(text: string): number {
  const m = HOST_PORT_RE.exec(text);
  const port = m ? Number(m[3]) : Number.NaN;
  return port <= 65535 ? port : Number.NaN;
}

function parseEndpoints(r: Reader): string[] {
  const text = r.raw('etcdEndpoints') ?? '';
  const endpoints = text.split(',').map((e) => e.trim()).filter(Boolean);
  for (const e of endpoints) {
    const m = ENDPOINT_RE.exec(e);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) {
      throw invalid('etcdEndpoints', text, `"${e}" is not an etcd client URL: write http://host:port or https://host:port, comma-separated`);
    }
  }
  return endpoints.map((e) => e.replace(/\/$/, ''));
}

function validLabelKey(key: string): boolean {
  const slash = key.lastIndexOf('/');
  if (slash < 0) return LABEL_NAME_RE.test(key);
  const prefix = key.slice(0, slash);
  return prefix.length <= 253 && LABEL_PREFIX_RE.test(prefix) && LABEL_NAME_RE.test(key.slice(slash + 1));
}

function parseLabels(r: Reader): Record<string, string> {
  const text = r.raw('nodeLabels') ?? '';
  const labels: Record<string, string> = {};
  for (const item of text.split(',').map((l) => l.trim()).filter(Boolean)) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? '' : item.slice(eq + 1);
    if (eq < 0 || !validLabelKey(key)) {
      throw invalid('nodeLabels', text, `"${item}" is not a label: write key=value pairs, comma-separated; a key is an optional DNS prefix and "/" then up to 63 letters, digits, "-", "_" or "." starting and ending alphanumeric`);
    }
    if (value !== '' && !LABEL_NAME_RE.test(value)) {
      throw invalid('nodeLabels', text, `the value of "${key}" is not valid: up to 63 letters, digits, "-", "_" or ".", starting and ending alphanumeric`);
    }
    if (Object.hasOwn(labels, key)) throw invalid('nodeLabels', text, `label "${key}" is given twice`);
    labels[key] = value;
  }
  return labels;
}

type ClusterSettings = Pick<DaemonConfig, 'clusterName' | 'etcdEndpoints' | 'zone' | 'nodeLabels' | 'defaultReplicas'>;

function resolveCluster(r: Reader): ClusterSettings {
  const clusterName = r.raw('clusterName') ?? 'default';
  if (!CLUSTER_RE.test(clusterName)) throw invalid('clusterName', clusterName, 'use 1-63 lower-case letters, digits or "-", starting and ending with a letter or digit');
  const etcdEndpoints = parseEndpoints(r);
  const zone = r.raw('zone') ?? '';
  if (zone !== '' && !LABEL_NAME_RE.test(zone)) throw invalid('zone', zone, 'use up to 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit');

  const embedded = etcdEndpoints.length === 0;
  const defaultReplicas = r.wholeNumber('defaultReplicas', embedded ? 1 : MAX_REPLICAS, 1, `write a whole number from 1 to ${MAX_REPLICAS}`);
  if (defaultReplicas > MAX_REPLICAS) throw invalid('defaultReplicas', String(defaultReplicas), `write a whole number from 1 to ${MAX_REPLICAS}`);
  if (embedded && defaultReplicas > 1) {
    throw invalid('defaultReplicas', String(defaultReplicas), 'the embedded store is a single node, which holds one replica per volume: use 1, or give --etcd-endpoints for a multi-node cluster');
  }
  return { clusterName, etcdEndpoints: Object.freeze(etcdEndpoints) as string[], zone, nodeLabels: Object.freeze(parseLabels(r)), defaultReplicas };
}

type PeerSettings = Pick<DaemonConfig, 'peerListen' | 'peerAddress' | 'peerTlsCa' | 'peerTlsCert' | 'peerTlsKey' | 'peerInsecure'>;

const TLS_REQUIRED = 'peer TLS is required: give --peer-tls-ca, --peer-tls-cert and --peer-tls-key, or --peer-insecure for development';

function resolvePeers(r: Reader, nodeName: string, clustered: boolean): PeerSettings {
  const peerListen = r.raw('peerListen') ?? (clustered ? `0.0.0.0:${DEFAULT_PEER_PORT}` : '');
  const listenPort = peerListen === '' ? 0 : parsePort(peerListen);
  if (Number.isNaN(listenPort)) throw invalid('peerListen', peerListen, 'write host:port (port 0 picks a free one), e.g. 0.0.0.0:9471, or an empty string to disable');

  let peerAddress = r.raw('peerAddress') ?? '';
  if (peerAddress !== '') {
    const port = parsePort(peerAddress);
    if (Number.isNaN(port) || port === 0) throw invalid('peerAddress', peerAddress, 'write the host:port other nodes dial, e.g. node-a.example:9471 (a real port, not 0)');
    if (peerListen === '') throw invalid('peerAddress', peerAddress, 'no replica service runs for other nodes to dial: set --peer-listen too');
  } else if (peerListen !== '' && listenPort !== 0) {
    peerAddress = `${nodeName}:${listenPort}`;
  }

  const tls = { peerTlsCa: r.raw('peerTlsCa') ?? '', peerTlsCert: r.raw('peerTlsCert') ?? '', peerTlsKey: r.raw('peerTlsKey') ?? '' };
  const peerInsecure = r.boolean('peerInsecure');
  const givenFiles = (Object.keys(tls) as (keyof typeof tls)[]).filter((k) => tls[k] !== '');
  if (peerInsecure && givenFiles.length > 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, 'give either the peer TLS files (--peer-tls-ca, --peer-tls-cert, --peer-tls-key) or --peer-insecure, not both');
  }
  if (givenFiles.length > 0 && givenFiles.length < 3) {
    const missing = (Object.keys(tls) as (keyof typeof tls)[]).filter((k) => tls[k] === '').map((k) => specOf(k).flag.split(' ')[0]);
    throw new StorageError(Code.INVALID_ARGUMENT, `${TLS_REQUIRED} (missing: ${missing.join(', ')})`);
  }
  if ((peerListen !== '' || clustered) && givenFiles.length === 0 && !peerInsecure) throw new StorageError(Code.INVALID_ARGUMENT, TLS_REQUIRED);
  const abs = (p: string): string => (p === '' || isAbsolute(p) ? p : resolve(p));
  return { peerListen, peerAddress, peerTlsCa: abs(tls.peerTlsCa), peerTlsCert: abs(tls.peerTlsCert), peerTlsKey: abs(tls.peerTlsKey), peerInsecure };
}

type TuningSettings = Pick<DaemonConfig, 'nodeTtlMs' | 'replicaTimeoutMs' | 'rebuildRateBytes' | 'repairWaitMs' | 'orphanGraceMs' | 'shutdownTimeoutMs'>;

function resolveTuning(r: Reader): TuningSettings {
  return {
    shutdownTimeoutMs: r.wholeNumber('shutdownTimeoutMs', 30_000, 1, 'a positive whole number of milliseconds'),
    nodeTtlMs: r.wholeNumber('nodeTtlMs', 10_000, MIN_NODE_TTL_MS, `a whole number of milliseconds, at least ${MIN_NODE_TTL_MS}`),
    replicaTimeoutMs: r.wholeNumber('replicaTimeoutMs', 8000, 1, 'a positive whole number of milliseconds'),
    rebuildRateBytes: r.size('rebuildRateBytes', '256MiB', 'write bytes per second such as 200MiB, or 0 for unlimited'),
    repairWaitMs: r.wholeNumber('repairWaitMs', 300_000, 0, 'a whole number of milliseconds (0 replaces a faulted replica at once)'),
    orphanGraceMs: r.wholeNumber('orphanGraceMs', 600_000, 1000, 'a whole number of milliseconds, at least 1000'),
  };
}

type LocalSettings = Omit<DaemonConfig, keyof ClusterSettings | keyof PeerSettings | keyof TuningSettings>;

function resolveLocal(r: Reader, isTty: boolean): LocalSettings {
  const dataDir = r.path('dataDir', '/var/lib/cairn');
  const poolBackend = r.raw('poolBackend') ?? 'auto';
  if (poolBackend !== 'file' && poolBackend !== 'dm' && poolBackend !== 'auto') throw invalid('poolBackend', poolBackend, 'use file, dm or auto');
  const devicesText = r.raw('poolDevices') ?? '';
  const poolDevices = devicesText.split(',').map((d) => d.trim()).filter(Boolean);
  for (const d of poolDevices) if (!isAbsolute(d)) throw invalid('poolDevices', devicesText, 'write absolute block device paths, e.g. /dev/sdb,/dev/sdc');
  if (poolBackend === 'dm' && poolDevices.length === 0) throw invalid('poolDevices', devicesText, 'the dm backend needs at least one block device');
  const poolCapacityBytes = r.size('poolCapacityBytes', '0', 'write a size such as 100GiB');

  const logLevel = r.raw('logLevel') ?? 'info';
  if (!(LEVELS as readonly string[]).includes(logLevel)) throw invalid('logLevel', logLevel, `use one of ${LEVELS.join(', ')}`);
  const formatText = r.raw('logFormat') ?? 'auto';
  if (!['json', 'human', 'auto'].includes(formatText)) throw invalid('logFormat', formatText, 'use json, human or auto');
  const logFormat: LogFormat = formatText === 'auto' ? (isTty ? 'human' : 'json') : (formatText as LogFormat);

  const httpListen = r.raw('httpListen') ?? '127.0.0.1:9470';
  if (httpListen !== '' && !/^[^\s]+:\d{1,5}$/.test(httpListen)) throw invalid('httpListen', httpListen, 'write host:port, or an empty string to disable');

  const apiSocket = r.path('apiSocket', join(dataDir, 'cairnd.sock'));
  if (Buffer.byteLength(apiSocket) > MAX_SOCKET_PATH) throw invalid('apiSocket', apiSocket, `unix socket paths are limited to ${MAX_SOCKET_PATH} bytes; choose a shorter path`);
  const nbdSocketDir = r.path('nbdSocketDir', join(dataDir, 'nbd'));
  // Room for at least "/<16 chars>.sock" below it.
  if (Buffer.byteLength(nbdSocketDir) > MAX_SOCKET_PATH - 24) throw invalid('nbdSocketDir', nbdSocketDir, 'too long for unix socket paths below it; choose a shorter directory');

  const nodeName = r.raw('nodeName') ?? hostname();
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(nodeName)) throw invalid('nodeName', nodeName, 'use letters, digits, "." and "-"');

  return {
    nodeName,
    dataDir,
    poolBackend,
    poolDir: r.path('poolDir', join(dataDir, 'pool')),
    poolDevices: Object.freeze(poolDevices) as string[],
    poolCapacityBytes,
    apiSocket,
    nbdSocketDir,
    httpListen,
    logLevel: logLevel as DaemonConfig['logLevel'],
    logFormat,
  };
}

/**
 * Merges flags over environment over defaults, validates, and freezes. `flags` holds the
 * raw strings commander parsed, keyed by setting key (see `flagsFromCommander`).
 */
export function resolveConfig(flags: RawFlags, env: NodeJS.ProcessEnv = process.env, isTty = Boolean(process.stdout.isTTY)): Readonly<DaemonConfig> {
  const r = new Reader(flags, env);
  const local = resolveLocal(r, isTty);
  const cluster = resolveCluster(r);
  const peers = resolvePeers(r, local.nodeName, cluster.etcdEndpoints.length > 0);
  return Object.freeze({ ...local, ...cluster, ...peers, ...resolveTuning(r) });
}

/** Which cluster store the config selects. */
export function storeKind(config: Pick<DaemonConfig, 'etcdEndpoints'>): 'etcd' | 'embedded' {
  return config.etcdEndpoints.length > 0 ? 'etcd' : 'embedded';
}

/**
 * Whether this node talks to peers: it runs the replica service, or it belongs to an etcd
 * cluster (its engines dial other nodes' replicas). Peer TLS settings are then validated.
 */
export function peersEnabled(config: Pick<DaemonConfig, 'peerListen' | 'etcdEndpoints'>): boolean {
  return config.peerListen !== '' || config.etcdEndpoints.length > 0;
}

/**
 * The peer credentials the config asks for (resolveConfig made sure there are some when
 * peers are on); undefined while peers are off. Peers being on does not mean the replica
 * service runs: that is `peerListen !== ''`.
 */
export function peerTlsConfig(config: Pick<DaemonConfig, 'peerListen' | 'etcdEndpoints' | 'peerInsecure' | 'peerTlsCa' | 'peerTlsCert' | 'peerTlsKey'>): PeerTlsConfig | undefined {
  if (!peersEnabled(config)) return undefined;
  if (config.peerInsecure) return { insecure: true };
  return { caFile: config.peerTlsCa, certFile: config.peerTlsCert, keyFile: config.peerTlsKey };
}

/** The address other nodes dial: --peer-address, else `<node-name>:<port the replica service bound>`. */
export function advertisedPeerAddress(config: Pick<DaemonConfig, 'peerAddress' | 'nodeName'>, boundPort: number): string {
  return config.peerAddress !== '' ? config.peerAddress : `${config.nodeName}:${boundPort}`;
}
