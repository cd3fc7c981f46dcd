/**
 * Checks a point-in-time copy (a restored snapshot) of a volume a VerifiedWriter wrote:
 * every block must hold one of the writer's own blocks, at least as new as the generation
 * acknowledged when the snapshot was asked for (`lower`) and no newer than the last
 * generation issued when the snapshot call returned (`upper`). A block never acknowledged
 * before the call may still be unwritten (no header) or hold a generation up to `upper`.
 */
import { decodeBlock, type ReadFn, type VerifiedWriter } from './verified-writer.js';

export interface PointInTimeReport {
  blocksChecked: number;
  /** Blocks holding something they must not (at most 20 described). */
  problems: string[];
  problemCount: number;
}

export async function checkPointInTime(read: ReadFn, writer: VerifiedWriter, lower: Map<number, number>, upper: number): Promise<PointInTimeReport> {
  const report: PointInTimeReport = { blocksChecked: 0, problems: [], problemCount: 0 };
  const problem = (text: string): void => {
    report.problemCount++;
    if (report.problems.length < 20) report.problems.push(text);
  };
  const bytes = writer.blockBytes;
  const first = writer.firstBlock;
  const span = 256; // blocks per read
  for (let start = first; start < first + writer.blockCount; start += span) {
    const count = Math.min(span, first + writer.blockCount - start);
    const data = await read(start * bytes, count * bytes);
    for (let i = 0; i < count; i++) {
      const block = start + i;
      const min = lower.get(block) ?? 0;
      const got = decodeBlock(data.subarray(i * bytes, (i + 1) * bytes));
      report.blocksChecked++;
      if (!got) {
        if (min > 0) problem(`block ${block}: no writer block, but generation ${min} was acknowledged before the snapshot`);
        continue;
      }
      if (got.writerId !== writer.writerId || got.block !== block || !got.digestOk) {
        problem(`block ${block}: holds block ${got.block} of writer ${got.writerId.toString(16)} (digest ${got.digestOk ? 'ok' : 'bad'})`);
      } else if (got.generation < min) {
        problem(`block ${block}: generation ${got.generation}, older than ${min} acknowledged before the snapshot`);
      } else if (got.generation > upper) {
        problem(`block ${block}: generation ${got.generation}, issued after the snapshot returned (last issued then: ${upper})`);
      }
    }
  }
  return report;
}
