/**
 * A fake Kubernetes API server on 127.0.0.1 for the pods/exec transport's tests: HTTPS with
 * a test certificate (or plain HTTP), JSON GETs answered by the test, and the exec
 * WebSocket upgrade of the real protocol (subprotocols v5/v4.channel.k8s.io, one channel
 * byte before each message, the exit status as a metav1.Status on channel 3).
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { TestFn } from 'ava';
import { WebSocketServer, type WebSocket } from 'ws';
import { silentLogger } from '../../src/common/log.js';
import { KubeApi, type KubeApiOptions } from '../../src/snapshot/kube-api.js';
import { KubeExecClient } from '../../src/snapshot/kube-exec.js';
import { makeTestPki, type TestPki } from './tls.js';

export const V5 = 'v5.channel.k8s.io';
export const V4 = 'v4.channel.k8s.io';

/** What the fake saw of one exec upgrade. */
export interface ExecPeer {
  ws: WebSocket;
  path: string;
  query: URLSearchParams;
  authorization: string | undefined;
  /** The subprotocols the client offered, in its order. */
  offered: string[];
  /** The subprotocol the fake chose. */
  protocol: string;
  /** "message:<hex>" for each message received, then "close". */
  events: string[];
  /** Settles when the client's connection is gone. */
  closed: Promise<void>;
}

export interface GetRequest { path: string; rawQuery: string; authorization: string | undefined }

export interface FakeKubeApiOptions {
  /** Serve HTTPS with this certificate and key (PEM files); plain HTTP without. */
  tls?: { certFile: string; keyFile: string };
  /** The subprotocols the fake speaks, best first. */
  protocols?: string[];
  /** Answers a JSON GET: the HTTP status and the body (serialised as JSON). */
  onGet?: (req: GetRequest) => { status: number; body: unknown } | undefined;
  /** Refuses the exec upgrade with this HTTP status and body instead of accepting it. */
  refuseExec?: { status: number; body: unknown };
  /** Plays the server's side of an accepted exec session. */
  onExec?: (peer: ExecPeer) => void;
}

export interface FakeKubeApi {
  url: string;
  port: number;
  gets: GetRequest[];
  execs: ExecPeer[];
  /** Resolves with the next exec session the fake accepts. */
  nextExec(): Promise<ExecPeer>;
  close(): Promise<void>;
}

/** One message of the channel protocol. */
export function frame(channel: number, data: string | Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Buffer.from([channel]), typeof data === 'string' ? Buffer.from(data) : data]);
}

export const STATUS_SUCCESS = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success' };

export function statusExit(code: number): Record<string, unknown> {
  return {
    kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason: 'NonZeroExitCode',
    message: `command terminated with non-zero exit code: exit status ${code}`,
    details: { causes: [{ reason: 'ExitCode', message: String(code) }] },
  };
}

export function statusFrame(status: unknown): Buffer {
  return frame(3, JSON.stringify(status));
}

function rawResponse(socket: Socket, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json\r\n`
    + `Content-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
}

export async function startFakeKubeApi(options: FakeKubeApiOptions = {}): Promise<FakeKubeApi> {
  const protocols = options.protocols ?? [V5, V4];
  const gets: GetRequest[] = [];
  const execs: ExecPeer[] = [];
  const waiters = new Map<number, (peer: ExecPeer) => void>();
  let taken = 0;
  const sockets = new Set<Socket>();
  const wss = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered) => protocols.find((p) => offered.has(p)) ?? false,
  });
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://fake');
    const get = { path: url.pathname, rawQuery: url.search.slice(1), authorization: req.headers.authorization };
    gets.push(get);
    const answer = options.onGet?.(get);
    if (!answer) return; // never answers: a stuck server
    res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(answer.body));
  };
  const server = options.tls
    ? https.createServer({ cert: readFileSync(options.tls.certFile), key: readFileSync(options.tls.keyFile) }, onRequest)
    : http.createServer(onRequest);
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('secureConnection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    if (options.refuseExec) return rawResponse(socket, options.refuseExec.status, options.refuseExec.body);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const url = new URL(req.url ?? '/', 'http://fake');
      const events: string[] = [];
      ws.on('message', (data: Buffer) => events.push(`message:${data.toString('hex')}`));
      const closed = new Promise<void>((resolve) => ws.on('close', () => { events.push('close'); resolve(); }));
      const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()).filter(Boolean);
      const peer: ExecPeer = { ws, path: url.pathname, query: url.searchParams, authorization: req.headers.authorization, offered, protocol: ws.protocol, events, closed };
      execs.push(peer);
      options.onExec?.(peer);
      waiters.get(execs.length - 1)?.(peer);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    gets,
    execs,
    nextExec: () => {
      const i = taken++;
      const peer = execs[i];
      return peer ? Promise.resolve(peer) : new Promise<ExecPeer>((resolve) => waiters.set(i, resolve));
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export const TEST_TOKEN = 'test-token-abc';

export interface FakeKubeSuite {
  /** The test PKI (made before the file's tests): the fake servers' CA. */
  readonly pki: TestPki;
  /** The fake API server's certificate, signed by `pki`. */
  readonly serverTls: { certFile: string; keyFile: string };
  /** A fake API server for one test, closed at its end, and a client that trusts it. */
  setup(t: { teardown(fn: () => unknown): void }, options?: FakeKubeApiOptions, api?: Partial<KubeApiOptions>): Promise<{ fake: FakeKubeApi; client: KubeExecClient }>;
}

/** Registers a test file's PKI (before all, cleaned up after all) for its fake API servers. */
export function fakeKubeSuite(test: TestFn): FakeKubeSuite {
  let pki: TestPki | undefined;
  let serverTls: { certFile: string; keyFile: string } | undefined;
  test.before(async () => {
    pki = await makeTestPki();
    serverTls = await pki.node('kube-apiserver');
  });
  test.after.always(() => pki?.cleanup());
  const suite: FakeKubeSuite = {
    get pki() {
      if (!pki) throw new Error('the test PKI is made in test.before');
      return pki;
    },
    get serverTls() {
      if (!serverTls) throw new Error('the test PKI is made in test.before');
      return serverTls;
    },
    async setup(t, options = {}, api = {}) {
      const fake = await startFakeKubeApi({ tls: suite.serverTls, ...options });
      t.teardown(() => fake.close());
      const client = new KubeExecClient(new KubeApi({ server: fake.url, token: TEST_TOKEN, caFile: suite.pki.caFile, ...api }, silentLogger()), silentLogger());
      return { fake, client };
    },
  };
  return suite;
}

