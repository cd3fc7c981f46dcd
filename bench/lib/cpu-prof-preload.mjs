// Loaded into the cairnd processes of a benchmark through NODE_OPTIONS="--import <this file>"
// (node refuses --cpu-prof in NODE_OPTIONS, and the cluster harness starts cairnd itself).
// It does nothing in other node processes (cairnctl), and nothing unless asked:
//
// - CAIRN_BENCH_PROF_DIR=<dir>: SIGUSR2 starts a V8 CPU profile of the JS thread; the next
//   SIGUSR2 stops it and writes <dir>/<node-name>.<pid>.<n>.cpuprofile (under a temporary
//   name first, so a reader never sees half a file). A profile running at exit is written.
// - CAIRN_BENCH_H2_WINDOW=<bytes>: a diagnostic experiment, not Cairn's code. Every HTTP/2
//   server and client session of the process (grpc-js: the replica service, the engine's
//   replica clients, etcd) advertises <bytes> as its stream window and widens its
//   connection window to <bytes>, instead of node's 64 KiB default that grpc-js's server
//   keeps. It shows what flow control costs the replication data path.
import { renameSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import process from 'node:process';

const isCairnd = (process.argv[1] ?? '').endsWith('cairnd.js');

function nodeName() {
  const at = process.argv.lastIndexOf('--node-name');
  return at > 0 ? process.argv[at + 1] : 'cairnd';
}

function installProfiler(dir) {
  const node = nodeName();
  let session;
  let written = 0;
  const start = () => {
    session = new Session();
    session.connect();
    session.post('Profiler.enable');
    session.post('Profiler.start');
  };
  const stop = () => {
    const s = session;
    session = undefined;
    // A session on the main thread answers synchronously, so this also works in 'exit'.
    s.post('Profiler.stop', (err, result) => {
      if (!err) {
        const path = join(dir, `${node}.${process.pid}.${++written}.cpuprofile`);
        writeFileSync(`${path}.tmp`, JSON.stringify(result.profile));
        renameSync(`${path}.tmp`, path);
      }
      s.disconnect();
    });
  };
  process.on('SIGUSR2', () => (session ? stop() : start()));
  process.on('exit', () => {
    if (session) stop();
  });
}

function widenHttp2Windows(windowBytes) {
  const widen = (session) => {
    try {
      session.setLocalWindowSize(windowBytes);
    } catch {
      // a session already closing
    }
  };
  const withWindow = (options) => ({ ...options, settings: { ...options?.settings, initialWindowSize: windowBytes } });
  for (const name of ['createServer', 'createSecureServer']) {
    const original = http2[name];
    http2[name] = function (options, ...rest) {
      const server = typeof options === 'function' ? original.call(this, withWindow({}), options, ...rest) : original.call(this, withWindow(options), ...rest);
      server.on('session', widen);
      return server;
    };
  }
  const connect = http2.connect;
  http2.connect = function (authority, options, ...rest) {
    const session = typeof options === 'function' ? connect.call(this, authority, withWindow({}), options, ...rest) : connect.call(this, authority, withWindow(options), ...rest);
    session.once('connect', () => widen(session));
    return session;
  };
}

if (isCairnd) {
  const dir = process.env.CAIRN_BENCH_PROF_DIR;
  if (dir) installProfiler(dir);
  const windowBytes = Number(process.env.CAIRN_BENCH_H2_WINDOW ?? 0);
  if (windowBytes > 0) widenHttp2Windows(windowBytes);
}
