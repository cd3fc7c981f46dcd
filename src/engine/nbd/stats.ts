/** Counters of one export server, shared by its connections. */
export interface ServerStats {
  /** Connections open now. */
  connections: number;
  /** Connections accepted since start. */
  connectionsTotal: number;
  /** Transmission requests received (including DISC and rejected ones). */
  requests: number;
  readRequests: number;
  writeRequests: number;
  flushRequests: number;
  trimRequests: number;
  writeZeroesRequests: number;
  bytesRead: number;
  bytesWritten: number;
  /** Requests answered with an error (bounds, flags, device errors). */
  errorReplies: number;
  /** Device errors among them. */
  ioErrors: number;
  /** Connections on which a client broke the protocol. */
  protocolErrors: number;
}

export function newStats(): ServerStats {
  return {
    connections: 0, connectionsTotal: 0, requests: 0, readRequests: 0, writeRequests: 0, flushRequests: 0,
    trimRequests: 0, writeZeroesRequests: 0, bytesRead: 0, bytesWritten: 0, errorReplies: 0, ioErrors: 0, protocolErrors: 0,
  };
}
