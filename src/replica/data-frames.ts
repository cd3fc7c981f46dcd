/**
 * The frames of the replica data channel (docs/replica-protocol.md): the handshake that
 * binds a connection to one replica at one epoch, then fixed-size request and reply
 * headers, each optionally followed by a payload. All integers are little-endian.
 *
 * Decoding checks every header field and throws INVALID_ARGUMENT with `details.reason`
 * MALFORMED_FRAME and `details.field` naming the field: a peer that sends such a frame is
 * not speaking this protocol, and the connection is closed.
 */
import { Code, StorageError } from '../common/errors.js';

/** `details.reason` of a frame that breaks the protocol. */
export const MALFORMED_FRAME = 'MALFORMED_FRAME';

export const PROTOCOL_VERSION = 1;
/** The first 8 bytes of the hello and of its reply. */
export const HELLO_MAGIC = Buffer.from('CAIRNDC1', 'latin1');
export const HELLO_BYTES = 24;
export const HELLO_REPLY_BYTES = 40;
/** The longest replica or volume id a hello may carry. */
export const MAX_ID_BYTES = 128;
/** The longest message a hello reply or an error reply carries. */
export const MAX_MESSAGE_BYTES = 1024;

export const REQUEST_MAGIC = 0x43524451;
export const REPLY_MAGIC = 0x43525052;
export const REQUEST_HEADER_BYTES = 32;
export const REPLY_HEADER_BYTES = 24;

export enum DataOp {
  WRITE = 1,
  READ = 2,
  FLUSH = 3,
  /** Deallocate a range (no payload); reads of it return zeros afterwards. */
  TRIM = 4,
  /** Make a range read as zeros (no payload); with FLAG_MAY_TRIM the replica may deallocate it. */
  WRITE_ZEROES = 5,
}

/** Request flags. FUA is valid on WRITE only, MAY_TRIM on WRITE_ZEROES only. */
export const FLAG_FUA = 1;
export const FLAG_MAY_TRIM = 2;

/** The longest range one TRIM or WRITE_ZEROES may name (they carry no payload): the u32 length field. */
export const MAX_RANGE_BYTES = 0xffff_f000;

/** Why a request or a hello was refused, beyond its code (decide on it, never on text). */
export enum DataReason {
  NONE = 0,
  STALE_EPOCH = 1,
}

/** The largest write or read one request may carry; below the replica's 8 MiB batch limit. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 4 << 20;

/** The highest u64 this codec accepts: ids, offsets and epochs are JS safe integers. */
const MAX_HIGH_WORD = 0x1fffff;

export interface Hello {
  replicaId: string;
  volumeId: string;
  epoch: number;
}

export interface HelloReply {
  /** Code.OK, or why the connection was refused (it is closed after this reply). */
  code: Code;
  reason: DataReason;
  /** The replica's newest epoch. */
  epoch: number;
  sizeBytes: number;
  maxPayloadBytes: number;
  maxInflightRequests: number;
  message: string;
}

export interface RequestHeader {
  op: DataOp;
  flags: number;
  /** WRITE: payload bytes that follow; READ: bytes to read; FLUSH: 0. */
  lengthBytes: number;
  /** Chosen by the client, echoed in the reply. */
  id: number;
  offset: number;
}

export interface ReplyHeader {
  id: number;
  code: Code;
  reason: DataReason;
  /** OK READ: data bytes that follow; an error: message bytes that follow; else 0. */
  lengthBytes: number;
}

export function malformed(field: string, message: string): StorageError {
  return new StorageError(Code.INVALID_ARGUMENT, `malformed data frame: ${message}`, { details: { reason: MALFORMED_FRAME, field } });
}

export function isMalformedFrame(err: unknown): err is StorageError {
  return err instanceof StorageError && err.details.reason === MALFORMED_FRAME;
}

function writeU64(b: Buffer, at: number, value: number): void {
  b.writeUInt32LE(value % 0x1_0000_0000, at);
  b.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

function readU64(b: Buffer, at: number, field: string): number {
  const high = b.readUInt32LE(at + 4);
  if (high > MAX_HIGH_WORD) throw malformed(field, `${field} exceeds 2^53 - 1`);
  return high * 0x1_0000_0000 + b.readUInt32LE(at);
}

function checkZero(value: number, field: string): void {
  if (value !== 0) throw malformed(field, `reserved field ${field} is ${value}, must be 0`);
}

export function encodeHello(h: Hello): Buffer {
  const id = Buffer.from(h.replicaId, 'utf8');
  const volume = Buffer.from(h.volumeId, 'utf8');
  const b = Buffer.alloc(HELLO_BYTES + id.length + volume.length);
  HELLO_MAGIC.copy(b, 0);
  b.writeUInt16LE(PROTOCOL_VERSION, 8);
  b.writeUInt16LE(id.length, 12);
  b.writeUInt16LE(volume.length, 14);
  writeU64(b, 16, h.epoch);
  id.copy(b, HELLO_BYTES);
  volume.copy(b, HELLO_BYTES + id.length);
  return b;
}

/** The whole hello's length from its fixed part (HELLO_BYTES), checking that part. */
export function helloLength(b: Buffer): number {
  if (!b.subarray(0, 8).equals(HELLO_MAGIC)) throw malformed('magic', 'not a Cairn data channel hello');
  const version = b.readUInt16LE(8);
  if (version !== PROTOCOL_VERSION) throw malformed('version', `protocol version ${version} is not supported (this replica speaks ${PROTOCOL_VERSION})`);
  checkZero(b.readUInt16LE(10), 'reserved');
  const idBytes = b.readUInt16LE(12);
  const volumeBytes = b.readUInt16LE(14);
  if (idBytes === 0 || idBytes > MAX_ID_BYTES) throw malformed('replicaIdBytes', `replica id of ${idBytes} bytes (1 to ${MAX_ID_BYTES})`);
  if (volumeBytes === 0 || volumeBytes > MAX_ID_BYTES) throw malformed('volumeIdBytes', `volume id of ${volumeBytes} bytes (1 to ${MAX_ID_BYTES})`);
  readU64(b, 16, 'epoch');
  return HELLO_BYTES + idBytes + volumeBytes;
}

/** Decodes a whole hello (helloLength(b) bytes). */
export function decodeHello(b: Buffer): Hello {
  const length = helloLength(b);
  if (b.length < length) throw malformed('length', `hello of ${b.length} bytes, ${length} expected`);
  const idEnd = HELLO_BYTES + b.readUInt16LE(12);
  return { replicaId: b.toString('utf8', HELLO_BYTES, idEnd), volumeId: b.toString('utf8', idEnd, length), epoch: readU64(b, 16, 'epoch') };
}

export function encodeHelloReply(r: HelloReply): Buffer {
  const message = Buffer.from(r.message, 'utf8').subarray(0, MAX_MESSAGE_BYTES);
  const b = Buffer.alloc(HELLO_REPLY_BYTES + message.length);
  HELLO_MAGIC.copy(b, 0);
  b.writeUInt8(r.code, 8);
  b.writeUInt8(r.reason, 9);
  b.writeUInt16LE(message.length, 10);
  b.writeUInt32LE(r.maxPayloadBytes, 12);
  b.writeUInt32LE(r.maxInflightRequests, 16);
  writeU64(b, 24, r.epoch);
  writeU64(b, 32, r.sizeBytes);
  message.copy(b, HELLO_REPLY_BYTES);
  return b;
}

/** The fixed part of a hello reply; the message is `messageBytes` more. */
export function decodeHelloReply(b: Buffer): HelloReply & { messageBytes: number } {
  if (!b.subarray(0, 8).equals(HELLO_MAGIC)) throw malformed('magic', 'not a Cairn data channel hello reply');
  const messageBytes = b.readUInt16LE(10);
  if (messageBytes > MAX_MESSAGE_BYTES) throw malformed('messageBytes', `message of ${messageBytes} bytes`);
  checkZero(b.readUInt32LE(20), 'reserved');
  return {
    code: b.readUInt8(8), reason: b.readUInt8(9), messageBytes, maxPayloadBytes: b.readUInt32LE(12), maxInflightRequests: b.readUInt32LE(16),
    epoch: readU64(b, 24, 'epoch'), sizeBytes: readU64(b, 32, 'sizeBytes'),
    message: b.toString('utf8', HELLO_REPLY_BYTES, HELLO_REPLY_BYTES + messageBytes),
  };
}

export function encodeRequestHeader(h: RequestHeader, b = Buffer.allocUnsafe(REQUEST_HEADER_BYTES)): Buffer {
  b.writeUInt32LE(REQUEST_MAGIC, 0);
  b.writeUInt8(h.op, 4);
  b.writeUInt8(h.flags, 5);
  b.writeUInt16LE(0, 6);
  b.writeUInt32LE(h.lengthBytes, 8);
  b.writeUInt32LE(0, 12);
  writeU64(b, 16, h.id);
  writeU64(b, 24, h.offset);
  return b;
}

/** Decodes and checks a request header (REQUEST_HEADER_BYTES at `at`). */
export function decodeRequestHeader(b: Buffer, at: number, maxPayloadBytes: number): RequestHeader {
  const magic = b.readUInt32LE(at);
  if (magic !== REQUEST_MAGIC) throw malformed('magic', `request magic 0x${magic.toString(16)}`);
  const op = b.readUInt8(at + 4);
  if (op < DataOp.WRITE || op > DataOp.WRITE_ZEROES) throw malformed('op', `unknown op ${op}`);
  const flags = b.readUInt8(at + 5);
  const allowed = op === DataOp.WRITE ? FLAG_FUA : op === DataOp.WRITE_ZEROES ? FLAG_MAY_TRIM : 0;
  if ((flags & ~allowed) !== 0) throw malformed('flags', `flags 0x${flags.toString(16)} on op ${op}`);
  checkZero(b.readUInt16LE(at + 6), 'reserved');
  const lengthBytes = b.readUInt32LE(at + 8);
  const maxLength = op === DataOp.TRIM || op === DataOp.WRITE_ZEROES ? MAX_RANGE_BYTES : maxPayloadBytes;
  if (op === DataOp.FLUSH ? lengthBytes !== 0 : lengthBytes === 0 || lengthBytes > maxLength) {
    throw malformed('length', `length ${lengthBytes} on op ${op} (1 to ${maxLength} for this op, 0 for flush)`);
  }
  checkZero(b.readUInt32LE(at + 12), 'reserved2');
  const id = readU64(b, at + 16, 'id');
  const offset = readU64(b, at + 24, 'offset');
  if (op === DataOp.FLUSH ? offset !== 0 : !Number.isSafeInteger(offset + lengthBytes)) throw malformed('offset', `offset ${offset} on op ${op}`);
  return { op, flags, lengthBytes, id, offset };
}

export function encodeReplyHeader(h: ReplyHeader, b = Buffer.allocUnsafe(REPLY_HEADER_BYTES)): Buffer {
  b.writeUInt32LE(REPLY_MAGIC, 0);
  b.writeUInt8(h.code, 4);
  b.writeUInt8(h.reason, 5);
  b.writeUInt16LE(0, 6);
  b.writeUInt32LE(h.lengthBytes, 8);
  b.writeUInt32LE(0, 12);
  writeU64(b, 16, h.id);
  return b;
}

export function decodeReplyHeader(b: Buffer, at: number): ReplyHeader {
  const magic = b.readUInt32LE(at);
  if (magic !== REPLY_MAGIC) throw malformed('magic', `reply magic 0x${magic.toString(16)}`);
  checkZero(b.readUInt16LE(at + 6), 'reserved');
  checkZero(b.readUInt32LE(at + 12), 'reserved2');
  return { code: b.readUInt8(at + 4), reason: b.readUInt8(at + 5), lengthBytes: b.readUInt32LE(at + 8), id: readU64(b, at + 16, 'id') };
}
