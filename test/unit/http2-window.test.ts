/**
 * The peer port's HTTP/2 windows are widened on the grpc-js version we ship: a client
 * sees the server's 16 MiB initial stream window in its SETTINGS. If a grpc-js upgrade
 * moves the internals this relies on, this test says so (the daemon would only warn).
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import * as http2 from 'node:http2';
import { PEER_WINDOW_BYTES, widenConnectionWindows, widenStreamWindows } from '../../src/rpc/http2-window.js';

test('a grpc-js server announces the wide stream window and opens a wide connection window', async (t) => {
  const server = new grpc.Server();
  t.true(widenStreamWindows(server));
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  t.teardown(() => server.forceShutdown());
  t.true(widenConnectionWindows(server));
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => undefined); // the server's shutdown at teardown ends it with GOAWAY
  t.teardown(() => session.close());
  await new Promise<void>((resolve) => session.once('remoteSettings', () => resolve()));
  t.is(session.remoteSettings.initialWindowSize, PEER_WINDOW_BYTES);
  // The connection window arrives as a WINDOW_UPDATE right after the settings.
  for (let i = 0; i < 100 && (session.state.remoteWindowSize ?? 0) <= 65_535; i++) await new Promise((r) => setTimeout(r, 10));
  t.true((session.state.remoteWindowSize ?? 0) >= PEER_WINDOW_BYTES - 65_535, `connection window ${session.state.remoteWindowSize}`);
});
