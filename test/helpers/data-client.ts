/**
 * A raw client of the replica data channel for tests: dials (plaintext or mutual TLS),
 * sends a hello, then requests (or any bytes), and matches replies to requests by id.
 * Deliberately simple (replies are joined into one buffer): it checks the server, it is
 * not the engine's client.
 */
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { readFileSync } from 'node:fs';
import {
  DataOp, FLAG_FUA, HELLO_REPLY_BYTES, REPLY_HEADER_BYTES, decodeHelloReply, decodeReplyHeader, encodeHello, encodeRequestHeader,
  type Hello, type HelloReply, type ReplyHeader,
} from '../../src/replica/data-frames.js';
import type { PeerTlsConfig } from '../../src/rpc/tls.js';

export interface DataReply extends ReplyHeader {
  /** A read's data, or an error's message bytes. */
  body: Buffer;
}

export class DataClient {
  hello: HelloReply | undefined;
  private buffered = Buffer.alloc(0);
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: DataReply) => void; reject: (e: Error) => void }>();
  private helloWaiter: { resolve: (r: HelloReply) => void; reject: (e: Error) => void } | undefined;
  /** Resolves when the socket has closed (either side). */
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.on('close', () => {
      const err = new Error('data connection closed');
      this.helloWaiter?.reject(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      resolve();
    }));
  }

  /** Sends a hello and waits for its reply (rejects if the connection closes first). */
  handshake(hello: Hello): Promise<HelloReply> {
    return new Promise((resolve, reject) => {
      this.helloWaiter = { resolve, reject };
      this.socket.write(encodeHello(hello));
    });
  }

  write(offset: number, data: Buffer, fua = false): Promise<DataReply> {
    return this.request(DataOp.WRITE, offset, data.length, fua ? FLAG_FUA : 0, data);
  }

  read(offset: number, lengthBytes: number): Promise<DataReply> {
    return this.request(DataOp.READ, offset, lengthBytes, 0);
  }

  flush(): Promise<DataReply> {
    return this.request(DataOp.FLUSH, 0, 0, 0);
  }

  request(op: DataOp, offset: number, lengthBytes: number, flags: number, payload?: Buffer): Promise<DataReply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(encodeRequestHeader({ op, flags, lengthBytes, id, offset }));
      if (payload) this.socket.write(payload);
    });
  }

  /** Any bytes, as they are. */
  raw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  end(): Promise<void> {
    this.socket.end();
    return this.closed;
  }

  private onData(chunk: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    for (;;) {
      if (this.helloWaiter) {
        if (this.buffered.length < HELLO_REPLY_BYTES) return;
        const reply = decodeHelloReply(this.buffered);
        if (this.buffered.length < HELLO_REPLY_BYTES + reply.messageBytes) return;
        this.buffered = this.buffered.subarray(HELLO_REPLY_BYTES + reply.messageBytes);
        this.hello = reply;
        const w = this.helloWaiter;
        this.helloWaiter = undefined;
        w.resolve(reply);
        continue;
      }
      if (this.buffered.length < REPLY_HEADER_BYTES) return;
      const h = decodeReplyHeader(this.buffered, 0);
      if (this.buffered.length < REPLY_HEADER_BYTES + h.lengthBytes) return;
      const body = Buffer.from(this.buffered.subarray(REPLY_HEADER_BYTES, REPLY_HEADER_BYTES + h.lengthBytes));
      this.buffered = this.buffered.subarray(REPLY_HEADER_BYTES + h.lengthBytes);
      const p = this.pending.get(h.id);
      this.pending.delete(h.id);
      p?.resolve({ ...h, body });
    }
  }
}

/** Dials the data server on loopback: plaintext with `{ insecure: true }`, else TLS with the given files. */
export function dialData(port: number, tls: PeerTlsConfig | { caFile: string }): Promise<DataClient> {
  return new Promise((resolve, reject) => {
    let socket: Socket;
    if ('insecure' in tls && tls.insecure === true) {
      socket = tcpConnect({ host: '127.0.0.1', port }, () => resolve(new DataClient(socket)));
    } else {
      const files = tls as { caFile: string; certFile?: string; keyFile?: string };
      socket = tlsConnect({
        host: '127.0.0.1', port, servername: 'localhost', ca: readFileSync(files.caFile),
        cert: files.certFile ? readFileSync(files.certFile) : undefined, key: files.keyFile ? readFileSync(files.keyFile) : undefined,
      }, () => resolve(new DataClient(socket)));
    }
    socket.once('error', reject);
  });
}

/** A seeded pseudo-random number generator in [0, 1) (mulberry32): fuzz runs repeat. */
export function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** One to four frames for a bound connection: random bytes, or valid request headers with a few bytes changed, some cut short. */
export function fuzzFrames(rand: () => number): Buffer {
  const valid = [
    encodeRequestHeader({ op: DataOp.WRITE, flags: 0, lengthBytes: 4096, id: 1, offset: 0 }),
    encodeRequestHeader({ op: DataOp.READ, flags: 0, lengthBytes: 4096, id: 2, offset: 4096 }),
    encodeRequestHeader({ op: DataOp.FLUSH, flags: 0, lengthBytes: 0, id: 3, offset: 0 }),
    encodeRequestHeader({ op: DataOp.TRIM, flags: 0, lengthBytes: 8192, id: 4, offset: 8192 }),
    encodeRequestHeader({ op: DataOp.WRITE_ZEROES, flags: 0, lengthBytes: 4096, id: 5, offset: 0 }),
  ];
  const frames: Buffer[] = [];
  for (let n = 1 + Math.floor(rand() * 4); n > 0; n--) {
    const base = Buffer.from(valid[Math.floor(rand() * valid.length)]!);
    if (rand() < 0.3) frames.push(Buffer.from(Array.from({ length: Math.floor(rand() * 80) }, () => Math.floor(rand() * 256))));
    else {
      for (let m = 1 + Math.floor(rand() * 3); m > 0; m--) base[Math.floor(rand() * base.length)] = Math.floor(rand() * 256);
      frames.push(base.subarray(0, rand() < 0.2 ? Math.floor(rand() * base.length) : base.length));
    }
  }
  return Buffer.concat(frames);
}
