// Loaded into the cairnd processes of a benchmark through NODE_OPTIONS="--import <this file>"
// (node refuses --cpu-prof in NODE_OPTIONS, and the cluster harness starts cairnd itself).
// It does nothing unless CAIRN_BENCH_PROF_DIR is set and the script is cairnd. Then SIGUSR2
// starts a V8 CPU profile of the JS thread, and the next SIGUSR2 stops it and writes
// <dir>/<node-name>.<pid>.<n>.cpuprofile (written under a temporary name, then renamed, so a
// reader never sees half a file). A profile still running at exit is written too.
import { renameSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import process from 'node:process';

const dir = process.env.CAIRN_BENCH_PROF_DIR;
const script = process.argv[1] ?? '';
if (dir && script.endsWith('cairnd.js')) {
  const at = process.argv.lastIndexOf('--node-name');
  const node = at > 0 ? process.argv[at + 1] : 'cairnd';
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
