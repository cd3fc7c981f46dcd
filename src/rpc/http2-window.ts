/**
 * Wider HTTP/2 flow-control windows for the peer port. HTTP/2 lets a sender have at most
 * one window of unacknowledged bytes on a stream and on a connection; the default is
 * 64 KiB. An engine sends all its block I/O to one replica on one stream, so with 64 KiB
 * it can have only ~15 requests of 4 KiB, or a sixteenth of a 1 MiB write, in flight before
 * it must wait a round trip for the replica to open the window again: that, not CPU,
 * capped replicated throughput (measured in docs/benchmarks.md).
 *
 * The client side is a grpc-js channel option. The server side has no option in grpc-js
 * 1.14: the initial stream window is set in the settings the server is created with, and
 * the connection window on each session as it arrives. Both reach into grpc-js internals
 * (`commonServerOptions`, `http2Servers`), checked here; if a grpc-js upgrade moves them,
 * `widenServerWindows` returns false and the caller logs it (the service still works, only
 * with the default windows).
 */
import type * as grpc from '@grpc/grpc-js';
import type * as http2 from 'node:http2';

/** 16 MiB: two full batches of the replica protocol. */
export const PEER_WINDOW_BYTES = 16 << 20;

/** Channel options that widen a client's receive windows (replies, reads). */
export function peerClientWindowOptions(windowBytes = PEER_WINDOW_BYTES): grpc.ChannelOptions {
  return { 'grpc-node.flow_control_window': windowBytes };
}

interface ServerInternals {
  commonServerOptions?: { settings?: http2.Settings };
  http2Servers?: Map<http2.Http2Server, unknown>;
}

/** Before bindAsync: new streams start with a window of `windowBytes`. False when grpc-js has changed. */
export function widenStreamWindows(server: grpc.Server, windowBytes = PEER_WINDOW_BYTES): boolean {
  const internals = server as unknown as ServerInternals;
  if (typeof internals.commonServerOptions !== 'object' || internals.commonServerOptions === null) return false;
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: windowBytes };
  return true;
}

/** After bindAsync: every new connection gets a connection window of `windowBytes`. False when grpc-js has changed. */
export function widenConnectionWindows(server: grpc.Server, windowBytes = PEER_WINDOW_BYTES): boolean {
  const servers = (server as unknown as ServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const http2Server of servers.keys()) {
    http2Server.on('session', (session: http2.ServerHttp2Session) => {
      try {
        session.setLocalWindowSize(windowBytes);
      } catch {
        // A session that is already closing: nothing to widen.
      }
    });
  }
  return true;
}
