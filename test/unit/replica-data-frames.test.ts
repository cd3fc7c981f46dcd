import test from 'ava';
import { BufferPool } from '../../src/common/buffer-pool.js';
import { Code } from '../../src/common/errors.js';
import {
  DataOp, DataReason, FLAG_FUA, FLAG_MAY_TRIM, MAX_RANGE_BYTES, HELLO_BYTES, MALFORMED_FRAME, REQUEST_HEADER_BYTES, decodeHello, decodeHelloReply, decodeReplyHeader,
  decodeRequestHeader, encodeHello, encodeHelloReply, encodeReplyHeader, encodeRequestHeader, helloLength, type RequestHeader,
} from '../../src/replica/data-frames.js';
import { RequestParser, type ParsedRequest } from '../../src/replica/data-request-parser.js';

const MAX = 4 << 20;
const BIG = 2 ** 53 - 1;

function fieldOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    const e = err as { code?: Code; details?: { reason?: string; field?: string } };
    return e.code === Code.INVALID_ARGUMENT && e.details?.reason === MALFORMED_FRAME ? e.details.field : `unexpected: ${String(err)}`;
  }
}

test('hello, hello reply, request and reply headers round-trip, 53-bit fields included', (t) => {
  const hello = { replicaId: 'rep-ä', volumeId: 'vol-1', epoch: BIG };
  const h = encodeHello(hello);
  t.is(helloLength(h), h.length);
  t.deepEqual(decodeHello(h), hello);
  const reply = { code: Code.FAILED_PRECONDITION, reason: DataReason.STALE_EPOCH, epoch: 7, sizeBytes: BIG, maxPayloadBytes: MAX, maxInflightRequests: 1024, message: 'stale' };
  t.deepEqual(decodeHelloReply(encodeHelloReply(reply)), { ...reply, messageBytes: 5 });
  for (const req of [
    { op: DataOp.WRITE, flags: FLAG_FUA, lengthBytes: MAX, id: BIG, offset: 2 ** 40 },
    { op: DataOp.READ, flags: 0, lengthBytes: 1, id: 0, offset: 0 },
    { op: DataOp.FLUSH, flags: 0, lengthBytes: 0, id: 3, offset: 0 },
    { op: DataOp.TRIM, flags: 0, lengthBytes: MAX_RANGE_BYTES, id: 4, offset: 2 ** 33 },
    { op: DataOp.WRITE_ZEROES, flags: FLAG_MAY_TRIM, lengthBytes: MAX + 1, id: 5, offset: 4096 },
  ] as RequestHeader[]) t.deepEqual(decodeRequestHeader(encodeRequestHeader(req), 0, MAX), req);
  const rh = { id: BIG, code: Code.OUT_OF_RANGE, reason: DataReason.NONE, lengthBytes: 12 };
  t.deepEqual(decodeReplyHeader(encodeReplyHeader(rh), 0), rh);
});

/** A valid write header with `mutate` applied to its bytes. */
function badRequest(mutate: (b: Buffer) => void, op = DataOp.WRITE): Buffer {
  const b = encodeRequestHeader({ op, flags: 0, lengthBytes: op === DataOp.FLUSH ? 0 : 4096, id: 1, offset: 0 });
  mutate(b);
  return b;
}

test('every malformed request header field is refused, naming the field', (t) => {
  const cases: [string, Buffer][] = [
    ['magic', badRequest((b) => b.writeUInt32LE(0xdeadbeef, 0))],
    ['op', badRequest((b) => b.writeUInt8(0, 4))],
    ['op', badRequest((b) => b.writeUInt8(9, 4))],
    ['flags', badRequest((b) => b.writeUInt8(2, 5))],
    ['flags', badRequest((b) => b.writeUInt8(FLAG_FUA, 5), DataOp.READ)],
    ['flags', badRequest((b) => b.writeUInt8(FLAG_MAY_TRIM, 5), DataOp.TRIM)],
    ['flags', badRequest((b) => b.writeUInt8(FLAG_FUA, 5), DataOp.WRITE_ZEROES)],
    ['length', badRequest((b) => b.writeUInt32LE(0, 8), DataOp.WRITE_ZEROES)],
    ['length', badRequest((b) => b.writeUInt32LE(0xffffffff, 8), DataOp.TRIM)],
    ['reserved', badRequest((b) => b.writeUInt16LE(1, 6))],
    ['length', badRequest((b) => b.writeUInt32LE(0, 8))],
    ['length', badRequest((b) => b.writeUInt32LE(MAX + 1, 8))],
    ['length', badRequest((b) => b.writeUInt32LE(0xffffffff, 8), DataOp.READ)],
    ['length', badRequest((b) => b.writeUInt32LE(1, 8), DataOp.FLUSH)],
    ['reserved2', badRequest((b) => b.writeUInt32LE(1, 12))],
    ['id', badRequest((b) => b.writeUInt32LE(0x200000, 20))],
    ['offset', badRequest((b) => b.writeUInt32LE(0x200000, 28))],
    ['offset', badRequest((b) => b.writeUInt32LE(0x1fffff, 28) && b.writeUInt32LE(0xffffffff, 24))],
    ['offset', badRequest((b) => b.writeUInt32LE(512, 24), DataOp.FLUSH)],
  ];
  for (const [field, bytes] of cases) t.is(fieldOf(() => decodeRequestHeader(bytes, 0, MAX)), field, bytes.toString('hex'));
});

test('every malformed hello field is refused, naming the field', (t) => {
  const good = encodeHello({ replicaId: 'rep-a', volumeId: 'vol-1', epoch: 1 });
  const bad = (mutate: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good);
    mutate(b);
    return b;
  };
  t.is(fieldOf(() => helloLength(bad((b) => b.write('NOTCAIRN', 0, 'latin1')))), 'magic');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt16LE(2, 8)))), 'version');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt16LE(1, 10)))), 'reserved');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt16LE(0, 12)))), 'replicaIdBytes');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt16LE(129, 12)))), 'replicaIdBytes');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt16LE(0, 14)))), 'volumeIdBytes');
  t.is(fieldOf(() => helloLength(bad((b) => b.writeUInt32LE(0x200000, 20)))), 'epoch');
  t.is(fieldOf(() => decodeHello(good.subarray(0, HELLO_BYTES + 2))), 'length');
});

test('the parser takes headers split anywhere and receives payloads into pooled views without joining', (t) => {
  const pool = new BufferPool();
  const got: ParsedRequest[] = [];
  const parser = new RequestParser(pool, MAX, (r) => got.push(r));
  const payload = Buffer.alloc(600 << 10);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  const stream = Buffer.concat([
    encodeRequestHeader({ op: DataOp.WRITE, flags: 0, lengthBytes: payload.length, id: 1, offset: 4096 }), payload,
    encodeRequestHeader({ op: DataOp.READ, flags: 0, lengthBytes: 8192, id: 2, offset: 0 }),
    encodeRequestHeader({ op: DataOp.FLUSH, flags: 0, lengthBytes: 0, id: 3, offset: 0 }),
  ]);
  // Odd chunk sizes, so headers and payload blocks are split at every kind of boundary.
  for (let at = 0, step = 1; at < stream.length; at += step, step = (step * 3 + 5) % 70_001 || 1) parser.feed(stream.subarray(at, at + step));
  t.deepEqual(got.map((r) => r.header.id), [1, 2, 3]);
  t.is(got[0]!.views.length, 3, '600 KiB lands in three 256 KiB pooled blocks');
  t.true(Buffer.concat(got[0]!.views).equals(payload));
  t.false(parser.midFrame);
  parser.feed(stream.subarray(0, REQUEST_HEADER_BYTES + 1000));
  t.true(parser.midFrame);
  parser.release();
  t.is(pool.freeBytes, 3 * (256 << 10), 'a partly received payload goes back to the pool');
});

test('the parser throws on a malformed header that arrives in pieces', (t) => {
  const parser = new RequestParser(new BufferPool(), MAX, () => t.fail());
  const b = badRequest((x) => x.writeUInt8(77, 4));
  parser.feed(b.subarray(0, 5));
  t.is(fieldOf(() => parser.feed(b.subarray(5))), 'op');
});
