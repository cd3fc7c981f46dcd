/**
 * Checks a disk image left by a simulated power loss against what a VerifiedWriter was
 * promised: each block in `promised` (block -> generation, from durableGenerations() taken
 * just before the power-loss point) must hold that generation or a later one, intact and
 * naming its block. No block may hold a generation issued after the power-loss point
 * (`issuedBefore`: the writer's generationsIssued once the point was set), which proves the
 * image is not simply the final state. Blocks never promised may hold anything this writer
 * wrote to them, or their old contents; they are only counted.
 */
import { decodeBlock, type ReadFn, type VerifiedWriter } from './verified-writer.js';

export type DurabilityProblem = 'lost' | 'foreign' | 'wrong-block' | 'bad-digest' | 'stale-generation' | 'from-after-the-point';

export interface DurabilityMismatch {
  block: number;
  problem: DurabilityProblem;
  /** The promised generation (0: none). */
  promised: number;
  found?: number;
}

export interface DurabilityReport {
  /** Blocks the writer touched, all read. */
  blocksChecked: number;
  blocksPromised: number;
  /** Promised blocks holding the promised generation, or a later one. */
  atPromised: number;
  later: number;
  /** Unpromised blocks that hold one of this writer's writes / that do not. */
  unpromisedPresent: number;
  unpromisedAbsent: number;
  mismatchCount: number;
  /** The first mismatches (at most 20). */
  mismatches: DurabilityMismatch[];
}

const MAX_DETAILS = 20;

export async function verifyDurable(writer: VerifiedWriter, promised: ReadonlyMap<number, number>, issuedBefore: number, read: ReadFn): Promise<DurabilityReport> {
  const report: DurabilityReport = { blocksChecked: 0, blocksPromised: promised.size, atPromised: 0, later: 0, unpromisedPresent: 0, unpromisedAbsent: 0, mismatchCount: 0, mismatches: [] };
  const bad = (block: number, problem: DurabilityProblem, found?: number): void => {
    report.mismatchCount++;
    if (report.mismatches.length < MAX_DETAILS) report.mismatches.push({ block, problem, promised: promised.get(block) ?? 0, ...(found === undefined ? {} : { found }) });
  };
  const size = writer.blockBytes;
  for (const block of writer.writtenBlocks()) {
    const data = await read(block * size, size);
    report.blocksChecked++;
    const h = decodeBlock(data);
    const ours = h !== undefined && h.writerId === writer.writerId && h.block === block && h.digestOk;
    if (ours && h.generation > issuedBefore) {
      bad(block, 'from-after-the-point', h.generation);
      continue;
    }
    const want = promised.get(block) ?? 0;
    if (want === 0) {
      if (ours) report.unpromisedPresent++;
      else report.unpromisedAbsent++;
      continue;
    }
    if (!h) bad(block, 'lost');
    else if (h.writerId !== writer.writerId) bad(block, 'foreign');
    else if (h.block !== block) bad(block, 'wrong-block', h.generation);
    else if (!h.digestOk) bad(block, 'bad-digest', h.generation);
    else if (h.generation < want) bad(block, 'stale-generation', h.generation);
    else if (h.generation === want) report.atPromised++;
    else report.later++;
  }
  return report;
}
