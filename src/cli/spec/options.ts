/**
 * The options of `cairnctl spec`, checked once: a contradictory or invalid flag is an
 * INVALID_ARGUMENT naming the flag, the value and what to do instead. Everything the
 * generator emits follows from a SpecOptions that passed these checks.
 */
import { Code, StorageError } from '../../common/errors.js';
import { VERSION } from '../../common/version.js';
import { DEFAULT_SIDECARS, SIDECAR_NAMES, type SidecarImages, type SidecarName } from './sidecars.js';

export type EtcdSpec =
  | { kind: 'external'; endpoints: string[] }
  | { kind: 'internal'; storageClass: string; storageSize: string; image: string };

export type PoolSpec = { kind: 'file' } | { kind: 'devices'; devices: string[] } | { kind: 'glob'; glob: string };

/** How nodes get their peer certificates (docs/kubernetes.md, "Peer TLS"). */
export const PEER_TLS_MODES = ['bootstrap', 'cert-manager', 'provided', 'insecure'] as const;
export type PeerTlsMode = (typeof PEER_TLS_MODES)[number];

export interface Toleration { key?: string; operator: 'Exists' | 'Equal'; value?: string; effect?: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute' }

export interface SpecOptions {
  namespace: string;
  image: string;
  etcd: EtcdSpec;
  pool: PoolSpec;
  defaultReplicas: number;
  /** The node label whose value is a node's zone; empty: no zones. */
  zoneLabel: string;
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
  peerTls: PeerTlsMode;
  /** The secret holding the peer CA (tls.crt, tls.key). */
  peerCaSecret: string;
  kubeletDir: string;
  sidecars: SidecarImages;
  snapshots: boolean;
  groupSnapshots: boolean;
}

/** The flags as commander hands them over (strings, booleans, repeated lists). */
export interface SpecFlags {
  namespace?: string; image?: string; etcd?: string; etcdEndpoints?: string; etcdStorageClass?: string; etcdStorageSize?: string; etcdImage?: string;
  poolDevices?: string; poolDeviceGlob?: string; defaultReplicas?: string; zoneLabel?: string; nodeSelector?: string; toleration?: string[];
  peerTls?: string; peerCaSecret?: string; kubeletDir?: string; sidecarImage?: string[]; snapshots?: boolean; groupSnapshots?: boolean;
}

export const DEFAULT_IMAGE = `ghcr.io/cairn-dev/cairn:${VERSION}`;
export const DEFAULT_ETCD_IMAGE = 'registry.k8s.io/etcd:3.5.21-0';

const DNS_LABEL_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;
const IMAGE_RE = /^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$/;
const ENDPOINT_RE = /^https?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;
const DEVICE_RE = /^\/dev\/[A-Za-z0-9/_.-]+$/;
/** A glob the start script may expand: a /dev path of plain characters and *, ? or [...] (no spaces, no shell syntax). */
const GLOB_RE = /^\/dev\/[A-Za-z0-9/_.*?[\]-]+$/;
const LABEL_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
const QUANTITY_RE = /^[1-9]\d*(Ki|Mi|Gi|Ti)$/;

/** A bad flag: says which flag, what it got and what to write. */
export function flagError(flag: string, value: string, why: string): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, `${flag} "${value}": ${why}`, { details: { flag } });
}

/** A label key: an optional DNS-subdomain prefix and "/", then a name. */
export function isLabelKey(key: string): boolean {
  const slash = key.lastIndexOf('/');
  const name = slash < 0 ? key : key.slice(slash + 1);
  const prefix = slash < 0 ? '' : key.slice(0, slash);
  return LABEL_NAME_RE.test(name) && (slash < 0 || (prefix.length <= 253 && DNS_SUBDOMAIN_RE.test(prefix)));
}

function list(text: string | undefined): string[] {
  return (text ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

function parseNodeSelector(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of list(text)) {
    const [key = '', value = '', ...rest] = pair.split('=');
    if (rest.length > 0 || !isLabelKey(key) || !LABEL_VALUE_RE.test(value) || !pair.includes('=')) {
      throw flagError('--node-selector', text ?? '', `"${pair}" is not key=value with a label key and value, e.g. cairn.dev/storage=true`);
    }
    out[key] = value;
  }
  return out;
}

/** key[=value]:Effect, or key:Effect, or a bare key (any effect); `*` tolerates every taint. */
function parseToleration(text: string): Toleration {
  if (text === '*') return { operator: 'Exists' };
  const m = /^([^=:]+)(?:=([^:]*))?(?::(NoSchedule|PreferNoSchedule|NoExecute))?$/.exec(text);
  const key = m?.[1] ?? '';
  const value = m?.[2];
  if (!m || !isLabelKey(key) || (value !== undefined && !LABEL_VALUE_RE.test(value))) {
    throw flagError('--toleration', text, 'write key=value:Effect, key:Effect, key, or * (Effect is NoSchedule, PreferNoSchedule or NoExecute)');
  }
  const effect = m[3] as Toleration['effect'];
  return { key, ...(value === undefined ? { operator: 'Exists' as const } : { operator: 'Equal' as const, value }), ...(effect ? { effect } : {}) };
}

function parseEtcd(f: SpecFlags): EtcdSpec {
  const endpoints = list(f.etcdEndpoints);
  const mode = f.etcd ?? (endpoints.length > 0 ? 'external' : 'internal');
  if (mode !== 'internal' && mode !== 'external') throw flagError('--etcd', mode, 'write internal (a three-member etcd in the namespace) or external (with --etcd-endpoints)');
  if (mode === 'internal') {
    if (endpoints.length > 0) throw flagError('--etcd-endpoints', f.etcdEndpoints ?? '', 'contradicts --etcd internal: give one or the other');
    const storageClass = f.etcdStorageClass ?? 'local-storage';
    if (!DNS_SUBDOMAIN_RE.test(storageClass) || storageClass.length > 253) throw flagError('--etcd-storage-class', storageClass, 'not a StorageClass name (lower-case letters, digits, "-" and ".")');
    const storageSize = f.etcdStorageSize ?? '8Gi';
    if (!QUANTITY_RE.test(storageSize)) throw flagError('--etcd-storage-size', storageSize, 'write a whole size with Ki, Mi, Gi or Ti, e.g. 8Gi');
    const image = f.etcdImage ?? DEFAULT_ETCD_IMAGE;
    if (!IMAGE_RE.test(image)) throw flagError('--etcd-image', image, 'not an image reference, e.g. registry.k8s.io/etcd:3.5.21-0');
    return { kind: 'internal', storageClass, storageSize, image };
  }
  for (const [flag, value] of [['--etcd-storage-class', f.etcdStorageClass], ['--etcd-storage-size', f.etcdStorageSize], ['--etcd-image', f.etcdImage]] as const) {
    if (value !== undefined) throw flagError(flag, value, 'only applies with --etcd internal; an external etcd keeps its own storage');
  }
  if (endpoints.length === 0) throw flagError('--etcd', 'external', 'needs --etcd-endpoints, the client URLs of the etcd to use');
  for (const e of endpoints) {
    const port = Number(ENDPOINT_RE.exec(e)?.[3] ?? Number.NaN);
    if (!(port >= 1 && port <= 65535)) throw flagError('--etcd-endpoints', f.etcdEndpoints ?? '', `"${e}" is not an etcd client URL: write http://host:port or https://host:port, comma-separated`);
  }
  return { kind: 'external', endpoints };
}

function parsePool(f: SpecFlags): PoolSpec {
  if (f.poolDevices !== undefined && f.poolDeviceGlob !== undefined) {
    throw flagError('--pool-device-glob', f.poolDeviceGlob, 'contradicts --pool-devices: give a list of devices or a glob, not both');
  }
  if (f.poolDeviceGlob !== undefined) {
    if (!GLOB_RE.test(f.poolDeviceGlob)) throw flagError('--pool-device-glob', f.poolDeviceGlob, 'write a /dev path with *, ? or [...] and no spaces or shell syntax, e.g. /dev/disk/by-id/nvme-*');
    return { kind: 'glob', glob: f.poolDeviceGlob };
  }
  if (f.poolDevices === undefined) return { kind: 'file' };
  const devices = list(f.poolDevices);
  const bad = devices.find((d) => !DEVICE_RE.test(d));
  if (devices.length === 0 || bad !== undefined) throw flagError('--pool-devices', f.poolDevices, `${bad === undefined ? 'no device given' : `"${bad}" is not a /dev path`}: write /dev/sdb,/dev/sdc`);
  if (new Set(devices).size !== devices.length) throw flagError('--pool-devices', f.poolDevices, 'names a device twice');
  return { kind: 'devices', devices };
}

function parseSidecars(items: string[] | undefined): SidecarImages {
  const images: SidecarImages = { ...DEFAULT_SIDECARS };
  for (const item of items ?? []) {
    const eq = item.indexOf('=');
    const name = item.slice(0, eq) as SidecarName;
    const image = item.slice(eq + 1);
    if (eq < 0 || !SIDECAR_NAMES.includes(name)) throw flagError('--sidecar-image', item, `write name=image with name one of ${SIDECAR_NAMES.join(', ')}`);
    if (!IMAGE_RE.test(image)) throw flagError('--sidecar-image', item, `"${image}" is not an image reference`);
    images[name] = image;
  }
  return images;
}

function parseReplicas(text: string | undefined): number {
  const n = Number(text ?? '3');
  if (!/^\d+$/.test(text ?? '3') || n < 1 || n > 3) throw flagError('--default-replicas', text ?? '', 'write 1, 2 or 3');
  return n;
}

/** The flags as a checked SpecOptions, or the first problem as an INVALID_ARGUMENT naming its flag. */
export function parseSpecOptions(f: SpecFlags): SpecOptions {
  const namespace = f.namespace ?? 'cairn-system';
  if (!DNS_LABEL_RE.test(namespace)) throw flagError('--namespace', namespace, 'not a namespace name: 1-63 lower-case letters, digits or "-"');
  const image = f.image ?? DEFAULT_IMAGE;
  if (!IMAGE_RE.test(image)) throw flagError('--image', image, 'not an image reference, e.g. registry.example.com/cairn:0.1.0');
  const zoneLabel = f.zoneLabel ?? 'topology.kubernetes.io/zone';
  if (zoneLabel !== '' && !isLabelKey(zoneLabel)) throw flagError('--zone-label', zoneLabel, 'not a label key, e.g. topology.kubernetes.io/zone (or "" for no zones)');
  const peerTls = (f.peerTls ?? 'bootstrap') as PeerTlsMode;
  if (!PEER_TLS_MODES.includes(peerTls)) throw flagError('--peer-tls', peerTls, `write one of ${PEER_TLS_MODES.join(', ')}`);
  const peerCaSecret = f.peerCaSecret ?? 'cairn-peer-ca';
  if (!DNS_SUBDOMAIN_RE.test(peerCaSecret)) throw flagError('--peer-ca-secret', peerCaSecret, 'not a Secret name');
  if (peerTls === 'insecure' && f.peerCaSecret !== undefined) throw flagError('--peer-ca-secret', peerCaSecret, 'contradicts --peer-tls insecure, which uses no certificates');
  const kubeletDir = (f.kubeletDir ?? '/var/lib/kubelet').replace(/\/+$/, '');
  if (!/^\/[A-Za-z0-9/_.-]+$/.test(kubeletDir)) throw flagError('--kubelet-dir', f.kubeletDir ?? '', 'write the absolute path of kubelet\'s root directory, e.g. /var/lib/kubelet');
  const snapshots = f.snapshots ?? true;
  const groupSnapshots = f.groupSnapshots ?? false;
  if (groupSnapshots && !snapshots) throw flagError('--group-snapshots', 'on', 'needs snapshots: drop --no-snapshots, or drop --group-snapshots');
  return {
    namespace, image, etcd: parseEtcd(f), pool: parsePool(f), defaultReplicas: parseReplicas(f.defaultReplicas), zoneLabel,
    nodeSelector: parseNodeSelector(f.nodeSelector), tolerations: (f.toleration ?? []).map(parseToleration), peerTls, peerCaSecret, kubeletDir,
    sidecars: parseSidecars(f.sidecarImage), snapshots, groupSnapshots,
  };
}
