/**
 * The one place cairnd starts its CSI server, whatever its role. Every role serves the
 * Identity service on --csi-socket; Probe answers ready once this role's dependencies are
 * usable (`ready`: the node store and pool for `node` and `all`, the cluster store for
 * `controller`). The Controller service joins it in `controller` and `all`, and the Node
 * service in `node` and `all`, as those services are built.
 */
import type { Logger } from '../common/log.js';
import type { SnapshotService } from '../cluster/snapshot-types.js';
import type { GroupCoordinator } from '../snapshot/group-coordinator.js';
import type { VolumeApi } from '../cluster/volume-views.js';
import type { RuleSnapshots } from '../snapshot/rule-snapshots.js';
import type { GroupRuleSnapshots } from '../snapshot/group-rules.js';
import { controllerService } from '../csi/controller-server.js';
import { CsiLocks } from '../csi/csi-locks.js';
import { startCsiServer, type CsiCallObserver, type CsiServer } from '../csi/csi-server.js';
import { identityService } from '../csi/identity-server.js';
import { groupControllerService } from '../csi/group-controller.js';
import { nodeService, type NodeServiceOptions } from '../csi/node-server.js';
import type { DaemonRole } from './config.js';
import { VERSION } from './version.js';

export interface CsiDeps {
  socketPath: string;
  log: Logger;
  /** Told of every CSI call answered (the metrics' CSI families). */
  onCall?: CsiCallObserver;
  /** Whether this role can serve its CSI services now (Probe). */
  ready: () => boolean | Promise<boolean>;
  /** Roles `controller` and `all`: the cluster's volume API and snapshot service the Controller service calls. */
  controller?: { volumes: VolumeApi; snapshots?: SnapshotService; ruleSnapshots?: RuleSnapshots; groups?: GroupCoordinator; groupRules?: GroupRuleSnapshots };
  /** Roles `node` and `all`: what the Node service needs (the stager and volumes of the data plane, this node's name, zone and volume limit). */
  node?: Omit<NodeServiceOptions, 'log' | 'locks'>;
}

export async function startCsi(role: DaemonRole, deps: CsiDeps): Promise<CsiServer> {
  const log = deps.log.child({ component: 'csi' });
  // Identity answers the same capabilities in every role (identity-server.ts says why).
  const identity = identityService({ log, ready: deps.ready, version: VERSION });
  // One lock table for every volume-touching service of the process: a busy volume is ABORTED whichever service holds it.
  const locks = new CsiLocks();
  const services = [
    identity,
    ...(deps.controller ? [controllerService({
      volumes: deps.controller.volumes, ...(deps.controller.snapshots ? { snapshots: deps.controller.snapshots } : {}),
      ...(deps.controller.ruleSnapshots ? { ruleSnapshots: deps.controller.ruleSnapshots } : {}), log, locks,
    })] : []),
    ...(deps.controller?.groups && deps.controller.snapshots ? [groupControllerService({
      groups: deps.controller.groups, snapshots: deps.controller.snapshots, log, locks, ...(deps.controller.groupRules ? { groupRules: deps.controller.groupRules } : {}),
    })] : []),
    ...(deps.node ? [nodeService({ ...deps.node, log, locks })] : []),
  ];
  const server = await startCsiServer({ socketPath: deps.socketPath, log, services, ...(deps.onCall ? { onCall: deps.onCall } : {}) });
  log.info({ role, socket: server.socketPath }, 'csi services started');
  return server;
}
