/** A replica manager on a temp file pool and node store, for the replica tests. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isStorageError, type Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { FileBackend } from '../../src/pool/file-backend.js';
import type { IoRequest, IoResult, ReplicaLimits } from '../../src/replica/io-types.js';
import { ReplicaManager } from '../../src/replica/replica-manager.js';
import { startReplicaServer, type ReplicaServer } from '../../src/replica/replica-server.js';
import type { PeerTlsConfig } from '../../src/rpc/tls.js';
import type { Replica } from '../../src/replica/replica.js';
import { NodeStore } from '../../src/store/node-store.js';

export interface ReplicaFixture {
  dir: string;
  pool: FileBackend;
  store: NodeStore;
  manager: ReplicaManager;
  /** Closes the manager and store and opens them again on the same files (a restart). */
  reopen(): Promise<void>;
  cleanup(): Promise<void>;
}

export async function replicaFixture(limits?: Partial<ReplicaLimits>): Promise<ReplicaFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-replica-'));
  const log = silentLogger();
  const storePath = join(dir, 'node.db');
  const fx: ReplicaFixture = {
    dir,
    pool: await FileBackend.open({ dir: join(dir, 'pool'), log }),
    store: NodeStore.open(storePath, log),
    manager: undefined as unknown as ReplicaManager,
    async reopen() {
      await fx.manager.close();
      fx.store.close();
      fx.store = NodeStore.open(storePath, log);
      fx.manager = new ReplicaManager({ pool: fx.pool, store: fx.store, log, limits });
    },
    async cleanup() {
      await fx.manager.close();
      fx.store.close();
      await fx.pool.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  fx.manager = new ReplicaManager({ pool: fx.pool, store: fx.store, log, limits });
  return fx;
}

/** Runs a batch and collects its results, ordered by seq. */
export function runBatch(replica: Replica, epoch: number, requests: IoRequest[]): Promise<IoResult[]> {
  return new Promise((resolve) => {
    const results: IoResult[] = [];
    if (requests.length === 0) resolve(results);
    replica.runBatch(epoch, requests, (r) => {
      results.push(r);
      if (results.length === requests.length) resolve(results.sort((a, b) => a.seq - b.seq));
    });
  });
}

/** A buffer of `length` bytes, each `byte`. */
export function filled(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

/** A replica server on loopback over a fresh fixture. */
export interface ReplicaNode {
  fx: ReplicaFixture;
  server: ReplicaServer;
  address: string;
  cleanup(): Promise<void>;
}

export async function startReplicaNode(tls: PeerTlsConfig, limits?: Partial<ReplicaLimits>): Promise<ReplicaNode> {
  const fx = await replicaFixture(limits);
  const server = await startReplicaServer({ listen: '127.0.0.1:0', pool: fx.pool, store: fx.store, log: silentLogger(), tls, manager: fx.manager, shutdownTimeoutMs: 1000 });
  return {
    fx, server, address: `127.0.0.1:${server.port}`,
    async cleanup() {
      await server.close();
      await fx.cleanup();
    },
  };
}

/** The StorageError code a call ends with, 'resolved' if it succeeds, or what else it threw. */
export async function codeOf(p: Promise<unknown>): Promise<Code | string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isStorageError(err) ? err.code : `not a StorageError: ${String(err)}`;
  }
}
