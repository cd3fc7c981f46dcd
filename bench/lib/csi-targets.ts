/**
 * The cairnd setups the CSI benchmark measures, each with a CSI client on node-0's socket
 * (kubelet's and the sidecars' endpoint) and the cairnctl API client of the same daemon:
 *
 * - `embedded`: one cairnd, role all, on the embedded SQLite store (the single-node default);
 * - `etcd`: one cairnd, role all, on a real etcd (test/helpers/cluster.ts, mutual TLS);
 * - `etcd-rf2`: two cairnd on one etcd, volumes of 2 replicas (the engine on node-0).
 *
 * Daemons log at info, the daemon's default (one line per CSI call).
 */
import { join } from 'node:path';
import type { ApiClient } from '../../src/cli/api-client.js';
import { Cluster } from '../../test/helpers/cluster.js';
import { codeName, csiClient, type CsiTestClient } from '../../test/helpers/csi-client.js';
import { Daemon } from '../../test/helpers/daemon.js';

export const TARGET_KINDS = ['embedded', 'etcd', 'etcd-rf2'] as const;
export type TargetKind = (typeof TARGET_KINDS)[number];

export interface CsiTarget {
  kind: TargetKind;
  /** What the tables show, e.g. "etcd, 2 nodes, rf=2". */
  label: string;
  replicas: number;
  csi: CsiTestClient;
  api: ApiClient;
  /** The daemons' data directories (their attachments live under them). */
  dataDirs(): string[];
  /** The pid of every cairnd. */
  pids(): number[];
  /**
   * Starts again what a Ctrl-C at the terminal stopped (the daemons and etcd share the
   * bench's process group), so that staged volumes can still be unstaged through CSI: when
   * node-0 does not answer a CSI Probe, every daemon is stopped (waiting for its exit),
   * etcd restarted on its data, and the daemons launched again on theirs.
   */
  revive(): Promise<void>;
  /** Stops every process and removes every directory of the setup; a second call waits for the first. */
  destroy(failed: boolean): Promise<void>;
}

const LOG_ARGS = ['--log-level', 'info'];

export async function startTarget(kind: TargetKind): Promise<CsiTarget> {
  return kind === 'embedded' ? startEmbedded() : startCluster(kind, kind === 'etcd-rf2' ? 2 : 1);
}

async function withClients(daemon: Daemon, rest: Omit<CsiTarget, 'csi' | 'api'>, stop: () => Promise<void>): Promise<CsiTarget> {
  const socket = join(daemon.dataDir, 'csi.sock');
  try {
    const api = daemon.client();
    let destroyed: Promise<void> | undefined;
    const target: CsiTarget = {
      ...rest, csi: await csiClient(socket), api,
      async revive() {
        if (codeName(await target.csi.identity.Probe!({}, { timeoutMs: 3000 })) === 'OK') return;
        await rest.revive();
        // A new channel: the old one is in its reconnect backoff and would fail calls fast.
        target.csi.close();
        target.csi = await csiClient(socket, 30_000);
      },
      // Once: the bench's main path and its Ctrl-C cleanup may both ask, and both wait for it.
      destroy(failed) {
        destroyed ??= (async () => {
          target.csi.close();
          api.close();
          await rest.destroy(failed);
        })();
        return destroyed;
      },
    };
    return target;
  } catch (err) {
    await stop();
    throw err;
  }
}

async function startEmbedded(): Promise<CsiTarget> {
  const d = await Daemon.start({ extraArgs: ['--node-name', 'bench-node', ...LOG_ARGS] });
  return withClients(d, {
    kind: 'embedded', label: 'embedded store, 1 node', replicas: 1,
    dataDirs: () => [d.dataDir],
    pids: () => [d.pid],
    async revive() {
      await d.stop();
      await d.launch();
    },
    async destroy(failed) {
      if (failed) console.error(`----- cairnd (${d.logFile}), last lines -----\n${d.logTail(40)}`);
      await d.destroy();
    },
  }, () => d.destroy());
}

async function startCluster(kind: TargetKind, nodes: number): Promise<CsiTarget> {
  // The daemon's own replica timeout, so that a busy shared machine does not fault replicas.
  const cluster = await Cluster.start({ nodes, flags: { '--replica-timeout-ms': '8000' }, extraArgs: LOG_ARGS });
  const daemons = Array.from({ length: nodes }, (_, i) => cluster.node(i));
  return withClients(daemons[0]!, {
    kind, label: nodes === 1 ? 'etcd, 1 node' : `etcd, ${nodes} nodes, rf=${nodes}`, replicas: nodes,
    dataDirs: () => daemons.map((d) => d.dataDir),
    pids: () => daemons.map((d) => d.pid),
    async revive() {
      for (const d of daemons) await d.stop();
      await cluster.startEtcd();
      for (const d of daemons) await d.launch();
    },
    destroy: (failed) => cluster.destroy({ failed }),
  }, () => cluster.destroy({ failed: true }));
}
