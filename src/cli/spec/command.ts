/**
 * `cairnctl spec`: prints the Kubernetes spec of a Cairn install (one YAML stream) for the
 * flags given. Bad or contradictory flags exit 1 naming the flag, before anything is printed.
 */
import { Command } from 'commander';
import { parseSpecOptions, PEER_TLS_MODES, type SpecFlags } from './options.js';
import { renderSpec } from './generate.js';
import { SIDECAR_NAMES } from './sidecars.js';

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function addSpecCommand(program: Command, write: (text: string) => void): void {
  program.command('spec')
    .description('print the Kubernetes spec (namespace, RBAC, CSIDriver, DaemonSet, controller, classes) of a Cairn install')
    .option('--namespace <name>', 'namespace of Cairn\'s objects [default cairn-system]')
    .option('--image <ref>', 'the Cairn image [default ghcr.io/cairn-dev/cairn:<version>]')
    .option('--etcd <mode>', 'internal (a three-member etcd StatefulSet of its own) or external (with --etcd-endpoints) [default internal, external when --etcd-endpoints is given]')
    .option('--etcd-endpoints <urls>', 'comma-separated client URLs of an existing etcd, e.g. https://etcd-0:2379,https://etcd-1:2379')
    .option('--etcd-storage-class <name>', 'StorageClass of the internal etcd\'s volumes (local storage) [default local-storage]')
    .option('--etcd-storage-size <size>', 'size of each internal etcd volume [default 8Gi]')
    .option('--etcd-image <ref>', 'image of the internal etcd [default registry.k8s.io/etcd:3.5.21-0]')
    .option('--pool-devices <list>', 'comma-separated block devices of every node\'s pool (dm backend), e.g. /dev/sdb,/dev/sdc [default: a file pool in /var/lib/cairn]')
    .option('--pool-device-glob <glob>', 'the pool devices as a glob each node expands at start, e.g. /dev/disk/by-id/nvme-*')
    .option('--default-replicas <n>', 'replicas of a volume whose class does not say (1-3) [default 3]')
    .option('--zone-label <key>', 'node label holding each node\'s zone; "" for none [default topology.kubernetes.io/zone]')
    .option('--node-selector <k=v,...>', 'run Cairn only on nodes with these labels')
    .option('--toleration <key[=value][:Effect]>', 'tolerate a taint (repeatable; * tolerates all)', collect)
    .option('--peer-tls <mode>', `peer mutual TLS: ${PEER_TLS_MODES.join(', ')} [default bootstrap]`)
    .option('--peer-ca-secret <name>', 'Secret (tls.crt, tls.key) of the peer CA [default cairn-peer-ca]')
    .option('--kubelet-dir <dir>', 'kubelet\'s root directory on the nodes [default /var/lib/kubelet]')
    .option('--sidecar-image <name=ref>', `replace a CSI sidecar image (repeatable); names: ${SIDECAR_NAMES.join(', ')}`, collect)
    .option('--no-snapshots', 'leave out the snapshotter, VolumeSnapshotClass and the SnapshotRule CRD')
    .option('--group-snapshots', 'volume group snapshots: the snapshotter\'s CSIVolumeGroupSnapshot gate and a VolumeGroupSnapshotClass')
    .action((flags: SpecFlags) => {
      const options = parseSpecOptions(flags);
      write(renderSpec(options, flagsAsArgs(flags)));
    });
}

/** The flags given, written back as arguments (for the header of the output, so it can be reproduced). */
export function flagsAsArgs(flags: SpecFlags): string[] {
  const kebab = (key: string): string => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  const quote = (v: string): string => (/^[\w./:,=*@-]+$/.test(v) ? v : `'${v.replace(/'/g, "'\\''")}'`);
  const out: string[] = [];
  for (const [key, value] of Object.entries(flags) as [string, unknown][]) {
    if (key === 'snapshots') {
      if (value === false) out.push('--no-snapshots');
    } else if (value === true) {
      out.push(kebab(key));
    } else if (Array.isArray(value)) {
      for (const v of value as string[]) out.push(`${kebab(key)}=${quote(v)}`);
    } else if (typeof value === 'string') {
      out.push(`${kebab(key)}=${quote(value)}`);
    }
  }
  return out;
}
