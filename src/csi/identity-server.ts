/**
 * The CSI Identity service: who the plugin is (GetPluginInfo), what it offers as a whole
 * (GetPluginCapabilities) and whether it is ready (Probe). Every cairnd serves it, whatever
 * its role.
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
   * Whether the plugin as deployed has a Controller service. The spec wants every instance
   * of one version to answer the same, so a node-role daemon of a cluster that runs a
   * controller Deployment says true as well; false only where no Controller runs anywhere.
   */
  controllerService: boolean;
  /**
   * True once this process can serve its other CSI services (the store and the pool are
   * usable). Probe answers ready=false until then; a throw means unhealthy
   * (FAILED_PRECONDITION with its message).
   */
  ready: () => boolean | Promise<boolean>;
  /** vendor_version; the package version by default. */
  version?: string;
}

export function identityService(options: IdentityServiceOptions): CsiService {
  const capabilities = [
    ...(options.controllerService ? [{ service: { type: 'CONTROLLER_SERVICE' } }] : []),
    { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } },
    { volumeExpansion: { type: 'ONLINE' } },
  ];
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
