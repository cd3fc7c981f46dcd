// Every object of every `cairnctl spec` variant, as kubectl would read it (the YAML stream
// parsed back), validated offline against Kubernetes' OpenAPI schemas by kubernetes-models
// (its built-in ajv validators, generated from the Kubernetes 1.34 OpenAPI spec). One test
// per flag combination: etcd internal/external × snapshots off/on/on+group × pool
// file/list/glob × peer TLS bootstrap/cert-manager/provided/insecure. cert-manager's Issuer and
// Certificate are validated against cert-manager's CRD schemas (@kubernetes-models/cert-manager).
import test from 'ava';
import { parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { renderSpec } from '../../src/cli/spec/generate.js';
import { parseSpecOptions, type SpecFlags } from '../../src/cli/spec/options.js';

interface Doc { apiVersion: string; kind: string; metadata?: { name?: string } }
type Validatable = { validate(): void };
type ModelClass = new (data: unknown) => Validatable;

/**
 * Kinds defined by external-snapshotter's CRDs: no maintained npm package ships their
 * schemas, so they are not validated here (docs/kubernetes.md says so). Anything else must
 * have a Kubernetes schema.
 */
const NO_SCHEMA = new Set(['snapshot.storage.k8s.io/v1/VolumeSnapshotClass', 'groupsnapshot.storage.k8s.io/v1beta2/VolumeGroupSnapshotClass']);

async function modelOf(doc: Doc): Promise<ModelClass | undefined> {
  const path = doc.apiVersion.includes('/') ? doc.apiVersion : `v1`;
  // cert-manager's kinds: its CRDs' schemas, from the same project's cert-manager package.
  const pkg = doc.apiVersion.startsWith('cert-manager.io/') ? '@kubernetes-models/cert-manager' : 'kubernetes-models';
  const mod = (await import(`${pkg}/${path}`)) as Record<string, unknown>;
  return mod[doc.kind] as ModelClass | undefined;
}

function documents(yaml: string): Doc[] {
  return parseAllDocuments(yaml).map((d) => {
    if (d.errors.length > 0) throw new Error(`the spec is not valid YAML: ${d.errors[0]!.message}`);
    return d.toJS() as Doc;
  });
}

/** Validates each document; returns the problems ("Kind/name: message"). */
async function problems(docs: Doc[]): Promise<string[]> {
  const out: string[] = [];
  for (const doc of docs) {
    const id = `${doc.apiVersion}/${doc.kind}`;
    if (NO_SCHEMA.has(id)) continue;
    const Model = await modelOf(doc);
    if (!Model) {
      out.push(`${id} ${doc.metadata?.name}: no Kubernetes schema for this kind`);
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (err) {
      out.push(`${id} ${doc.metadata?.name}: ${(err as Error).message}`);
    }
  }
  return out;
}

test('the validator is live: a DaemonSet with a wrong type and a missing required field fails', (t) => {
  const bad = new DaemonSet({ metadata: { name: 'x' }, spec: { selector: { matchLabels: { a: 'b' } }, template: { spec: { containers: [{ name: 'c', image: 'i', ports: [{ containerPort: 'http' }] }] } } } } as never);
  t.throws(() => bad.validate());
  const noContainers = new DaemonSet({ metadata: { name: 'x' }, spec: { selector: {}, template: { spec: {} } } } as never);
  t.throws(() => noContainers.validate());
});

const ETCD: Record<string, SpecFlags> = { internal: {}, external: { etcdEndpoints: 'https://etcd-a.example:2379,https://etcd-b.example:2379' } };
const SNAPSHOTS: Record<string, SpecFlags> = { 'no snapshots': { snapshots: false }, snapshots: { snapshots: true }, 'group snapshots': { snapshots: true, groupSnapshots: true } };
const POOL: Record<string, SpecFlags> = { 'file pool': {}, 'device list': { poolDevices: '/dev/sdb,/dev/sdc' }, 'device glob': { poolDeviceGlob: '/dev/disk/by-id/nvme-*' } };
const TLS: Record<string, SpecFlags> = { bootstrap: { peerTls: 'bootstrap' }, provided: { peerTls: 'provided', peerCaSecret: 'site-ca' }, 'cert-manager': { peerTls: 'cert-manager' }, insecure: { peerTls: 'insecure' } };

for (const [etcd, e] of Object.entries(ETCD)) {
  for (const [snap, s] of Object.entries(SNAPSHOTS)) {
    for (const [pool, p] of Object.entries(POOL)) {
      for (const [tls, l] of Object.entries(TLS)) {
        test(`every object validates: etcd ${etcd}, ${snap}, ${pool}, peer TLS ${tls}`, async (t) => {
          const flags = { ...e, ...s, ...p, ...l, nodeSelector: 'cairn.dev/storage=true', toleration: ['storage=only:NoSchedule'] };
          const docs = documents(renderSpec(parseSpecOptions(flags), []));
          t.deepEqual(await problems(docs), []);
          const kinds = docs.map((d) => d.kind);
          t.is(kinds.includes('StatefulSet'), etcd === 'internal', 'the internal etcd is there exactly when asked for');
          t.is(kinds.includes('VolumeSnapshotClass'), snap !== 'no snapshots');
          t.is(kinds.includes('VolumeGroupSnapshotClass'), snap === 'group snapshots');
          t.is(kinds.includes('CustomResourceDefinition'), snap !== 'no snapshots', 'the SnapshotRule CRD comes with snapshots');
          t.is(kinds.includes('Job'), tls === 'bootstrap', 'the CA bootstrap Job runs only in bootstrap mode');
          t.is(kinds.includes('Certificate'), tls === 'cert-manager', 'cert-manager issues the CA only when asked');
        });
      }
    }
  }
}
