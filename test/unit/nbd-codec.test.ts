import test from 'ava';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';

test('handshake greeting is NBDMAGIC, IHAVEOPT and fixed-newstyle|no-zeroes', (t) => {
  const b = C.encodeHandshake();
  t.is(b.length, 18);
  t.is(b.toString('latin1', 0, 8), 'NBDMAGIC');
  t.is(b.toString('latin1', 8, 16), 'IHAVEOPT');
  t.is(b.readUInt16BE(16), 3);
});

test('option header round trip, and a bad magic is flagged', (t) => {
  const b = C.encodeOption(P.NBD_OPT_GO, Buffer.from('abc'));
  t.deepEqual(C.decodeOptionHeader(b), { magicOk: true, option: P.NBD_OPT_GO, length: 3 });
  b[0] = 0;
  t.false(C.decodeOptionHeader(b).magicOk);
});

test('option reply carries magic, option, type and data', (t) => {
  const b = C.encodeOptionReply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, C.encodeRepServer('vol'));
  const h = C.decodeOptionReplyHeader(b);
  t.deepEqual(h, { magicOk: true, option: P.NBD_OPT_LIST, type: P.NBD_REP_SERVER, length: 7 });
  t.is(b.readUInt32BE(20), 3);
  t.is(b.toString('utf8', 24), 'vol');
  t.is(b.readBigUInt64BE(0), 0x3e889045565a9n);
});

test('error replies have bit 31 set and carry a message', (t) => {
  const b = C.encodeOptionError(7, P.NBD_REP_ERR_UNKNOWN, 'nope');
  t.is(b.readUInt32BE(12), 0x80000006);
  t.is(b.toString('utf8', 20), 'nope');
});

test('export-name reply: size, flags, 124 zeros unless NO_ZEROES', (t) => {
  const full = C.encodeExportNameReply(2 ** 40 + 5, 0x1234, false);
  t.is(full.length, 134);
  t.is(full.readBigUInt64BE(0), 2n ** 40n + 5n);
  t.is(full.readUInt16BE(8), 0x1234);
  t.true(full.subarray(10).every((x) => x === 0));
  t.is(C.encodeExportNameReply(1, 1, true).length, 10);
});

test('info replies: export, block size, name', (t) => {
  const e = C.encodeInfoExport(1 << 30, 0x10d);
  t.is(e.readUInt16BE(0), P.NBD_INFO_EXPORT);
  t.is(Number(e.readBigUInt64BE(2)), 1 << 30);
  t.is(e.readUInt16BE(10), 0x10d);
  const b = C.encodeInfoBlockSize(512, 4096, 32 << 20);
  t.deepEqual([b.length, b.readUInt16BE(0), b.readUInt32BE(2), b.readUInt32BE(6), b.readUInt32BE(10)], [14, 3, 512, 4096, 32 << 20]);
  const n = C.encodeInfoString(P.NBD_INFO_NAME, 'vol-1');
  t.deepEqual([n.readUInt16BE(0), n.toString('utf8', 2)], [P.NBD_INFO_NAME, 'vol-1']);
});

test('info request parse round trip and malformed cases', (t) => {
  t.deepEqual(C.parseInfoRequest(C.encodeInfoRequest('vol', [3, 1])), { name: 'vol', infos: [3, 1] });
  t.deepEqual(C.parseInfoRequest(C.encodeInfoRequest('', [])), { name: '', infos: [] });
  t.is(C.parseInfoRequest(Buffer.alloc(5)), undefined);
  const longName = C.encodeInfoRequest('vol', [3]);
  longName.writeUInt32BE(100, 0);
  t.is(C.parseInfoRequest(longName), undefined);
  const extra = Buffer.concat([C.encodeInfoRequest('vol', [3]), Buffer.from([0])]);
  t.is(C.parseInfoRequest(extra), undefined);
});

function metaRequest(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name), 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q), 0);
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

test('meta context request parse and malformed cases', (t) => {
  t.deepEqual(C.parseMetaContextRequest(metaRequest('v', ['base:allocation'])), { name: 'v', queries: ['base:allocation'] });
  t.deepEqual(C.parseMetaContextRequest(metaRequest('', [])), { name: '', queries: [] });
  const bad = metaRequest('v', ['base:allocation']);
  bad.writeUInt32BE(2, 5);
  t.is(C.parseMetaContextRequest(bad), undefined);
  t.is(C.parseMetaContextRequest(Buffer.alloc(3)), undefined);
});

test('request encode/decode round trip keeps the 64-bit cookie and offset', (t) => {
  const b = C.encodeRequest({ flags: 1, type: P.NBD_CMD_WRITE, cookie: 0xdeadbeefcafef00dn, offset: 2 ** 33 + 512, data: Buffer.from('hello') });
  t.is(b.length, 33);
  const h = C.newRequestHeader();
  t.true(C.readRequestHeader(b, 0, h));
  t.deepEqual(h, { flags: 1, type: 1, cookieHi: 0xdeadbeef, cookieLo: 0xcafef00d, offset: 2 ** 33 + 512, length: 5 });
  t.false(C.readRequestHeader(C.encodeRequest({ type: 0, cookie: 1n, magic: 0x12345678 }), 0, h));
});

test('simple reply round trip', (t) => {
  const b = Buffer.alloc(16);
  t.is(C.writeSimpleReply(b, 0, P.NBD_EINVAL, 0x01020304, 0x05060708), 16);
  t.deepEqual(C.decodeReplyHeader(b), { structured: false, error: 22, cookie: 0x0102030405060708n, flags: 0, type: 0, length: 0 });
});

test('structured OFFSET_DATA header and error chunk', (t) => {
  const b = Buffer.alloc(28);
  t.is(C.writeOffsetDataHeader(b, 0, 0, 9, 4096, 512), 28);
  const h = C.decodeReplyHeader(b)!;
  t.deepEqual([h.structured, h.flags, h.type, h.cookie, h.length], [true, 1, 1, 9n, 520]);
  t.is(Number(b.readBigUInt64BE(20)), 4096);
  const e = Buffer.alloc(C.structuredErrorBytes('bad'));
  t.is(C.writeStructuredError(e, 0, 0, 7, P.NBD_ENOSPC, 'bad'), e.length);
  const eh = C.decodeReplyHeader(e)!;
  t.deepEqual([eh.type, eh.flags, eh.length, e.readUInt32BE(20), e.readUInt16BE(24), e.toString('utf8', 26)], [0x8001, 1, 9, 28, 3, 'bad']);
  t.is(C.decodeReplyHeader(Buffer.alloc(20)), undefined);
});
