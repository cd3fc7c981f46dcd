/**
 * The client side of the fixed newstyle handshake, as the kernel's nbd driver needs it
 * done before it takes a socket: greeting, client flags, NBD_OPT_GO for one export
 * (asking for its block sizes), then the export's size and transmission flags. No
 * structured replies are negotiated: the kernel's driver reads simple replies only.
 *
 * The bytes go through `HandshakeIo`, so this file holds the protocol decisions and the
 * caller owns the socket (kernel attach uses a raw fd; see nbd-kernel-device.ts).
 */
import { Code, StorageError } from '../../common/errors.js';
import * as C from './codec.js';
import * as P from './protocol.js';

export interface HandshakeIo {
  /** Exactly `n` bytes; rejects when the peer closes first. */
  read(n: number): Promise<Buffer>;
  write(bytes: Buffer): Promise<void>;
}

export interface NegotiatedExport {
  sizeBytes: number;
  transmissionFlags: number;
  /** From NBD_INFO_BLOCK_SIZE; undefined when the server sent none. */
  blockSizes?: { minimum: number; preferred: number; maximum: number };
}

/** Option replies longer than this are a broken server. */
const MAX_REPLY_BYTES = 64 << 10;

function broken(exportName: string, what: string): StorageError {
  return new StorageError(Code.INTERNAL, `the NBD server of export "${exportName}" broke the protocol: ${what}`, { details: { export: exportName } });
}

function refused(exportName: string, type: number, message: string): StorageError {
  const code = type === P.NBD_REP_ERR_UNKNOWN ? Code.NOT_FOUND
    : type === P.NBD_REP_ERR_SHUTDOWN ? Code.UNAVAILABLE
      : type === P.NBD_REP_ERR_UNSUP ? Code.UNIMPLEMENTED
        : Code.FAILED_PRECONDITION;
  return new StorageError(code, `the NBD server refused export "${exportName}" (reply type 0x${type.toString(16)}): ${message || 'no message'}`,
    { details: { export: exportName, replyType: type } });
}

async function greet(io: HandshakeIo, exportName: string): Promise<void> {
  const hello = await io.read(P.HANDSHAKE_BYTES);
  if (hello.readBigUInt64BE(0) !== P.NBD_INIT_MAGIC || hello.readBigUInt64BE(8) !== P.NBD_OPTS_MAGIC) {
    throw broken(exportName, 'not a newstyle NBD greeting');
  }
  const serverFlags = hello.readUInt16BE(16);
  if ((serverFlags & P.NBD_FLAG_FIXED_NEWSTYLE) === 0) throw broken(exportName, 'the server does not speak fixed newstyle');
  const clientFlags = Buffer.allocUnsafe(P.CLIENT_FLAGS_BYTES);
  clientFlags.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE | (serverFlags & P.NBD_FLAG_NO_ZEROES ? P.NBD_FLAG_C_NO_ZEROES : 0), 0);
  await io.write(clientFlags);
}

/** Negotiates `exportName` with NBD_OPT_GO; on return the socket is in the transmission phase. */
export async function negotiateExport(io: HandshakeIo, exportName: string): Promise<NegotiatedExport> {
  await greet(io, exportName);
  await io.write(C.encodeOption(P.NBD_OPT_GO, C.encodeInfoRequest(exportName, [P.NBD_INFO_BLOCK_SIZE])));
  let result: NegotiatedExport | undefined;
  let blockSizes: NegotiatedExport['blockSizes'];
  for (;;) {
    const header = C.decodeOptionReplyHeader(await io.read(P.OPTION_REPLY_HEADER_BYTES));
    if (!header.magicOk || header.option !== P.NBD_OPT_GO) throw broken(exportName, 'a bad option reply header');
    if (header.length > MAX_REPLY_BYTES) throw broken(exportName, `an option reply of ${header.length} bytes`);
    const data = header.length > 0 ? await io.read(header.length) : Buffer.alloc(0);
    if ((header.type & P.NBD_REP_FLAG_ERROR) !== 0) throw refused(exportName, header.type, data.toString('utf8'));
    if (header.type === P.NBD_REP_ACK) break;
    if (header.type !== P.NBD_REP_INFO || data.length < 2) continue;
    const info = data.readUInt16BE(0);
    if (info === P.NBD_INFO_EXPORT && data.length >= 12) {
      result = { sizeBytes: C.readUInt64(data, 2), transmissionFlags: data.readUInt16BE(10) };
    } else if (info === P.NBD_INFO_BLOCK_SIZE && data.length >= 14) {
      blockSizes = { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
    }
  }
  if (!result) throw broken(exportName, 'NBD_OPT_GO ended without NBD_INFO_EXPORT');
  if (!Number.isSafeInteger(result.sizeBytes)) throw broken(exportName, 'an export size beyond 2^53');
  return blockSizes ? { ...result, blockSizes } : result;
}
