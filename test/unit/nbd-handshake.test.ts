import test from 'ava';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';
import { exportNameReply, growableExportName, handleOption, transmissionFlags, type ExportDescriptor, type NegotiationState } from '../../src/engine/nbd/handshake.js';
import { nbdErrno } from '../../src/engine/nbd/errno-map.js';
import { Code, StorageError, SystemError } from '../../src/common/errors.js';

const exp: ExportDescriptor = { name: 'vol-a', description: 'Cairn volume vol-a', sizeBytes: 1 << 20, readOnly: false };
const fresh = (): NegotiationState => ({ noZeroes: true, structuredReplies: false, shuttingDown: false });
const types = (replies: Buffer[]): number[] => replies.map((r) => C.decodeOptionReplyHeader(r).type);

test('GO with the volume name or "" answers INFO_EXPORT, INFO_BLOCK_SIZE, ACK and enters transmission', (t) => {
  for (const name of ['vol-a', '']) {
    const out = handleOption(fresh(), exp, P.NBD_OPT_GO, C.encodeInfoRequest(name, [P.NBD_INFO_BLOCK_SIZE]));
    t.is(out.next, 'transmission');
    t.deepEqual(types(out.replies), [P.NBD_REP_INFO, P.NBD_REP_INFO, P.NBD_REP_ACK]);
    const info = out.replies[0]!.subarray(20);
    t.is(Number(info.readBigUInt64BE(2)), 1 << 20);
    const flags = info.readUInt16BE(10);
    for (const f of [P.NBD_FLAG_HAS_FLAGS, P.NBD_FLAG_SEND_FLUSH, P.NBD_FLAG_SEND_FUA, P.NBD_FLAG_SEND_TRIM, P.NBD_FLAG_SEND_WRITE_ZEROES, P.NBD_FLAG_CAN_MULTI_CONN]) {
      t.truthy(flags & f);
    }
    t.falsy(flags & P.NBD_FLAG_READ_ONLY);
    const bs = out.replies[1]!.subarray(20);
    t.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [512, 4096, 32 << 20]);
  }
});

test('INFO stays in negotiation and answers NAME and DESCRIPTION when asked', (t) => {
  const out = handleOption(fresh(), exp, P.NBD_OPT_INFO, C.encodeInfoRequest('', [P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION]));
  t.is(out.next, 'continue');
  t.deepEqual(types(out.replies), [P.NBD_REP_INFO, P.NBD_REP_INFO, P.NBD_REP_INFO, P.NBD_REP_INFO, P.NBD_REP_ACK]);
  t.is(out.replies[2]!.toString('utf8', 22), 'vol-a');
});

test('an unknown export name gets NBD_REP_ERR_UNKNOWN; a malformed GO gets ERR_INVALID', (t) => {
  const unknown = handleOption(fresh(), exp, P.NBD_OPT_GO, C.encodeInfoRequest('other', []));
  t.deepEqual([types(unknown.replies), unknown.next], [[P.NBD_REP_ERR_UNKNOWN], 'continue']);
  const bad = handleOption(fresh(), exp, P.NBD_OPT_GO, Buffer.from([0, 0, 0, 9]));
  t.deepEqual([types(bad.replies), bad.next], [[P.NBD_REP_ERR_INVALID], 'continue']);
  t.truthy(bad.problem);
});

test('STRUCTURED_REPLY acks and sets state; with data it is invalid', (t) => {
  const s = fresh();
  t.deepEqual(types(handleOption(s, exp, P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)).replies), [P.NBD_REP_ACK]);
  t.true(s.structuredReplies);
  t.truthy(transmissionFlags(exp, true) & P.NBD_FLAG_SEND_DF);
  t.deepEqual(types(handleOption(fresh(), exp, P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(1)).replies), [P.NBD_REP_ERR_INVALID]);
});

test('LIST returns the export then ACK; ABORT acks and closes', (t) => {
  const list = handleOption(fresh(), exp, P.NBD_OPT_LIST, Buffer.alloc(0));
  t.deepEqual(types(list.replies), [P.NBD_REP_SERVER, P.NBD_REP_ACK]);
  t.is(list.replies[0]!.toString('utf8', 24), 'vol-a');
  t.deepEqual(types(handleOption(fresh(), exp, P.NBD_OPT_LIST, Buffer.alloc(2)).replies), [P.NBD_REP_ERR_INVALID]);
  const abort = handleOption(fresh(), exp, P.NBD_OPT_ABORT, Buffer.alloc(0));
  t.deepEqual([types(abort.replies), abort.next], [[P.NBD_REP_ACK], 'close']);
});

test('unknown options and STARTTLS get ERR_UNSUP and negotiation continues', (t) => {
  for (const opt of [P.NBD_OPT_STARTTLS, 4, 99, 0xffffffff]) {
    const out = handleOption(fresh(), exp, opt, Buffer.alloc(0));
    t.deepEqual([types(out.replies), out.next], [[P.NBD_REP_ERR_UNSUP], 'continue']);
  }
});

test('meta contexts are declined with a lone ACK, and need structured replies first', (t) => {
  const q = Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15, ...Buffer.from('base:allocation')]);
  t.deepEqual(types(handleOption(fresh(), exp, P.NBD_OPT_SET_META_CONTEXT, q).replies), [P.NBD_REP_ERR_INVALID]);
  const s = { ...fresh(), structuredReplies: true };
  t.deepEqual(types(handleOption(s, exp, P.NBD_OPT_SET_META_CONTEXT, q).replies), [P.NBD_REP_ACK]);
  t.deepEqual(types(handleOption(s, exp, P.NBD_OPT_LIST_META_CONTEXT, q).replies), [P.NBD_REP_ACK]);
});

test('shutting down: options get ERR_SHUTDOWN, EXPORT_NAME is refused', (t) => {
  const s = { ...fresh(), shuttingDown: true };
  t.deepEqual(types(handleOption(s, exp, P.NBD_OPT_GO, C.encodeInfoRequest('', [])).replies), [P.NBD_REP_ERR_SHUTDOWN]);
  t.is(exportNameReply(s, exp, Buffer.alloc(0)), undefined);
});

test('EXPORT_NAME: known name gets size+flags (no zeros with NO_ZEROES), unknown is refused', (t) => {
  t.is(exportNameReply(fresh(), exp, Buffer.from('vol-a'))!.length, 10);
  t.is(exportNameReply({ ...fresh(), noZeroes: false }, exp, Buffer.alloc(0))!.length, 134);
  t.is(exportNameReply(fresh(), exp, Buffer.from('nope')), undefined);
});

test('read-only exports advertise READ_ONLY and no trim or zeroes', (t) => {
  const f = transmissionFlags({ ...exp, readOnly: true }, false);
  t.truthy(f & P.NBD_FLAG_READ_ONLY);
  t.falsy(f & (P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES));
});

test('device errors map to NBD errnos', (t) => {
  const sys = (name: string): SystemError => new SystemError(Code.INTERNAL, name, { errno: 1, errnoName: name, syscall: 'pwrite' });
  t.is(nbdErrno(sys('ENOSPC')), P.NBD_ENOSPC);
  t.is(nbdErrno(sys('EDQUOT')), P.NBD_ENOSPC);
  t.is(nbdErrno(sys('EIO')), P.NBD_EIO);
  t.is(nbdErrno(sys('EROFS')), P.NBD_EPERM);
  t.is(nbdErrno(sys('ENOMEM')), P.NBD_EIO);
  t.is(nbdErrno(new StorageError(Code.RESOURCE_EXHAUSTED, 'x')), P.NBD_ENOSPC);
  t.is(nbdErrno(new StorageError(Code.INVALID_ARGUMENT, 'x')), P.NBD_EINVAL);
  t.is(nbdErrno(new Error('x')), P.NBD_EIO);
});

test('the growable view: "<name>#growable" advertises growableBytes (INFO/GO and EXPORT_NAME); the plain name keeps the real size', (t) => {
  const growable: ExportDescriptor = { ...exp, growableBytes: 2 ** 50 };
  const sizeOf = (name: string): number => {
    const out = handleOption(fresh(), growable, P.NBD_OPT_GO, C.encodeInfoRequest(name, []));
    t.is(out.next, 'transmission', name);
    return Number(out.replies[0]!.subarray(20).readBigUInt64BE(2));
  };
  t.is(sizeOf(growableExportName('vol-a')), 2 ** 50);
  t.is(sizeOf('vol-a'), 1 << 20);
  t.is(sizeOf(''), 1 << 20);
  const reply = exportNameReply(fresh(), growable, Buffer.from(growableExportName('vol-a')));
  t.is(Number(reply!.readBigUInt64BE(0)), 2 ** 50);
  t.is(exportNameReply(fresh(), exp, Buffer.from(growableExportName('vol-a'))), undefined, 'an export without the view does not know the name');
  t.deepEqual(types(handleOption(fresh(), growable, P.NBD_OPT_GO, C.encodeInfoRequest('vol-b#growable', [])).replies), [P.NBD_REP_ERR_UNKNOWN]);
});
