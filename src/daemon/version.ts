/** The package version; it lives in common/ so that csi/ (GetPluginInfo) can read it too. */
export { VERSION } from '../common/version.js';
