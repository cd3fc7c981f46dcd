/**
 * The write barrier's pause, for /metrics: one histogram for the whole process,
 * `cairn_snapshot_barrier_pause_seconds` (how long new writes waited at each snapshot,
 * failed ones included).
 */
import { BucketHistogram } from '../common/histogram.js';

/** Upper bounds of the pause buckets, in seconds (the last bucket is +Inf). */
export const PAUSE_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

/** Every engine of this process observes its barriers' pauses here, in seconds. */
export const barrierPauses = new BucketHistogram(PAUSE_BUCKETS_S);
