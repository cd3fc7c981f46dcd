/**
 * cairnd's configuration: every setting has a command-line flag, an environment variable
 * and a documented default. Parsed and validated once, then frozen. This is the only file
 * that reads process.env.
 */
import { hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { Code, StorageError } from '../common/errors.js';
import type { LogFormat } from '../common/log.js';
import { parseSize } from '../common/units.js';

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
}

/** One row per setting: how it is named on the command line and in the environment. */
export interface SettingSpec {
  key: keyof DaemonConfig;
  flag: string;
  env: string;
  description: string;
  /** The default, as text; may refer to other settings (resolved in `resolveConfig`). */
  defaultText: string;
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
];

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
/** A unix socket path must fit sun_path (108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107;

function invalid(setting: SettingSpec, value: string, why: string): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, `invalid ${setting.flag.split(' ')[0]} / ${setting.env} "${value}": ${why}`);
}

/**
 * Merges flags over environment over defaults, validates, and freezes. `flags` holds the
 * raw strings commander parsed, keyed by setting key.
 */
export function resolveConfig(flags: Partial<Record<keyof DaemonConfig, string>>, env: NodeJS.ProcessEnv = process.env, isTty = Boolean(process.stdout.isTTY)): Readonly<DaemonConfig> {
  const raw = (key: keyof DaemonConfig): string | undefined => {
    const spec = SETTINGS.find((s) => s.key === key)!;
    return flags[key] ?? env[spec.env];
  };
  const spec = (key: keyof DaemonConfig): SettingSpec => SETTINGS.find((s) => s.key === key)!;
  const path = (text: string): string => (isAbsolute(text) ? text : resolve(text));

  const dataDir = path(raw('dataDir') ?? '/var/lib/cairn');
  const poolBackend = raw('poolBackend') ?? 'auto';
  if (poolBackend !== 'file' && poolBackend !== 'dm' && poolBackend !== 'auto') throw invalid(spec('poolBackend'), poolBackend, 'use file, dm or auto');
  const devicesText = raw('poolDevices') ?? '';
  const poolDevices = devicesText.split(',').map((d) => d.trim()).filter(Boolean);
  for (const d of poolDevices) if (!isAbsolute(d)) throw invalid(spec('poolDevices'), devicesText, 'write absolute block device paths, e.g. /dev/sdb,/dev/sdc');
  if (poolBackend === 'dm' && poolDevices.length === 0) throw invalid(spec('poolDevices'), devicesText, 'the dm backend needs at least one block device');

  const capacityText = raw('poolCapacityBytes') ?? '0';
  let poolCapacityBytes: number;
  try {
    poolCapacityBytes = parseSize(capacityText);
  } catch {
    throw invalid(spec('poolCapacityBytes'), capacityText, 'write a size such as 100GiB');
  }

  const logLevel = raw('logLevel') ?? 'info';
  if (!(LEVELS as readonly string[]).includes(logLevel)) throw invalid(spec('logLevel'), logLevel, `use one of ${LEVELS.join(', ')}`);
  const formatText = raw('logFormat') ?? 'auto';
  if (!['json', 'human', 'auto'].includes(formatText)) throw invalid(spec('logFormat'), formatText, 'use json, human or auto');
  const logFormat: LogFormat = formatText === 'auto' ? (isTty ? 'human' : 'json') : (formatText as LogFormat);

  const timeoutText = raw('shutdownTimeoutMs') ?? '30000';
  const shutdownTimeoutMs = Number(timeoutText);
  if (!Number.isInteger(shutdownTimeoutMs) || shutdownTimeoutMs <= 0) throw invalid(spec('shutdownTimeoutMs'), timeoutText, 'a positive whole number of milliseconds');

  const httpListen = raw('httpListen') ?? '127.0.0.1:9470';
  if (httpListen !== '' && !/^[^\s]+:\d{1,5}$/.test(httpListen)) throw invalid(spec('httpListen'), httpListen, 'write host:port, or an empty string to disable');

  const apiSocket = path(raw('apiSocket') ?? join(dataDir, 'cairnd.sock'));
  if (Buffer.byteLength(apiSocket) > MAX_SOCKET_PATH) throw invalid(spec('apiSocket'), apiSocket, `unix socket paths are limited to ${MAX_SOCKET_PATH} bytes; choose a shorter path`);
  const nbdSocketDir = path(raw('nbdSocketDir') ?? join(dataDir, 'nbd'));
  // Room for at least "/<16 chars>.sock" below it.
  if (Buffer.byteLength(nbdSocketDir) > MAX_SOCKET_PATH - 24) throw invalid(spec('nbdSocketDir'), nbdSocketDir, 'too long for unix socket paths below it; choose a shorter directory');

  const nodeName = raw('nodeName') ?? hostname();
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(nodeName)) throw invalid(spec('nodeName'), nodeName, 'use letters, digits, "." and "-"');

  return Object.freeze({
    nodeName,
    dataDir,
    poolBackend,
    poolDir: path(raw('poolDir') ?? join(dataDir, 'pool')),
    poolDevices: Object.freeze(poolDevices) as string[],
    poolCapacityBytes,
    apiSocket,
    nbdSocketDir,
    httpListen,
    logLevel: logLevel as DaemonConfig['logLevel'],
    logFormat,
    shutdownTimeoutMs,
  });
}
