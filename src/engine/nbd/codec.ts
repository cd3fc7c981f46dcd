/**
 * Pure encoding and decoding of NBD messages: the handshake, options and their replies,
 * transmission requests, simple and structured replies. No I/O and no state; the hot-path
 * functions write into caller-owned buffers and objects so that they allocate nothing.
 * The client-side halves (encodeRequest, decode*Reply) serve tests and tools.
 */
import * as P from './protocol.js';

const TWO_32 = 0x1_0000_0000;

/** A decoded transmission request. The 64-bit cookie stays two 32-bit halves. */
export interface RequestHeader {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  /** Up to 2^64 - 1, so past Number.MAX_SAFE_INTEGER it is only approximate: bound-check it. */
  offset: number;
  length: number;
}

export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}

export interface InfoRequest {
  name: string;
  infos: number[];
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function newRequestHeader(): RequestHeader {
  return { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
}

function writeUInt64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function readUInt64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

// ---- Handshake and options (server side) ----

/** NBDMAGIC, IHAVEOPT, handshake flags: the server's first 18 bytes. */
export function encodeHandshake(flags = P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES): Buffer {
  const b = Buffer.allocUnsafe(P.HANDSHAKE_BYTES);
  b.writeBigUInt64BE(P.NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

export function decodeOptionHeader(buf: Buffer, at = 0): OptionHeader {
  return {
    magicOk: buf.readBigUInt64BE(at) === P.NBD_OPTS_MAGIC,
    option: buf.readUInt32BE(at + 8),
    length: buf.readUInt32BE(at + 12),
  };
}

export function encodeOptionReply(option: number, type: number, data?: Uint8Array): Buffer {
  const len = data?.byteLength ?? 0;
  const b = Buffer.allocUnsafe(P.OPTION_REPLY_HEADER_BYTES + len);
  b.writeBigUInt64BE(P.NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) b.set(data, P.OPTION_REPLY_HEADER_BYTES);
  return b;
}

/** An error reply with a human-readable message. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message.slice(0, P.MAX_STRING_BYTES), 'utf8'));
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : P.EXPORT_NAME_ZEROES_BYTES));
  writeUInt64(b, sizeBytes, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** NBD_REP_SERVER data: the export's name (and an optional description). */
export function encodeRepServer(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
  writeUInt64(b, sizeBytes, 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION. */
export function encodeInfoString(infoType: number, text: string): Buffer {
  const t = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(2 + t.length);
  b.writeUInt16BE(infoType, 0);
  t.copy(b, 2);
  return b;
}

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; undefined when it is malformed. */
export function parseInfoRequest(data: Buffer): InfoRequest | undefined {
  if (data.length < 6) return undefined;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6 || nameLen > P.MAX_STRING_BYTES) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + count * 2) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + i * 2));
  return { name, infos };
}

/** Parses NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data; undefined when malformed. */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | undefined {
  if (data.length < 8) return undefined;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8 || nameLen > P.MAX_STRING_BYTES) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt32BE(4 + nameLen);
  let at = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return undefined;
    const qLen = data.readUInt32BE(at);
    if (qLen > data.length - at - 4 || qLen > P.MAX_STRING_BYTES) return undefined;
    queries.push(data.toString('utf8', at + 4, at + 4 + qLen));
    at += 4 + qLen;
  }
  return at === data.length ? { name, queries } : undefined;
}

// ---- Transmission (server side, hot path) ----

/** Decodes the 28-byte request at `at` into `out`; false when the magic is wrong. */
export function readRequestHeader(buf: Buffer, at: number, out: RequestHeader): boolean {
  if (buf.readUInt32BE(at) !== P.NBD_REQUEST_MAGIC) return false;
  out.flags = buf.readUInt16BE(at + 4);
  out.type = buf.readUInt16BE(at + 6);
  out.cookieHi = buf.readUInt32BE(at + 8);
  out.cookieLo = buf.readUInt32BE(at + 12);
  out.offset = readUInt64(buf, at + 16);
  out.length = buf.readUInt32BE(at + 24);
  return true;
}

/** Writes a 16-byte simple reply at `at`; returns the next position. */
export function writeSimpleReply(buf: Buffer, at: number, error: number, cookieHi: number, cookieLo: number): number {
  buf.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + 4);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  return at + P.SIMPLE_REPLY_BYTES;
}

/** Writes a 20-byte structured reply chunk header; returns the next position. */
export function writeStructuredHeader(
  buf: Buffer, at: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number,
): number {
  buf.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  buf.writeUInt32BE(length, at + 16);
  return at + P.STRUCTURED_REPLY_HEADER_BYTES;
}

/** Writes the 28 bytes before the data of a final OFFSET_DATA chunk; returns the next position. */
export function writeOffsetDataHeader(buf: Buffer, at: number, cookieHi: number, cookieLo: number, offset: number, dataLength: number): number {
  const next = writeStructuredHeader(buf, at, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeUInt64(buf, offset, next);
  return next + 8;
}

/** Bytes a final NBD_REPLY_TYPE_ERROR chunk with `message` takes. */
export function structuredErrorBytes(message: string): number {
  return P.STRUCTURED_REPLY_HEADER_BYTES + 6 + Buffer.byteLength(message, 'utf8');
}

/** Writes a final NBD_REPLY_TYPE_ERROR chunk; returns the next position. */
export function writeStructuredError(buf: Buffer, at: number, cookieHi: number, cookieLo: number, error: number, message: string): number {
  const msgLen = Buffer.byteLength(message, 'utf8');
  let p = writeStructuredHeader(buf, at, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + msgLen);
  buf.writeUInt32BE(error, p);
  buf.writeUInt16BE(msgLen, p + 4);
  p += 6;
  p += buf.write(message, p, 'utf8');
  return p;
}

// ---- Client side (tests and tools) ----

export interface RequestFields {
  flags?: number;
  type: number;
  cookie: bigint;
  offset?: number;
  length?: number;
  data?: Uint8Array;
  magic?: number;
}

export function encodeRequest(r: RequestFields): Buffer {
  const payload = r.data?.byteLength ?? 0;
  const b = Buffer.allocUnsafe(P.REQUEST_HEADER_BYTES + payload);
  b.writeUInt32BE(r.magic ?? P.NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  writeUInt64(b, r.offset ?? 0, 16);
  b.writeUInt32BE(r.length ?? payload, 24);
  if (r.data) b.set(r.data, P.REQUEST_HEADER_BYTES);
  return b;
}

export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.allocUnsafe(P.OPTION_HEADER_BYTES + data.byteLength);
  b.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.byteLength, 12);
  b.set(data, P.OPTION_HEADER_BYTES);
  return b;
}

export function encodeInfoRequest(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(6 + n.length + infos.length * 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + n.length + i * 2));
  return b;
}

export interface OptionReply {
  magicOk: boolean;
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(buf: Buffer, at = 0): OptionReply {
  return {
    magicOk: buf.readBigUInt64BE(at) === P.NBD_REP_MAGIC,
    option: buf.readUInt32BE(at + 8),
    type: buf.readUInt32BE(at + 12),
    length: buf.readUInt32BE(at + 16),
  };
}

export interface ReplyHeader {
  structured: boolean;
  error: number;
  cookie: bigint;
  /** Structured replies only. */
  flags: number;
  type: number;
  length: number;
}

/** Decodes a simple (16-byte) or structured (20-byte) reply header; undefined for a bad magic. */
export function decodeReplyHeader(buf: Buffer, at = 0): ReplyHeader | undefined {
  const magic = buf.readUInt32BE(at);
  if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
    return { structured: false, error: buf.readUInt32BE(at + 4), cookie: buf.readBigUInt64BE(at + 8), flags: 0, type: 0, length: 0 };
  }
  if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) {
    return {
      structured: true, error: 0, flags: buf.readUInt16BE(at + 4), type: buf.readUInt16BE(at + 6),
      cookie: buf.readBigUInt64BE(at + 8), length: buf.readUInt32BE(at + 16),
    };
  }
  return undefined;
}

export { readUInt64, writeUInt64 };
