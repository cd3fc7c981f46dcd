/**
 * The Node service's capability check (src/csi/node-server.ts), from the spec's access
 * modes and access types: what is staged for each, and which are INVALID_ARGUMENT.
 */
import test from 'ava';
import { Code, StorageError } from '../../src/common/errors.js';
import { checkCapability } from '../../src/csi/node-server.js';

const mount = (mode: string, fsType = '', mountFlags: string[] = []) => ({ mount: { fsType, mountFlags }, accessMode: { mode } });

function code(fn: () => unknown): Code | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof StorageError ? err.code : undefined;
  }
}

test('single-node writer modes stage read-write; the reader modes read-only', (t) => {
  for (const mode of ['SINGLE_NODE_WRITER', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER']) {
    t.false(checkCapability(mount(mode)).readerMode, mode);
  }
  for (const mode of ['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY']) t.true(checkCapability(mount(mode)).readerMode, mode);
});

test('multi-node writers, UNKNOWN and a missing access type are INVALID_ARGUMENT', (t) => {
  for (const mode of ['MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER', 'UNKNOWN']) {
    t.is(code(() => checkCapability(mount(mode))), Code.INVALID_ARGUMENT, mode);
  }
  const err = t.throws(() => checkCapability(mount('MULTI_NODE_MULTI_WRITER')), { instanceOf: StorageError });
  t.regex(err!.message, /cannot be shared across nodes safely/);
  t.is(code(() => checkCapability({ accessMode: { mode: 'SINGLE_NODE_WRITER' } })), Code.INVALID_ARGUMENT);
  t.is(code(() => checkCapability({ block: {}, mount: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } })), Code.INVALID_ARGUMENT);
});

test('fs_type: the capability, else the volume context, else ext4; only ext4 and xfs', (t) => {
  t.is(checkCapability(mount('SINGLE_NODE_WRITER')).fsType, 'ext4');
  t.is(checkCapability(mount('SINGLE_NODE_WRITER'), { fsType: 'xfs' }).fsType, 'xfs');
  t.is(checkCapability(mount('SINGLE_NODE_WRITER', 'ext4'), { fsType: 'xfs' }).fsType, 'ext4');
  t.deepEqual(checkCapability(mount('SINGLE_NODE_WRITER', 'xfs', ['noatime'])).mountFlags, ['noatime']);
  t.is(code(() => checkCapability(mount('SINGLE_NODE_WRITER', 'btrfs'))), Code.INVALID_ARGUMENT);
  t.deepEqual(checkCapability({ block: {}, accessMode: { mode: 'SINGLE_NODE_WRITER' } }), { block: true, fsType: '', mountFlags: [], readerMode: false });
});
