/**
 * Protocol abuse, one case each: what a hostile or broken client sends, and the exact
 * error reply or disconnect the server must answer with.
 */
import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import * as C from '../../src/engine/nbd/codec.js';
import * as P from '../../src/engine/nbd/protocol.js';
import type { NbdExportFixture } from './nbd-fixture.js';
import type { RawNbdClient } from './nbd-raw-client.js';

export interface AbuseCase {
  name: string;
  /** Whether the server must log exactly one warn line for it. */
  warns: boolean;
  run(t: ExecutionContext<unknown>, c: RawNbdClient, fx: NbdExportFixture): Promise<void>;
}

const MiB = 1 << 20;

/** After an error reply the session must go on: a read at 0 still works. */
async function stillWorks(t: ExecutionContext<unknown>, c: RawNbdClient): Promise<void> {
  c.request({ type: P.NBD_CMD_READ, cookie: 999n, offset: 0, length: 4096 });
  const r = await c.readReply(4096);
  t.like(r, { error: 0, cookie: 999n });
  t.is(r.data.length, 4096);
}

async function expectError(t: ExecutionContext<unknown>, c: RawNbdClient, req: C.RequestFields, error: number, structured: boolean): Promise<void> {
  c.request(req);
  const r = await c.readReply();
  t.like(r, { error, cookie: req.cookie, structured });
}

export const ABUSE_CASES: AbuseCase[] = [
  {
    name: 'unknown client flags: disconnect', warns: true,
    async run(t, c) {
      await c.greet(0x80);
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'garbage instead of an option: disconnect', warns: true,
    async run(t, c) {
      await c.greet();
      c.send(randomBytes(1024));
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'option longer than 64 KiB: disconnect', warns: true,
    async run(t, c) {
      await c.greet();
      const h = C.encodeOption(P.NBD_OPT_GO);
      h.writeUInt32BE(1 << 30, 12);
      c.send(h);
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'unknown option gets ERR_UNSUP and negotiation continues', warns: true,
    async run(t, c) {
      await c.greet();
      const r = await c.option(0x1234, Buffer.from('whatever'));
      t.is(r[0]!.type, P.NBD_REP_ERR_UNSUP);
      const go = await c.option(P.NBD_OPT_GO, C.encodeInfoRequest('', []));
      t.is(go[go.length - 1]!.type, P.NBD_REP_ACK);
      await stillWorks(t, c);
    },
  },
  {
    name: 'GO for an unknown export gets ERR_UNKNOWN, then GO "" works', warns: false,
    async run(t, c) {
      await c.greet();
      t.is((await c.option(P.NBD_OPT_GO, C.encodeInfoRequest('nope', [])))[0]!.type, P.NBD_REP_ERR_UNKNOWN);
      const go = await c.option(P.NBD_OPT_GO, C.encodeInfoRequest('', []));
      t.is(go[go.length - 1]!.type, P.NBD_REP_ACK);
      await stillWorks(t, c);
    },
  },
  {
    name: 'EXPORT_NAME for an unknown export: disconnect', warns: true,
    async run(t, c) {
      await c.greet();
      c.send(C.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'EXPORT_NAME "" enters transmission (no zeros)', warns: false,
    async run(t, c, fx) {
      await c.greet();
      c.send(C.encodeOption(P.NBD_OPT_EXPORT_NAME));
      const reply = await c.readExact(10);
      t.is(Number(reply.readBigUInt64BE(0)), fx.device.sizeBytes);
      await stillWorks(t, c);
    },
  },
  {
    name: 'disconnect in the middle of an option', warns: true,
    async run(t, c) {
      await c.greet();
      c.send(C.encodeOption(P.NBD_OPT_GO, C.encodeInfoRequest('vol-a', [3])).subarray(0, 20));
      c.endWrites();
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'wrong request magic: disconnect', warns: true,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      c.request({ type: P.NBD_CMD_READ, cookie: 1n, length: 512, magic: 0xdeadbeef });
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'unknown command and BLOCK_STATUS get EINVAL', warns: false,
    async run(t, c) {
      await c.negotiate('vol-a', false);
      await expectError(t, c, { type: 99, cookie: 2n }, P.NBD_EINVAL, false);
      await expectError(t, c, { type: P.NBD_CMD_BLOCK_STATUS, cookie: 3n, length: 4096 }, P.NBD_EINVAL, false);
      await stillWorks(t, c);
    },
  },
  {
    name: 'unknown flags get EINVAL (a write payload is skipped)', warns: false,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      await expectError(t, c, { type: P.NBD_CMD_WRITE, flags: 0x40, cookie: 4n, data: Buffer.alloc(4096, 9) }, P.NBD_EINVAL, false);
      await expectError(t, c, { type: P.NBD_CMD_READ, flags: P.NBD_CMD_FLAG_NO_HOLE, cookie: 5n, length: 512 }, P.NBD_EINVAL, true);
      await expectError(t, c, { type: P.NBD_CMD_WRITE_ZEROES, flags: P.NBD_CMD_FLAG_FAST_ZERO, cookie: 6n, length: 512 }, P.NBD_EINVAL, false);
      await stillWorks(t, c);
    },
  },
  {
    name: 'past the end: read/trim EINVAL, write/zeroes ENOSPC', warns: false,
    async run(t, c, fx) {
      const end = fx.device.sizeBytes;
      await c.negotiate('vol-a', true);
      await expectError(t, c, { type: P.NBD_CMD_READ, cookie: 7n, offset: end - 512, length: 1024 }, P.NBD_EINVAL, true);
      await expectError(t, c, { type: P.NBD_CMD_READ, cookie: 8n, offset: 2 ** 64 - 4096, length: 4096 }, P.NBD_EINVAL, true);
      await expectError(t, c, { type: P.NBD_CMD_TRIM, cookie: 9n, offset: end, length: 4096 }, P.NBD_EINVAL, false);
      await expectError(t, c, { type: P.NBD_CMD_WRITE, cookie: 10n, offset: end - 512, data: Buffer.alloc(4096, 3) }, P.NBD_ENOSPC, false);
      await expectError(t, c, { type: P.NBD_CMD_WRITE_ZEROES, cookie: 11n, offset: end, length: 512 }, P.NBD_ENOSPC, false);
      await stillWorks(t, c);
    },
  },
  {
    name: 'oversized read and write (33 MiB) get EINVAL; the payload is skipped', warns: false,
    async run(t, c) {
      await c.negotiate('vol-a', false);
      await expectError(t, c, { type: P.NBD_CMD_READ, cookie: 12n, offset: 0, length: 33 * MiB }, P.NBD_EINVAL, false);
      await expectError(t, c, { type: P.NBD_CMD_WRITE, cookie: 13n, offset: 0, data: Buffer.alloc(33 * MiB, 1) }, P.NBD_EINVAL, false);
      await stillWorks(t, c);
    },
  },
  {
    name: 'a write claiming 1 GiB of payload: disconnect', warns: true,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      c.request({ type: P.NBD_CMD_WRITE, cookie: 14n, offset: 0, length: 1 << 30 });
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'disconnect in the middle of a request header', warns: true,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      c.send(C.encodeRequest({ type: P.NBD_CMD_READ, cookie: 15n, length: 512 }).subarray(0, 13));
      c.endWrites();
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'disconnect in the middle of a write payload', warns: true,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      c.send(C.encodeRequest({ type: P.NBD_CMD_WRITE, cookie: 16n, offset: 0, data: Buffer.alloc(MiB, 7) }).subarray(0, 300_000));
      c.endWrites();
      t.true(await c.waitClosed());
    },
  },
  {
    name: 'DISC answers what is in flight, then closes', warns: false,
    async run(t, c) {
      await c.negotiate('vol-a', true);
      c.request({ type: P.NBD_CMD_WRITE, cookie: 17n, offset: 0, data: Buffer.alloc(4096, 1) });
      c.request({ type: P.NBD_CMD_DISC, cookie: 18n });
      t.like(await c.readReply(), { error: 0, cookie: 17n });
      t.true(await c.waitClosed());
    },
  },
];
