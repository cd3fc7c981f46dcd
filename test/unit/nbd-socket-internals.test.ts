/**
 * The NBD receive path's node internals (src/engine/nbd/socket-reader.ts): an accepted
 * socket's fd (`_handle.fd`) and net.Socket's `onread` option. On the node we ship both
 * must exist and be used: bytes arrive through the sink's received(), never as 'data'
 * chunks. If a node upgrade removes one, the first test fails here, and the daemon falls
 * back to 'data' events with one warning per process (the other tests).
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, Socket, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Logger } from '../../src/common/log.js';
import { adoptSocket, NODE_SOCKET_INTERNALS, takesOnread, type ReadSink, type SocketInternals } from '../../src/engine/nbd/socket-reader.js';

const WARNING = 'nbd sockets fall back to data events: a node internal is missing (one copy per read)';

function recordingLog(): { log: Logger; warnings: Record<string, unknown>[] } {
  const warnings: Record<string, unknown>[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, warnings };
}

/** A sink that records how bytes arrived, and resolves `got` once `expect` bytes have. */
class Sink implements ReadSink {
  viaOnread = 0;
  viaData = 0;
  private bytes = 0;
  private done = (): void => undefined;
  readonly got: Promise<void>;
  constructor(private readonly expect: number) {
    this.got = new Promise((r) => (this.done = r));
  }
  readTarget(): Buffer { return Buffer.alloc(64); }
  received(_target: Buffer, n: number): void { this.viaOnread += n; this.add(n); }
  chunk(data: Buffer): void { this.viaData += data.length; this.add(data.length); }
  private add(n: number): void {
    this.bytes += n;
    if (this.bytes >= this.expect) this.done();
  }
}

/** A unix socket server like the NBD export's (paused on connect); each connection is adopted and sent `payload`. */
async function exchange(t: ExecutionContext, payload: Buffer, adopt: (accepted: Socket, sink: Sink) => { socket: Socket; direct: boolean }): Promise<{ sink: Sink; direct: boolean }> {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-sock-'));
  const path = join(dir, 's.sock');
  const sink = new Sink(payload.length);
  let direct: boolean | undefined;
  let adopted: Socket | undefined;
  const server: Server = createServer({ pauseOnConnect: true }, (accepted) => {
    const r = adopt(accepted, sink);
    direct = r.direct;
    adopted = r.socket;
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const client = connect(path);
  t.teardown(() => {
    client.destroy();
    adopted?.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  client.write(payload);
  await sink.got;
  return { sink, direct: direct! };
}

test('on this node the accepted socket has its fd and the re-wrapped socket reads through onread', async (t) => {
  const { log, warnings } = recordingLog();
  const callback = (): boolean => true;
  t.true(takesOnread(new Socket({ onread: { buffer: Buffer.alloc(16), callback } } as ConstructorParameters<typeof Socket>[0]), callback),
    'net.Socket keeps the onread callback (kBufferCb)');
  let fd: number | undefined;
  const { sink, direct } = await exchange(t, Buffer.from('hello, cairn'), (accepted, s) => {
    fd = NODE_SOCKET_INTERNALS.fdOf(accepted);
    return adoptSocket(accepted, s, log);
  });
  t.is(typeof fd, 'number', 'an accepted socket exposes _handle.fd');
  t.true(direct);
  t.is(sink.viaOnread, 12, 'every byte came through onread');
  t.is(sink.viaData, 0);
  t.deepEqual(warnings, []);
});

test('without _handle.fd: data events, and one warning however many connections', async (t) => {
  const { log, warnings } = recordingLog();
  const noFd: SocketInternals = { ...NODE_SOCKET_INTERNALS, fdOf: () => undefined };
  for (let i = 0; i < 2; i++) {
    const { sink, direct } = await exchange(t, Buffer.from('abc'), (accepted, s) => adoptSocket(accepted, s, log, true, noFd));
    t.false(direct);
    t.is(sink.viaData, 3);
    t.is(sink.viaOnread, 0);
  }
  t.deepEqual(warnings.map((w) => [w.msg, w.internal]), [[WARNING, '_handle.fd']]);
});

test('a node that ignores onread: data events on the original socket, and one warning', async (t) => {
  const { log, warnings } = recordingLog();
  const ignoresOnread: SocketInternals = { ...NODE_SOCKET_INTERNALS, open: (options) => new Socket({ ...options, onread: undefined } as ConstructorParameters<typeof Socket>[0]) };
  for (let i = 0; i < 2; i++) {
    const { sink, direct } = await exchange(t, Buffer.from('abcdef'), (accepted, s) => adoptSocket(accepted, s, log, true, ignoresOnread));
    t.false(direct);
    t.is(sink.viaData, 6, 'no byte was lost to the discarded duplicate');
    t.is(sink.viaOnread, 0);
  }
  t.deepEqual(warnings.map((w) => [w.msg, w.internal]), [[WARNING, 'onread']]);
});

test('receiveInPlace off is a choice, not a missing internal: no warning', async (t) => {
  const { log, warnings } = recordingLog();
  const { sink, direct } = await exchange(t, Buffer.from('xyz'), (accepted, s) => adoptSocket(accepted, s, log, false));
  t.false(direct);
  t.is(sink.viaData, 3);
  t.deepEqual(warnings, []);
});
