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
 * that cannot be done, the accepted socket is used as it is, with 'data' events.
 *
 * Two node internals make this work, both checked on every connection: the accepted
 * socket's fd (`_handle.fd`, private) and the constructor's `onread` option (documented for
 * net.connect only; node keeps the callback under its `kBufferCb` symbol). If a node
 * upgrade removes either, the connection falls back to 'data' events (correct, one copy
 * per read) and a warning says so once per process; test/unit/nbd-socket-internals.test.ts
 * fails on such a node.
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

/** The node internals the in-place receive path relies on (a test substitutes missing ones). */
export interface SocketInternals {
  /** The fd of an accepted socket; undefined when node no longer exposes it. */
  fdOf(accepted: Socket): number | undefined;
  /** A socket on `options.fd` that should read through `options.onread`. */
  open(options: SocketConstructorOpts & ConnectOpts): Socket;
}

export const NODE_SOCKET_INTERNALS: SocketInternals = {
  fdOf(accepted) {
    const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  },
  open: (options) => new Socket(options),
};

/** Whether `socket` took the `onread` option: node keeps its callback under the `kBufferCb` symbol. */
export function takesOnread(socket: Socket, callback: unknown): boolean {
  const key = Object.getOwnPropertySymbols(socket).find((sym) => sym.description === 'kBufferCb');
  return key !== undefined && (socket as unknown as Record<symbol, unknown>)[key] === callback;
}

const warned = new Set<string>();

/** A node internal is missing: say so once per process (it will not come back). */
function warnFallbackOnce(log: Logger, internal: '_handle.fd' | 'onread'): void {
  if (warned.has(internal)) return;
  warned.add(internal);
  log.warn({ internal, nodeVersion: process.version }, 'nbd sockets fall back to data events: a node internal is missing (one copy per read)');
}

/**
 * The socket to use for `accepted` (created paused): a re-wrapped duplicate that reads
 * where `sink` says, or (without `inPlace`, or when that fails) `accepted` itself
 * delivering 'data' chunks to the sink.
 */
export function adoptSocket(accepted: Socket, sink: ReadSink, log: Logger, inPlace = true, internals = NODE_SOCKET_INTERNALS): { socket: Socket; direct: boolean } {
  const socket = inPlace ? wrapInPlace(accepted, sink, log, internals) : undefined;
  if (!socket) {
    accepted.on('data', (chunk: Buffer) => sink.chunk(chunk));
    accepted.resume();
    return { socket: accepted, direct: false };
  }
  accepted.destroy();
  return { socket, direct: true };
}

/** A duplicate of `accepted` reading through `onread`, or undefined (then the caller uses 'data' events). */
function wrapInPlace(accepted: Socket, sink: ReadSink, log: Logger, internals: SocketInternals): Socket | undefined {
  const fd = internals.fdOf(accepted);
  if (fd === undefined) {
    warnFallbackOnce(log, '_handle.fd');
    return undefined;
  }
  let dup: number;
  try {
    dup = nativeIo().ioDupFd(fd);
  } catch (err) {
    log.debug({ err }, 'nbd socket: no fd duplication, reading with data events');
    return undefined;
  }
  const callback = (n: number, target: Uint8Array): boolean => {
    sink.received(target as Buffer, n);
    return true;
  };
  // @types/node 20 declares `onread` on connect options only; the constructor takes it too.
  const socket = internals.open({ fd: dup, readable: true, writable: true, allowHalfOpen: true, onread: { buffer: () => sink.readTarget(), callback } });
  if (takesOnread(socket, callback)) return socket;
  socket.destroy(); // closes the duplicate; `accepted` is untouched
  warnFallbackOnce(log, 'onread');
  return undefined;
}
