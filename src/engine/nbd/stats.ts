/** Counters and latency histograms of one export server, shared by its connections. */
import { BucketHistogram } from '../../common/histogram.js';

/** Upper bounds of the request latency buckets, in seconds (the last bucket is +Inf). */
export const REQUEST_LATENCY_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5] as const;

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
  /** Requests running now (from the start of their run until their reply is handed to the socket). */
  inflight: number;
  /** Seconds from a request's start to its reply handed to the socket, failed ones included. */
  readLatency: BucketHistogram;
  writeLatency: BucketHistogram;
  flushLatency: BucketHistogram;
}

export function newStats(): ServerStats {
  return {
    connections: 0, connectionsTotal: 0, requests: 0, readRequests: 0, writeRequests: 0, flushRequests: 0,
    trimRequests: 0, writeZeroesRequests: 0, bytesRead: 0, bytesWritten: 0, errorReplies: 0, ioErrors: 0, protocolErrors: 0,
    inflight: 0, readLatency: histogram(), writeLatency: histogram(), flushLatency: histogram(),
  };
}

function histogram(): BucketHistogram {
  return new BucketHistogram(REQUEST_LATENCY_BUCKETS_S);
}

/** The plain counters of `stats` (no histograms), for a log line. */
export function statsCounters(stats: ServerStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, value] of Object.entries(stats)) if (typeof value === 'number') out[key] = value;
  return out;
}
