/**
 * The CSI sidecars `cairnctl spec` deploys: their default images (kubernetes-csi releases
 * under registry.k8s.io/sig-storage, releases listed as supported by the kubernetes-csi docs;
 * csi-snapshotter 8.4 is the first with the v1beta2 group snapshot API) and the command-line flags Cairn passes to each. Every
 * flag the generator emits is listed in SIDECAR_FLAGS, which names the flags of the default
 * version of that sidecar; the spec tests check the emitted arguments against it, so a
 * flag a version lacks cannot slip in unnoticed.
 */
export const SIDECAR_NAMES = ['provisioner', 'attacher', 'resizer', 'snapshotter', 'registrar', 'livenessprobe'] as const;
export type SidecarName = (typeof SIDECAR_NAMES)[number];
export type SidecarImages = Record<SidecarName, string>;

const REGISTRY = 'registry.k8s.io/sig-storage';

export const DEFAULT_SIDECARS: Readonly<SidecarImages> = Object.freeze({
  provisioner: `${REGISTRY}/csi-provisioner:v5.2.0`,
  attacher: `${REGISTRY}/csi-attacher:v4.8.0`,
  resizer: `${REGISTRY}/csi-resizer:v1.13.1`,
  snapshotter: `${REGISTRY}/csi-snapshotter:v8.4.0`,
  registrar: `${REGISTRY}/csi-node-driver-registrar:v2.13.0`,
  livenessprobe: `${REGISTRY}/livenessprobe:v2.15.0`,
});

/** The flags (names only) of each sidecar that the generator uses, as the default version documents them. */
export const SIDECAR_FLAGS: Readonly<Record<SidecarName, readonly string[]>> = Object.freeze({
  provisioner: ['--csi-address', '--leader-election', '--leader-election-namespace', '--timeout', '--feature-gates', '--extra-create-metadata', '--default-fstype', '--http-endpoint'],
  attacher: ['--csi-address', '--leader-election', '--leader-election-namespace', '--timeout', '--http-endpoint'],
  resizer: ['--csi-address', '--leader-election', '--leader-election-namespace', '--timeout', '--http-endpoint'],
  snapshotter: ['--csi-address', '--leader-election', '--leader-election-namespace', '--timeout', '--feature-gates', '--extra-create-metadata', '--http-endpoint'],
  registrar: ['--csi-address', '--kubelet-registration-path', '--http-endpoint'],
  livenessprobe: ['--csi-address', '--http-endpoint'],
});

/** The health/metrics port each controller sidecar serves on (--http-endpoint), so that none collide in one pod. */
export const SIDECAR_HTTP_PORTS: Readonly<Record<SidecarName, number>> = Object.freeze({
  provisioner: 9801, attacher: 9802, resizer: 9803, snapshotter: 9804, registrar: 9809, livenessprobe: 9808,
});
