import anyTest, { type TestFn } from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { Code, StorageError } from '../../src/common/errors.js';
import { loadPeerTls, peerChannelCredentials, peerServerCredentials } from '../../src/rpc/tls.js';
import { makeTestPki, type TestPki } from '../helpers/tls.js';

const test = anyTest as TestFn<{ pki: TestPki }>;
test.before(async (t) => {
  t.context = { pki: await makeTestPki() };
});
test.after.always((t) => t.context.pki?.cleanup());

function codeOf(fn: () => unknown): Code | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as StorageError).code;
  }
}

test('valid files load; bad ones are refused with a message naming the file', async (t) => {
  const { pki } = t.context;
  const good = await pki.node('node-a');
  t.is(loadPeerTls(good).subject, 'node-a');
  t.is(codeOf(() => loadPeerTls({ ...good, certFile: join(pki.dir, 'missing.crt') })), Code.FAILED_PRECONDITION);
  const other = await pki.node('node-b');
  t.throws(() => loadPeerTls({ ...good, keyFile: other.keyFile }), { message: /does not belong to the certificate/ });
  const rogue = await pki.rogue('intruder');
  t.throws(() => loadPeerTls(rogue), { message: /is not signed by the CA/ });
  const junk = join(pki.dir, 'junk.pem');
  writeFileSync(junk, 'not a certificate');
  t.throws(() => loadPeerTls({ ...good, certFile: junk }), { message: /holds no valid PEM certificate/ });
  t.throws(() => loadPeerTls(good, Date.now() + 3 * 86400_000), { message: /is not valid now/ });
});

test('plaintext only with the explicit flag, and then with a warning', (t) => {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(s) });
  peerServerCredentials({ insecure: true }, log);
  peerChannelCredentials({ insecure: true }, log);
  t.is(lines.length, 2);
  t.regex(lines[0]!, /peer TLS is off/);
});
