/**
 * Receives a connection's bytes into buffers the NBD server chooses (net.Socket's `onread`
 * option) instead of node's fresh 64 KiB chunk per read:
 * - by default into a scratch area (ReadArea) that is bump-allocated and never written
 *   twice, so slices of it (request headers, small write payloads) stay valid for as long
 *   as a request holds them;
 * - a large write payload straight into its own buffer, as nbdkit does: no copy, no chunk
 *   allocations, and a read syscall takes all the socket has for that payload at once.
 *
 * net.Server's sockets cannot take `onread`, so an accepted socket (the server listens with
 * pauseOnConnect, so it has read nothing) is wrapped anew: its fd is duplicated, the
 * duplicate is opened as a net.Socket with `onread`, and the original is destroyed. Where
 * that cannot be done (no fd to duplicate), the accepted socket is used as it is, with
 * 'data' events.
 */
import { Socket, type ConnectOpts, type SocketConstructorOpts } from 'node:net';
import type { Logger } from '../../common/log.js';
import { nativeIo } from '../../native/io.js';

/** The scratch area is carved from buffers of this size... */
const AREA_BYTES = 256 << 10;
/** ...at most this much per read (how far a read may run into a large payload)... */
export const REGION_MAX_BYTES = 64 << 10;
/** ...and a fresh buffer is started when less than this is left. */
const REGION_MIN_BYTES = 4 << 10;

/** Bump allocation of receive space: bytes once received are never overwritten. */
export class ReadArea {
  private buf = Buffer.allocUnsafeSlow(AREA_BYTES);
  private pos = 0;

  /** Where the next read may land: up to `maxBytes`. */
  region(maxBytes = REGION_MAX_BYTES): Buffer {
    if (this.buf.length - this.pos < REGION_MIN_BYTES) {
      this.buf = Buffer.allocUnsafeSlow(AREA_BYTES);
      this.pos = 0;
    }
    return this.buf.subarray(this.pos, Math.min(this.buf.length, this.pos + maxBytes));
  }

  /** The `n` bytes just received into region(); they stay valid while referenced. */
  commit(region: Buffer, n: number): Buffer {
    this.pos += n;
    return region.subarray(0, n);
  }
}

export interface ReadSink {
  /** Where the next read lands. */
  readTarget(): Buffer;
  /** `n` bytes arrived at the start of `target` (an earlier readTarget()). */
  received(target: Buffer, n: number): void;
  /** A chunk of node's ('data' events, when the socket could not be re-wrapped). */
  chunk(data: Buffer): void;
}

/**
 * The socket to use for `accepted` (created paused): a re-wrapped duplicate that reads
 * where `sink` says, or (without `inPlace`, or when that fails) `accepted` itself
 * delivering 'data' chunks to the sink.
 */
export function adoptSocket(accepted: Socket, sink: ReadSink, log: Logger, inPlace = true): { socket: Socket; direct: boolean } {
  const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  let dup = -1;
  if (inPlace && typeof fd === 'number' && fd >= 0) {
    try {
      dup = nativeIo().ioDupFd(fd);
    } catch (err) {
      log.debug({ err }, 'nbd socket: no fd duplication, reading with data events');
    }
  }
  if (dup < 0) {
    accepted.on('data', (chunk: Buffer) => sink.chunk(chunk));
    accepted.resume();
    return { socket: accepted, direct: false };
  }
  // @types/node 20 declares `onread` on connect options only; the constructor takes it too.
  const options: SocketConstructorOpts & ConnectOpts = {
    fd: dup,
    readable: true,
    writable: true,
    allowHalfOpen: true,
    onread: {
      buffer: () => sink.readTarget(),
      callback: (n: number, target: Uint8Array) => {
        sink.received(target as Buffer, n);
        return true;
      },
    },
  };
  const socket = new Socket(options);
  accepted.destroy();
  return { socket, direct: true };
}
