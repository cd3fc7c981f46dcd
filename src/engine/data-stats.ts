/**
 * Counters of the replica data channel, per remote replica, for /metrics: requests and
 * bytes sent, requests in flight, failures, and a latency histogram (Prometheus buckets,
 * cumulative when exposed). One instance lives as long as the engine's replica does, so
 * redials keep adding to it.
 */
import { DataOp } from '../replica/data-frames.js';

/** Upper bounds of the latency buckets, in seconds (the last bucket is +Inf). */
export const LATENCY_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1] as const;

export class DataChannelStats {
  requests = 0;
  /** WRITE payloads handed to the socket. */
  bytesSent = 0;
  /** WRITE payloads sent plus READ data received, by completed requests. */
  bytesDone = 0;
  failures = 0;
  inflight = 0;
  /** Non-cumulative counts per bucket; one more slot for +Inf. */
  readonly latency = new Float64Array(LATENCY_BUCKETS_S.length + 1);
  latencySumS = 0;

  sent(op: DataOp, bytes: number): void {
    this.requests++;
    this.inflight++;
    if (op === DataOp.WRITE) this.bytesSent += bytes;
  }

  done(bytes: number, ms: number, failed: boolean): void {
    this.inflight--;
    if (failed) {
      this.failures++;
      return;
    }
    this.bytesDone += bytes;
    const s = ms / 1000;
    this.latencySumS += s;
    let i = 0;
    while (i < LATENCY_BUCKETS_S.length && s > LATENCY_BUCKETS_S[i]!) i++;
    this.latency[i]!++;
  }
}
