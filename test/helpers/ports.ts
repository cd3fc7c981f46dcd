/**
 * Ports for test daemons and etcd that nothing else takes in the meantime. A port from
 * `listen(0)` lies in the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999
 * by default), which every outgoing connection also draws from: between our probe and the
 * daemon's own bind, a client socket of another daemon or of etcd may get it (EADDRINUSE at
 * start-up). These ports come from below that range, starting at a random point per
 * process, each checked free by binding it.
 */
import { createServer } from 'node:net';

const LOW = 20_000;
const HIGH = 32_000;
let next = LOW + Math.floor(Math.random() * (HIGH - LOW));

function tryListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A free loopback port outside the ephemeral range; never the same one twice in this process. */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < HIGH - LOW; tries++) {
    const port = next;
    next = next + 1 >= HIGH ? LOW : next + 1;
    if (await tryListen(port)) return port;
  }
  throw new Error(`no free loopback port between ${LOW} and ${HIGH}`);
}
