/**
 * The replica data server (docs/replica-protocol.md): a listener for the binary block
 * channel, mutual TLS from the peer PKI (rpc/tls.ts) or, with the development flag only,
 * plaintext TCP. A TLS peer without a client certificate the cluster CA signed is refused
 * during the TLS handshake and never reaches a replica.
 *
 * Fencing across connections: when a hello binds a connection at a newer epoch, every
 * connection of that replica bound at an older epoch is closed before the new one is
 * answered, so nothing is acknowledged for the new engine while the old one can still send.
 * (The replica adopted the epoch first, so any request of the old engine that was already
 * parsed is refused with STALE_EPOCH, and those in flight finish before the new epoch's.)
 */
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { sharedBufferPool, type BufferPool } from '../common/buffer-pool.js';
import { Code, StorageError } from '../common/errors.js';
import type { ReplicaId } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import { loadPeerTls, type PeerTlsConfig } from '../rpc/tls.js';
import { DataConnection, type DataConnectionLimits } from './data-connection.js';
import { DEFAULT_MAX_PAYLOAD_BYTES } from './data-frames.js';
import type { ReplicaManager } from './replica-manager.js';

export interface DataServerOptions {
  host: string;
  /** 0 picks a free one. */
  port: number;
  manager: ReplicaManager;
  tls: PeerTlsConfig;
  log: Logger;
  pool?: BufferPool;
  limits?: Partial<DataConnectionLimits>;
}

export interface ReplicaDataServer {
  port: number;
  /** Connections bound to a replica, or still in their hello. */
  readonly connections: number;
  /** Stops listening and closes every connection; requests in flight finish in the replica. */
  close(): Promise<void>;
}

const DEFAULT_MAX_INFLIGHT_REQUESTS = 1024;

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new StorageError(Code.UNAVAILABLE, `cannot listen for replica data on ${host}:${port}: ${err.message}`, { cause: err })));
    server.listen(port, host, () => {
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    });
  });
}

function peerOf(socket: Socket): string {
  const cn = (socket as TLSSocket).getPeerCertificate?.()?.subject?.CN;
  const address = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
  return cn ? `${Array.isArray(cn) ? cn.join(',') : cn}@${address}` : address;
}

export async function startReplicaDataServer(opts: DataServerOptions): Promise<ReplicaDataServer> {
  const log = opts.log;
  const managerLimits = opts.manager.limits;
  const limits: DataConnectionLimits = {
    maxPayloadBytes: Math.min(DEFAULT_MAX_PAYLOAD_BYTES, managerLimits.maxBatchBytes),
    maxInflightRequests: DEFAULT_MAX_INFLIGHT_REQUESTS,
    maxInflightBytes: managerLimits.maxStreamInflightBytes,
    maxBatchRequests: managerLimits.maxBatchRequests,
    maxBatchBytes: managerLimits.maxBatchBytes,
    handshakeTimeoutMs: 10_000,
    ...opts.limits,
  };
  const all = new Set<DataConnection>();
  const byReplica = new Map<ReplicaId, Set<DataConnection>>();
  const host = {
    manager: opts.manager, pool: opts.pool ?? sharedBufferPool(), limits, log,
    bound(conn: DataConnection): void {
      const id = conn.replica!.id;
      let set = byReplica.get(id);
      if (!set) byReplica.set(id, (set = new Set()));
      for (const other of set) if (other.epoch < conn.epoch) other.close('fenced-by-newer-epoch', { newestEpoch: conn.epoch });
      set.add(conn);
    },
    closed(conn: DataConnection): void {
      all.delete(conn);
      const set = conn.replica ? byReplica.get(conn.replica.id) : undefined;
      set?.delete(conn);
      if (set?.size === 0) byReplica.delete(conn.replica!.id);
    },
  };
  const accept = (socket: Socket): void => {
    all.add(new DataConnection(socket, host, peerOf(socket)));
  };
  let server: Server;
  if (opts.tls.insecure === true) {
    log.warn({ role: 'data-server' }, 'replica data channel is plaintext and unauthenticated (development only)');
    server = createTcpServer(accept);
  } else {
    const m = loadPeerTls(opts.tls);
    const tlsServer = createTlsServer({ ca: m.ca, cert: m.cert, key: m.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, accept);
    tlsServer.on('tlsClientError', (err, socket) => {
      log.warn({ peer: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, reason: 'tls-refused', err: err.message }, 'replica data connection refused');
    });
    server = tlsServer;
  }
  const port = await listen(server, opts.host, opts.port);
  log.info({ host: opts.host, port, tls: opts.tls.insecure !== true }, 'replica data channel listening');
  let closing: Promise<void> | undefined;
  return {
    port,
    get connections() {
      return all.size;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const conn of [...all]) conn.close('server-closing');
      }).then(() => log.info({ port }, 'replica data channel stopped'));
      return closing;
    },
  };
}
