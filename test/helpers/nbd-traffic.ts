/**
 * A well-behaved client that keeps writing random blocks to an export and reading them
 * back, so that tests can show one export keeps working while another is being abused.
 */
import { randomBytes } from 'node:crypto';
import * as P from '../../src/engine/nbd/protocol.js';
import { RawNbdClient } from './nbd-raw-client.js';

export interface TrafficResult {
  rounds: number;
  mismatches: number;
  errors: string[];
}

export interface Traffic {
  stop(): Promise<TrafficResult>;
}

export async function startTraffic(socketPath: string, name: string, blockBytes = 64 << 10): Promise<Traffic> {
  const client = await RawNbdClient.connect(socketPath);
  const { sizeBytes } = await client.negotiate(name, true);
  const result: TrafficResult = { rounds: 0, mismatches: 0, errors: [] };
  let running = true;
  let cookie = 1n;
  const loop = (async () => {
    while (running) {
      const offset = Math.floor(Math.random() * (sizeBytes / blockBytes)) * blockBytes;
      const data = randomBytes(blockBytes);
      client.request({ type: P.NBD_CMD_WRITE, cookie: cookie++, offset, data });
      const w = await client.readReply();
      client.request({ type: P.NBD_CMD_READ, cookie: cookie++, offset, length: blockBytes });
      const r = await client.readReply();
      if (w.error !== 0 || r.error !== 0) result.errors.push(`write ${w.error} read ${r.error}`);
      else if (!r.data.equals(data)) result.mismatches++;
      result.rounds++;
    }
  })().catch((err: unknown) => {
    result.errors.push(String(err));
  });
  return {
    async stop() {
      running = false;
      await loop;
      client.request({ type: P.NBD_CMD_DISC, cookie: 0n });
      await client.waitClosed();
      return result;
    },
  };
}
