/**
 * The CSI Identity service: who the plugin is (GetPluginInfo), what it offers as a whole
 * (GetPluginCapabilities) and whether it is ready (Probe). Every cairnd serves it, whatever
 * its role.
 *
 * GetPluginCapabilities describes the plugin as deployed, not this process: the spec wants
 * every instance of one version to answer the same, wherever it runs and whichever services
 * it serves. A Cairn deployment always has a Controller (role `all` on a single node, the
 * `controller` Deployment in a cluster), so CONTROLLER_SERVICE is always advertised, also by
 * a node-role daemon that answers the Controller's RPCs UNIMPLEMENTED. (The Kubernetes
 * sidecars ask the socket they sit next to: external-provisioner and -attacher the
 * controller's, node-driver-registrar only calls GetPluginInfo.)
 */
import { Code, StorageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { VERSION } from '../common/version.js';
import { csiService, type CsiService } from './csi-call.js';
import { CsiLocks } from './csi-locks.js';

/** The CSI driver name: the `provisioner` of a StorageClass and the CSIDriver object's name. */
export const CSI_DRIVER_NAME = 'csi.cairn.dev';

export interface IdentityServiceOptions {
  log: Logger;
  /**
   * True once this process can serve its other CSI services (the store and the pool are
   * usable). Probe answers ready=false until then; a throw means unhealthy
   * (FAILED_PRECONDITION with its message).
   */
  ready: () => boolean | Promise<boolean>;
  /** vendor_version; the package version by default. */
  version?: string;
}

/** The plugin's capabilities: the same from every cairnd of this version (see the top of this file). */
export const PLUGIN_CAPABILITIES = Object.freeze([
  { service: { type: 'CONTROLLER_SERVICE' } },
  { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } },
  // Group snapshots (VolumeGroupSnapshot) are served by the same Controller deployment.
  { service: { type: 'GROUP_CONTROLLER_SERVICE' } },
  { volumeExpansion: { type: 'ONLINE' } },
]);

export function identityService(options: IdentityServiceOptions): CsiService {
  const capabilities = PLUGIN_CAPABILITIES;
  return csiService('Identity', {
    GetPluginInfo: {
      handler: () => ({ name: CSI_DRIVER_NAME, vendorVersion: options.version ?? VERSION, manifest: {} }),
    },
    GetPluginCapabilities: {
      handler: () => ({ capabilities }),
    },
    Probe: {
      quiet: true,
      handler: async () => {
        let ready: boolean;
        try {
          ready = await options.ready();
        } catch (err) {
          throw new StorageError(Code.FAILED_PRECONDITION, `cairnd is not healthy: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        }
        return { ready: { value: ready } };
      },
    },
  // Identity calls touch no volume: they take no locks, so a private lock table will do.
  }, { log: options.log, locks: new CsiLocks() });
}
