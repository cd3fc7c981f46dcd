/**
 * proto/csi/v1/csi.proto against CSI spec v1.12.0: the services' methods, a sample of
 * field numbers checked on the encoded bytes, the csi_secret fields, and the google
 * imports resolving through the same loader the server uses.
 */
import test from 'ava';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_ROOT } from '../../src/rpc/proto.js';
import { CSI_PROTO_FILE, csiSecretFields, csiServiceDefinition, scanSecretFields } from '../../src/csi/csi-proto.js';

const SPEC_METHODS: Record<string, string[]> = {
  Identity: ['GetPluginInfo', 'GetPluginCapabilities', 'Probe'],
  Controller: [
    'CreateVolume', 'DeleteVolume', 'ControllerPublishVolume', 'ControllerUnpublishVolume', 'ValidateVolumeCapabilities',
    'ListVolumes', 'GetCapacity', 'ControllerGetCapabilities', 'CreateSnapshot', 'DeleteSnapshot', 'ListSnapshots',
    'GetSnapshot', 'ControllerExpandVolume', 'ControllerGetVolume', 'ControllerModifyVolume',
  ],
  GroupController: ['GroupControllerGetCapabilities', 'CreateVolumeGroupSnapshot', 'DeleteVolumeGroupSnapshot', 'GetVolumeGroupSnapshot'],
  Node: [
    'NodeStageVolume', 'NodeUnstageVolume', 'NodePublishVolume', 'NodeUnpublishVolume', 'NodeGetVolumeStats',
    'NodeExpandVolume', 'NodeGetCapabilities', 'NodeGetInfo',
  ],
  SnapshotMetadata: ['GetMetadataAllocated', 'GetMetadataDelta'],
};

// Spec names, so the loader keeps them (keepCase) for this check.
const definition = protoLoader.loadSync(CSI_PROTO_FILE, { keepCase: true, includeDirs: [PROTO_ROOT] });

interface Descriptor {
  name: string;
  field: { name: string; number: number }[];
  nestedType: Descriptor[];
  enumType: { name: string; value: { name: string; number: number }[] }[];
}

/** A message's descriptor by its dotted name under csi.v1 ("VolumeCapability.MountVolume"). */
function descriptor(path: string): Descriptor {
  const [top, ...nested] = path.split('.');
  let type = (definition[`csi.v1.${top}`] as { type: unknown }).type as Descriptor;
  for (const name of nested) type = type.nestedType.find((n) => n.name === name)!;
  return type;
}

function fields(message: string): Record<string, number> {
  return Object.fromEntries(descriptor(message).field.map((f) => [f.name, f.number]));
}

function enumValues(message: string, enumName: string): Record<string, number> {
  return Object.fromEntries(descriptor(message).enumType.find((e) => e.name === enumName)!.value.map((v) => [v.name, v.number]));
}

test('every CSI service has exactly the methods of spec v1.12.0', (t) => {
  for (const [service, methods] of Object.entries(SPEC_METHODS)) {
    const def = csiServiceDefinition(service as 'Identity');
    t.deepEqual(Object.keys(def).sort(), [...methods].sort(), service);
    for (const m of methods) t.is(def[m]!.path, `/csi.v1.${service}/${m}`);
  }
  t.true(csiServiceDefinition('SnapshotMetadata').GetMetadataAllocated!.responseStream);
  t.false(csiServiceDefinition('Controller').CreateVolume!.responseStream);
});

test('key messages have the spec field numbers', (t) => {
  t.deepEqual(fields('CreateVolumeRequest'), {
    name: 1, capacity_range: 2, volume_capabilities: 3, parameters: 4, secrets: 5, volume_content_source: 6,
    accessibility_requirements: 7, mutable_parameters: 8,
  });
  t.deepEqual(fields('VolumeCapability'), { block: 1, mount: 2, access_mode: 3 });
  t.deepEqual(fields('VolumeCapability.MountVolume'), { fs_type: 1, mount_flags: 2, volume_mount_group: 3 });
  t.deepEqual(fields('NodeStageVolumeRequest'), {
    volume_id: 1, publish_context: 2, staging_target_path: 3, volume_capability: 4, secrets: 5, volume_context: 6,
  });
  t.deepEqual(fields('ControllerModifyVolumeRequest'), { volume_id: 1, secrets: 2, mutable_parameters: 3 });
  t.deepEqual(fields('CreateVolumeGroupSnapshotRequest'), { name: 1, source_volume_ids: 2, secrets: 3, parameters: 4 });
  t.deepEqual(fields('NodePublishVolumeRequest'), {
    volume_id: 1, publish_context: 2, staging_target_path: 3, target_path: 4, volume_capability: 5, readonly: 6, secrets: 7, volume_context: 8,
  });
  t.deepEqual(fields('Snapshot'), { size_bytes: 1, snapshot_id: 2, source_volume_id: 3, creation_time: 4, ready_to_use: 5, group_snapshot_id: 6 });
  t.deepEqual(enumValues('VolumeCapability.AccessMode', 'Mode'), {
    UNKNOWN: 0, SINGLE_NODE_WRITER: 1, SINGLE_NODE_READER_ONLY: 2, MULTI_NODE_READER_ONLY: 3, MULTI_NODE_SINGLE_WRITER: 4,
    MULTI_NODE_MULTI_WRITER: 5, SINGLE_NODE_SINGLE_WRITER: 6, SINGLE_NODE_MULTI_WRITER: 7,
  });
  const byName = enumValues('ControllerServiceCapability.RPC', 'Type');
  t.is(byName.MODIFY_VOLUME, 14);
  t.is(byName.GET_SNAPSHOT, 15);
  t.is(byName.LIST_VOLUMES_PUBLISHED_NODES, 10);
});

test('a request encodes with the spec tags and decodes with its fields', (t) => {
  const create = csiServiceDefinition('Controller').CreateVolume!;
  // Field 1 (name) as length-delimited: tag 0x0a.
  t.deepEqual([...create.requestSerialize({ name: 'pvc' })], [0x0a, 3, 0x70, 0x76, 0x63]);
  // Field 8 (mutable_parameters): tag (8 << 3) | 2 = 0x42; field 5 (secrets): 0x2a.
  t.is(create.requestSerialize({ mutableParameters: { replicas: '2' } })[0], 0x42);
  t.is(create.requestSerialize({ secrets: { k: 'v' } })[0], 0x2a);

  const request = {
    name: 'pvc-1',
    capacityRange: { requiredBytes: 5 * 1024 ** 3, limitBytes: 0 },
    volumeCapabilities: [{ mount: { fsType: 'xfs', mountFlags: ['noatime'] }, accessMode: { mode: 'SINGLE_NODE_MULTI_WRITER' } }],
    parameters: { replicas: '2' },
    accessibilityRequirements: { preferred: [{ segments: { 'topology.cairn.dev/node': 'n1' } }] },
  };
  const decoded = create.requestDeserialize(create.requestSerialize(request));
  t.is(decoded.name, 'pvc-1');
  t.is(decoded.capacityRange.requiredBytes, 5 * 1024 ** 3);
  t.is(decoded.volumeCapabilities[0].accessType, 'mount');
  t.is(decoded.volumeCapabilities[0].mount.fsType, 'xfs');
  t.deepEqual(decoded.volumeCapabilities[0].mount.mountFlags, ['noatime']);
  t.is(decoded.volumeCapabilities[0].accessMode.mode, 'SINGLE_NODE_MULTI_WRITER');
  t.deepEqual(decoded.parameters, { replicas: '2' });
  t.deepEqual(decoded.accessibilityRequirements.preferred[0].segments, { 'topology.cairn.dev/node': 'n1' });
});

test('the google imports resolve: BoolValue, Int64Value and Timestamp round-trip', (t) => {
  const probe = csiServiceDefinition('Identity').Probe!;
  t.deepEqual(probe.responseDeserialize(probe.responseSerialize({ ready: { value: false } })).ready, { value: false });
  t.is(probe.responseDeserialize(probe.responseSerialize({})).ready, null);
  const capacity = csiServiceDefinition('Controller').GetCapacity!;
  const res = capacity.responseDeserialize(capacity.responseSerialize({ availableCapacity: 10, maximumVolumeSize: { value: 7 } }));
  t.is(res.maximumVolumeSize.value, 7);
  const snap = csiServiceDefinition('Controller').CreateSnapshot!;
  const s = snap.responseDeserialize(snap.responseSerialize({ snapshot: { snapshotId: 's', creationTime: { seconds: 1700000000, nanos: 5 } } }));
  t.is(Number(s.snapshot.creationTime.seconds), 1700000000);
  t.is(s.snapshot.creationTime.nanos, 5);
});

test('the csi_secret fields are exactly the secrets maps of the spec', (t) => {
  const expected = [
    'CreateVolumeRequest', 'DeleteVolumeRequest', 'ControllerPublishVolumeRequest', 'ControllerUnpublishVolumeRequest',
    'ValidateVolumeCapabilitiesRequest', 'ControllerModifyVolumeRequest', 'CreateSnapshotRequest', 'DeleteSnapshotRequest',
    'ListSnapshotsRequest', 'GetSnapshotRequest', 'ControllerExpandVolumeRequest', 'NodeStageVolumeRequest',
    'NodePublishVolumeRequest', 'NodeExpandVolumeRequest', 'CreateVolumeGroupSnapshotRequest', 'DeleteVolumeGroupSnapshotRequest',
    'GetVolumeGroupSnapshotRequest', 'GetMetadataAllocatedRequest', 'GetMetadataDeltaRequest',
  ];
  const found = csiSecretFields();
  t.deepEqual([...found.keys()].sort(), [...expected].sort());
  for (const fieldsOf of found.values()) t.deepEqual([...fieldsOf], ['secrets']);
  // Every message the scan names exists in the loaded proto (the scan and the loader agree).
  for (const message of found.keys()) t.truthy(definition[`csi.v1.${message}`], message);
});

test('the secret scan follows nesting and ignores comments', (t) => {
  const found = scanSecretFields([
    'message Outer {',
    '  message Inner {',
    '    map<string, string> token_map = 1 [(csi_secret) = true];',
    '  }',
    '  // string commented = 2 [(csi_secret) = true];',
    '  oneof kind {',
    '    string a = 3;',
    '  }',
    '  string after_oneof = 4 [(alpha_field) = true, (csi_secret) = true];',
    '}',
    'message Empty {}',
    'message Other { string plain = 1; }',
  ].join('\n'));
  t.deepEqual([...found.entries()].map(([k, v]) => [k, [...v]]), [['Outer.Inner', ['tokenMap']], ['Outer', ['afterOneof']]]);
});
