/**
 * One NBD client: the handshake over raw bytes, then the transmission phase. Bytes arrive
 * where the connection chooses (socket-reader.ts); requests are parsed out of them (a
 * write's payload stays in the slices and buffers it arrived in, see request-reader.ts),
 * admitted against the daemon's byte budget, run concurrently on the device, and answered
 * in any order by cookie through a ReplyWriter that batches a turn's replies into one write.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../common/log.js';
import * as C from './codec.js';
import type { ConnectionContext } from './connection-context.js';
import * as P from './protocol.js';
import { KNOWN_CLIENT_FLAGS, exportNameReply, handleOption, type NegotiationState } from './handshake.js';
import { ReplyWriter } from './reply-writer.js';
import { RequestReader } from './request-reader.js';
import { RequestRunner } from './request-runner.js';
import { ReadArea, adoptSocket, type ReadSink } from './socket-reader.js';

/** After we end a session, a client that keeps its side open is cut off after this. */
const END_GRACE_MS = 2000;

type HandshakeStep = 'flags' | 'option-header' | 'option-data';

export class NbdConnection implements ReadSink {
  readonly closed: Promise<void>;
  private readonly socket: Socket;
  private readonly direct: boolean;
  private readonly area = new ReadArea();
  private phase: 'handshake' | 'transmission' | 'done' = 'handshake';
  private hsBuf: Buffer = Buffer.alloc(0);
  private hsStep: HandshakeStep = 'flags';
  private hsOption = 0;
  private hsNeed = P.CLIENT_FLAGS_BYTES;
  private readonly negotiation: NegotiationState = { noZeroes: false, structuredReplies: false, shuttingDown: false };
  private runner: RequestRunner | undefined;
  private reader: RequestReader | undefined;
  private warned = false;
  private endTimer: NodeJS.Timeout | undefined;

  /** `accepted` comes paused from the server (pauseOnConnect) and may be replaced. */
  constructor(
    accepted: Socket,
    private readonly ctx: ConnectionContext,
    private readonly log: Logger,
  ) {
    const { socket, direct } = adoptSocket(accepted, this, log, ctx.receiveInPlace);
    this.socket = socket;
    this.direct = direct;
    this.closed = new Promise((resolve) => socket.once('close', () => this.onClose(resolve)));
    socket.on('end', () => this.onEnd());
    socket.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ err: err.code ?? err.message }, 'nbd socket error'));
    socket.write(C.encodeHandshake());
  }

  /** Ends the session once in-flight requests are answered (server shutdown). */
  shutdown(): Promise<void> {
    this.negotiation.shuttingDown = true;
    if (this.phase === 'handshake') {
      this.end();
    } else if (this.runner) {
      this.runner.stop('shutdown');
    }
    return this.closed;
  }

  /** Ends our side; destroys the socket if the client does not close within a grace period. */
  end(): void {
    if (this.endTimer !== undefined || this.socket.destroyed) return;
    this.socket.end();
    this.endTimer = setTimeout(() => this.socket.destroy(), END_GRACE_MS);
    this.endTimer.unref();
  }

  /** Logs one warn line per connection for a misbehaving client. */
  warn(reason: string, fields: Record<string, unknown> = {}): void {
    if (this.warned) return;
    this.warned = true;
    this.ctx.stats.protocolErrors++;
    this.log.warn({ reason, ...fields }, 'nbd client misbehaved');
  }

  /** A hard disconnect after a protocol violation. */
  abort(reason: string, fields: Record<string, unknown> = {}): void {
    this.warn(reason, fields);
    this.phase = 'done';
    this.socket.destroy();
  }

  readTarget(): Buffer {
    return this.reader ? this.reader.readTarget() : this.area.region();
  }

  received(target: Buffer, n: number): void {
    if (this.reader) this.reader.received(target, n);
    else this.chunk(this.area.commit(target, n));
  }

  chunk(data: Buffer): void {
    if (this.phase === 'transmission') this.reader!.chunk(data);
    else if (this.phase === 'handshake') this.onHandshakeData(data);
  }

  private onEnd(): void {
    if (this.phase === 'handshake') {
      if (this.hsBuf.length > 0 || this.hsStep !== 'option-header') this.warn('disconnected during handshake');
      this.end();
    } else if (this.reader) {
      this.reader.onEnd();
    }
  }

  private onClose(resolve: () => void): void {
    this.phase = 'done';
    if (this.endTimer !== undefined) clearTimeout(this.endTimer);
    this.reader?.onClose();
    this.runner?.onClose();
    this.ctx.stats.connections--;
    resolve();
  }

  private onHandshakeData(chunk: Buffer): void {
    this.hsBuf = this.hsBuf.length === 0 ? chunk : Buffer.concat([this.hsBuf, chunk]);
    while (this.phase === 'handshake' && this.hsBuf.length >= this.hsNeed) {
      const msg = this.hsBuf.subarray(0, this.hsNeed);
      this.hsBuf = this.hsBuf.subarray(this.hsNeed);
      this.handshakeMessage(msg);
    }
    if (this.phase === 'transmission' && this.hsBuf.length > 0) {
      const rest = this.hsBuf;
      this.hsBuf = Buffer.alloc(0);
      this.reader!.chunk(rest);
    }
  }

  private handshakeMessage(msg: Buffer): void {
    switch (this.hsStep) {
      case 'flags': {
        const flags = msg.readUInt32BE(0);
        if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) return this.abort('unknown client flags', { flags });
        this.negotiation.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
        return this.expect('option-header', P.OPTION_HEADER_BYTES);
      }
      case 'option-header': {
        const h = C.decodeOptionHeader(msg);
        if (!h.magicOk) return this.abort('bad option magic');
        if (h.length > P.MAX_OPTION_BYTES) return this.abort('option too long', { option: h.option, length: h.length });
        this.hsOption = h.option;
        if (h.length === 0) return this.option(Buffer.alloc(0));
        return this.expect('option-data', h.length);
      }
      case 'option-data':
        return this.option(msg);
    }
  }

  private expect(step: HandshakeStep, bytes: number): void {
    this.hsStep = step;
    this.hsNeed = bytes;
  }

  private option(data: Buffer): void {
    this.expect('option-header', P.OPTION_HEADER_BYTES);
    this.negotiation.shuttingDown = this.ctx.isShuttingDown();
    if (this.hsOption === P.NBD_OPT_EXPORT_NAME) {
      const reply = exportNameReply(this.negotiation, this.ctx.exp, data);
      if (!reply) return this.abort('unknown export name', { name: data.toString('utf8', 0, 256) });
      this.socket.write(reply);
      return this.enterTransmission();
    }
    const outcome = handleOption(this.negotiation, this.ctx.exp, this.hsOption, Buffer.from(data));
    if (outcome.problem !== undefined) this.warn(outcome.problem, { option: this.hsOption });
    for (const r of outcome.replies) this.socket.write(r);
    if (outcome.next === 'transmission') this.enterTransmission();
    else if (outcome.next === 'close') {
      this.phase = 'done';
      this.end();
    }
  }

  private enterTransmission(): void {
    this.phase = 'transmission';
    const writer = new ReplyWriter(this.socket, () => this.runner?.resumeIfPossible(), this.ctx.replyStallTimeoutMs,
      () => this.abort('client stopped reading its replies', { replyStallTimeoutMs: this.ctx.replyStallTimeoutMs }));
    this.runner = new RequestRunner(this.socket, this.ctx, writer, this.negotiation.structuredReplies, this);
    this.reader = new RequestReader(this.ctx, this.runner, this, this.area, this.direct);
    this.log.debug({ structuredReplies: this.negotiation.structuredReplies }, 'nbd transmission started');
  }
}
