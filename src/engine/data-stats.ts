/**
 * Counters of the replica data channel, per remote replica, for /metrics: requests and
 * bytes sent, requests in flight, failures, and a latency histogram in seconds. One
 * instance lives as long as the engine's replica does, so redials keep adding to it.
 */
import { BucketHistogram } from '../common/histogram.js';
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
  /** Time from sending a request to its reply, of the requests that succeeded. */
  readonly latency = new BucketHistogram(LATENCY_BUCKETS_S);

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
    this.latency.observe(ms / 1000);
  }
}
