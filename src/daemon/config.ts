/**
 * cairnd's configuration: every setting has a command-line flag, an environment variable
 * and a documented default. Parsed and validated once, then frozen. This is the only file
 * that reads process.env.
 *
 * Two modes follow from --etcd-endpoints: without it, one node with the embedded cluster
 * store (no peers, one replica per volume); with it, a multi-node cluster whose nodes serve
 * replicas to each other on the peer port, over mutual TLS. The settings table itself
 * (flags, variables, defaults) is settings.ts.
 *
 * --role picks what this process serves: `all` (the default) everything, `node` the data
 * plane, `controller` the CSI Controller over etcd with no data plane (no pool, no replica
 * service, no NBD), which the embedded store cannot serve: it is refused here.
 */
import { hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { Code, StorageError } from '../common/errors.js';
import type { LogFormat } from '../common/log.js';
import { parseSize } from '../common/units.js';
import type { PeerTlsConfig } from '../rpc/tls.js';
import { MAX_REPLICAS } from '../cluster/volume-doc.js';
import { inClusterConfig } from '../snapshot/kube-api.js';
import {
  DEFAULT_DATA_PORT, DEFAULT_PEER_PORT, MAX_SOCKET_PATH, MIN_NODE_TTL_MS, REPLICA_TRANSPORTS, ROLES, specOf, type DaemonConfig, type DaemonRole, type RawFlags, type SettingKey,
  type ReplicaTransport,
} from './settings.js';

export {
  commanderAttribute, DEFAULT_PEER_PORT, flagsFromCommander, MAX_SOCKET_PATH, MIN_NODE_TTL_MS, ROLES, SETTINGS,
  type DaemonConfig, type DaemonRole, type RawFlags, type SettingSpec,
} from './settings.js';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** The same rule as the cluster store's key prefix (src/cluster/store/keys.ts). */
const CLUSTER_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** host:port with a DNS name, an IPv4 address or a bracketed IPv6 address. */
const HOST_PORT_RE = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;
const ENDPOINT_RE = /^https?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})\/?$/;
/** A Kubernetes label name or value: up to 63 characters, alphanumeric at both ends. */
const LABEL_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const LABEL_PREFIX_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

function invalid(key: SettingKey, value: string, why: string): StorageError {
  const setting = specOf(key);
  return new StorageError(Code.INVALID_ARGUMENT, `invalid ${setting.flag.split(' ')[0]} / ${setting.env} "${value}": ${why}`);
}

/** Reads one setting at a time: flag over environment over default. */
class Reader {
  constructor(private readonly flags: RawFlags, private readonly env: NodeJS.ProcessEnv) {}

  raw(key: SettingKey): string | undefined {
    // A boolean flag may arrive as `true` from commander when the caller passed its opts on as is.
    const flag = this.flags[key] as unknown;
    if (flag !== undefined) return String(flag);
    return this.env[specOf(key).env];
  }

  given(key: SettingKey): boolean {
    return this.raw(key) !== undefined;
  }

  path(key: SettingKey, fallback: string): string {
    const text = this.raw(key) ?? fallback;
    return isAbsolute(text) ? text : resolve(text);
  }

  wholeNumber(key: SettingKey, fallback: number, min: number, why: string): number {
    const text = this.raw(key) ?? String(fallback);
    const n = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min) throw invalid(key, text, why);
    return n;
  }

  boolean(key: SettingKey): boolean {
    const text = this.raw(key);
    if (text === undefined || text === '') return false;
    const t = text.trim().toLowerCase();
    if (t === 'true' || t === '1') return true;
    if (t === 'false' || t === '0') return false;
    throw invalid(key, text, 'write true or false (or 1 or 0)');
  }

  size(key: SettingKey, fallback: string, why: string): number {
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

type PeerSettings = Pick<DaemonConfig, 'peerListen' | 'peerAddress' | 'peerTlsCa' | 'peerTlsCert' | 'peerTlsKey' | 'peerInsecure' | 'dataListen' | 'replicaTransport'>;

const TLS_REQUIRED = 'peer TLS is required: give --peer-tls-ca, --peer-tls-cert and --peer-tls-key, or --peer-insecure for development';

function resolvePeers(r: Reader, nodeName: string, clustered: boolean, role: DaemonRole): PeerSettings {
  const hostsReplicas = role !== 'controller';
  const peerListen = r.raw('peerListen') ?? (clustered && hostsReplicas ? `0.0.0.0:${DEFAULT_PEER_PORT}` : '');
  const listenPort = peerListen === '' ? 0 : parsePort(peerListen);
  if (Number.isNaN(listenPort)) throw invalid('peerListen', peerListen, 'write host:port (port 0 picks a free one), e.g. 0.0.0.0:9471, or an empty string to disable');
  if (!hostsReplicas && peerListen !== '') throw invalid('peerListen', peerListen, 'the controller role hosts no replicas, so it runs no replica service: leave --peer-listen unset');

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
  return {
    peerListen, peerAddress, peerTlsCa: abs(tls.peerTlsCa), peerTlsCert: abs(tls.peerTlsCert), peerTlsKey: abs(tls.peerTlsKey), peerInsecure,
    dataListen: resolveDataListen(r, peerListen, listenPort), replicaTransport: resolveTransport(r),
  };
}

/** The data channel's listen address: given, or the peer host at 9472 (port 0 when the peer port is 0, as in tests). */
function resolveDataListen(r: Reader, peerListen: string, peerPort: number): string {
  const given = r.raw('dataListen');
  const host = peerListen.slice(0, peerListen.lastIndexOf(':'));
  const dataListen = given ?? (peerListen === '' ? '' : `${host}:${peerPort === 0 ? 0 : DEFAULT_DATA_PORT}`);
  if (dataListen === '') return '';
  const port = parsePort(dataListen);
  if (Number.isNaN(port)) throw invalid('dataListen', dataListen, 'write host:port (port 0 picks a free one), e.g. 0.0.0.0:9472, or an empty string to disable');
  if (peerListen === '') throw invalid('dataListen', dataListen, 'the data channel serves this node\'s replicas, which need the replica service too: set --peer-listen');
  if (port !== 0 && port === peerPort) throw invalid('dataListen', dataListen, `port ${port} is the replica service's (--peer-listen): use another, e.g. ${DEFAULT_DATA_PORT}`);
  return dataListen;
}

function resolveTransport(r: Reader): ReplicaTransport {
  const text = r.raw('replicaTransport') ?? 'channel';
  if (!(REPLICA_TRANSPORTS as readonly string[]).includes(text)) throw invalid('replicaTransport', text, `use one of ${REPLICA_TRANSPORTS.join(', ')}`);
  return text as ReplicaTransport;
}

type TuningSettings = Pick<DaemonConfig, 'nodeTtlMs' | 'replicaTimeoutMs' | 'rebuildRateBytes' | 'repairWaitMs' | 'orphanGraceMs' | 'shutdownTimeoutMs' | 'maxVolumesPerNode' | 'attachReconnectMs'>;

function resolveTuning(r: Reader): TuningSettings {
  return {
    shutdownTimeoutMs: r.wholeNumber('shutdownTimeoutMs', 30_000, 1, 'a positive whole number of milliseconds'),
    nodeTtlMs: r.wholeNumber('nodeTtlMs', 10_000, MIN_NODE_TTL_MS, `a whole number of milliseconds, at least ${MIN_NODE_TTL_MS}`),
    replicaTimeoutMs: r.wholeNumber('replicaTimeoutMs', 8000, 1, 'a positive whole number of milliseconds'),
    rebuildRateBytes: r.size('rebuildRateBytes', '256MiB', 'write bytes per second such as 200MiB, or 0 for unlimited'),
    repairWaitMs: r.wholeNumber('repairWaitMs', 300_000, 0, 'a whole number of milliseconds (0 replaces a faulted replica at once)'),
    orphanGraceMs: r.wholeNumber('orphanGraceMs', 600_000, 1000, 'a whole number of milliseconds, at least 1000'),
    maxVolumesPerNode: r.wholeNumber('maxVolumesPerNode', 0, 0, 'a whole number of volumes (0 = no limit)'),
    attachReconnectMs: r.wholeNumber('attachReconnectMs', 120_000, 1000, 'a whole number of milliseconds, at least 1000'),
  };
}

type RoleSettings = Pick<DaemonConfig, 'role' | 'csiSocket'>;

/** The role, and the CSI socket (the same default in every role: a node's DaemonSet sets the kubelet plugin path). */
function resolveRole(r: Reader, dataDir: string, embedded: boolean): RoleSettings {
  const role = r.raw('role') ?? 'all';
  if (!(ROLES as readonly string[]).includes(role)) throw invalid('role', role, `use one of ${ROLES.join(', ')}`);
  if (role === 'controller' && embedded) {
    throw invalid('role', role, 'the controller role needs a cluster store the node daemons share: give --etcd-endpoints, or run one process with --role all on a single node (the embedded store)');
  }
  const csiSocket = r.path('csiSocket', join(dataDir, 'csi.sock'));
  if (Buffer.byteLength(csiSocket) > MAX_SOCKET_PATH) throw invalid('csiSocket', csiSocket, `unix socket paths are limited to ${MAX_SOCKET_PATH} bytes; choose a shorter path`);
  return { role: role as DaemonRole, csiSocket };
}

type LocalSettings = Omit<DaemonConfig, keyof ClusterSettings | keyof PeerSettings | keyof TuningSettings | keyof RoleSettings>;

function resolveLocal(r: Reader, isTty: boolean): LocalSettings {
  const dataDir = r.path('dataDir', '/var/lib/cairn');
  const poolBackend = r.raw('poolBackend') ?? 'auto';
  if (poolBackend !== 'file' && poolBackend !== 'dm' && poolBackend !== 'auto') throw invalid('poolBackend', poolBackend, 'use file, dm or auto');
  const devicesText = r.raw('poolDevices') ?? '';
  const poolDevices = devicesText.split(',').map((d) => d.trim()).filter(Boolean);
  for (const d of poolDevices) if (!isAbsolute(d)) throw invalid('poolDevices', devicesText, 'write absolute block device paths, e.g. /dev/sdb,/dev/sdc');
  if (poolBackend === 'dm' && poolDevices.length === 0) throw invalid('poolDevices', devicesText, 'the dm backend needs at least one block device');
  const poolCapacityBytes = r.size('poolCapacityBytes', '0', 'write a size such as 100GiB');
  const filePoolLayout = r.raw('filePoolLayout') ?? 'auto';
  if (filePoolLayout !== 'auto' && filePoolLayout !== 'direct' && filePoolLayout !== 'xfs-image') throw invalid('filePoolLayout', filePoolLayout, 'use auto, direct or xfs-image');
  const filePoolSizeBytes = r.size('filePoolSizeBytes', '0', 'write a size such as 500GiB, or 0 for the host filesystem\'s size');

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
    filePoolLayout,
    filePoolSizeBytes,
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
  const role = resolveRole(r, local.dataDir, cluster.etcdEndpoints.length === 0);
  const peers = resolvePeers(r, local.nodeName, cluster.etcdEndpoints.length > 0, role.role);
  return Object.freeze({ ...local, ...cluster, ...role, ...peers, ...resolveTuning(r), kubernetes: inClusterConfig(env) });
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
