import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { asDeviceId } from '../../src/common/ids.js';
import {
  METADATA_MAX_BYTES, METADATA_MIN_BYTES, dataTable, metadataBytesFor, metadataTable, parsePoolStatus, parseThinStatus, planMetadataSectors,
  poolNames, poolTable, tableSectors, thinName, thinTable,
} from '../../src/pool/dm-layout.js';
import { parseTap } from '../vm/tap.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

test('metadata sizing: 64 bytes per 64 KiB block for 4x the data, 4 MiB to 16 GiB', (t) => {
  t.is(metadataBytesFor(100 * MIB), METADATA_MIN_BYTES);
  // 1 TiB of data -> 4 TiB / 64 KiB = 64 Mi blocks * 64 B = 4 GiB.
  t.is(metadataBytesFor(1024 * GIB), 4 * GIB);
  t.is(metadataBytesFor(100 * 1024 * GIB), METADATA_MAX_BYTES);
  t.is(metadataBytesFor(10 * GIB) % MIB, 0, 'whole MiB');
});

test('the first disk gives the metadata slice; data is the rest, concatenated, in whole blocks', (t) => {
  const disks = [{ path: '/dev/a', sizeSectors: (64 * MIB) / 512 }, { path: '/dev/b', sizeSectors: (32 * MIB) / 512 + 7 }];
  const meta = planMetadataSectors(disks);
  t.is(meta, METADATA_MIN_BYTES / 512);
  t.deepEqual(metadataTable(disks, meta), [{ startSector: 0, lengthSectors: meta, type: 'linear', params: '/dev/a 0' }]);
  const data = dataTable(disks, meta);
  t.deepEqual(data, [
    { startSector: 0, lengthSectors: (60 * MIB) / 512, type: 'linear', params: `/dev/a ${meta}` },
    { startSector: (60 * MIB) / 512, lengthSectors: (32 * MIB) / 512, type: 'linear', params: '/dev/b 0' },
  ]);
  t.is(tableSectors(data) % 128, 0);
  t.deepEqual(poolTable('253:0', '253:1', tableSectors(data), 128, 147), [
    { startSector: 0, lengthSectors: (92 * MIB) / 512, type: 'thin-pool', params: '253:0 253:1 128 147 1 error_if_no_space' },
  ]);
  t.deepEqual(thinTable('253:2', 7, 8 * MIB), [{ startSector: 0, lengthSectors: (8 * MIB) / 512, type: 'thin', params: '253:2 7' }]);
  const tiny = t.throws(() => planMetadataSectors([{ path: '/dev/a', sizeSectors: 1000 }]), { instanceOf: StorageError });
  t.is(tiny?.code, Code.INVALID_ARGUMENT);
});

test('names: fixed pool devices, thin devices by id, hashed when too long', (t) => {
  const names = poolNames('abc123');
  t.deepEqual(names, { meta: 'cairn-abc123-meta', data: 'cairn-abc123-data', pool: 'cairn-abc123-pool', prefix: 'cairn-abc123' });
  t.is(thinName(names, asDeviceId('rep-1')), 'cairn-abc123-rep-1');
  t.regex(thinName(names, asDeviceId('x'.repeat(121))), /^cairn-abc123-h[0-9a-f]{32}$/);
  t.regex(thinName(names, asDeviceId('pool')), /^cairn-abc123-h/, 'an id cannot take a pool device name');
  t.throws(() => poolNames('Bad_Tag'), { instanceOf: StorageError });
});

test('thin-pool and thin status lines', (t) => {
  t.deepEqual(parsePoolStatus('3 153/1024 160/1472 - rw discard_passdown error_if_no_space - 1024'), {
    mode: 'rw', transactionId: 3, usedMetadataBlocks: 153, totalMetadataBlocks: 1024, usedDataBlocks: 160, totalDataBlocks: 1472, errorIfNoSpace: true, needsCheck: false,
  });
  t.is(parsePoolStatus('5 10/20 30/30 - out_of_data_space discard_passdown error_if_no_space - 16').mode, 'out_of_data_space');
  t.true(parsePoolStatus('5 10/20 30/30 - ro discard_passdown queue_if_no_space needs_check 16').needsCheck);
  t.is(parsePoolStatus('Fail').mode, 'fail');
  t.throws(() => parsePoolStatus('nonsense'), { instanceOf: StorageError });
  t.deepEqual(parseThinStatus('2048 4095'), { mappedSectors: 2048, failed: false });
  t.deepEqual(parseThinStatus('Fail'), { mappedSectors: 0, failed: true });
});

test('the VM harness reads ava TAP into named results', (t) => {
  const tap = [
    'TAP version 13',
    'ok 1 - a › passes',
    'not ok 2 - a › fails',
    '#   a log line',
    '  ---',
    '    name: AssertionError',
    '    message: boom',
    '  ...',
    'ok 3 - b › skipped # SKIP',
    'not ok 4 - b › later # TODO',
    '',
    '1..4',
  ].join('\n');
  const r = parseTap(tap);
  t.deepEqual(r.map((x) => [x.title, x.status]), [['a › passes', 'passed'], ['a › fails', 'failed'], ['b › skipped', 'skipped'], ['b › later', 'todo']]);
  t.regex(r[1]!.output, /a log line[\s\S]*message: boom/);
});
