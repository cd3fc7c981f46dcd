/**
 * The missing-prerequisite helper (test/helpers/prereq.ts), against a fake registrar: outside
 * CI a missing prerequisite is a skip naming it; with CI=true it is a failing test naming it.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { inCi, missingExt4OnlineResize, onlyWhere, prerequisitesMet, requiring, type Registrar } from '../helpers/prereq.js';

interface Registered { title: string; kind: 'test' | 'skip'; run: () => Promise<string[]> }

/** Records what is registered; `run` calls the implementation with a fake t and returns its failures. */
function fakeRegistrar(): { registrar: Registrar; registered: Registered[] } {
  const registered: Registered[] = [];
  const record = (kind: Registered['kind']) => (title: string, impl: (t: ExecutionContext) => unknown) => {
    registered.push({
      title, kind, run: async () => {
        const failures: string[] = [];
        await impl({ fail: (message?: string) => failures.push(message ?? '') } as unknown as ExecutionContext);
        return failures;
      },
    });
  };
  const registrar = Object.assign(record('test'), { skip: record('skip') }) as unknown as Registrar;
  return { registrar, registered };
}

const MISSING = 'no "etcd" binary: install Debian\'s etcd-server';

test('CI is CI=true or CI=1', (t) => {
  t.true(inCi({ CI: 'true' }));
  t.true(inCi({ CI: '1' }));
  t.false(inCi({}));
  t.false(inCi({ CI: 'false' }));
});

test('outside CI: a missing prerequisite skips, with the reason in the title', async (t) => {
  const { registrar, registered } = fakeRegistrar();
  const real = (): void => t.fail('the real test must not be registered');
  requiring(MISSING, real, registrar, {})('replication', () => t.fail('must not run'));
  t.false(prerequisitesMet('etcd store tests', MISSING, registrar, {}));
  t.deepEqual(registered.map((r) => [r.kind, r.title]), [
    ['skip', `replication (skipped: ${MISSING})`],
    ['skip', `etcd store tests (skipped: ${MISSING})`],
  ]);
});

test('CI=true: a missing prerequisite is a failing test naming it and how to install it', async (t) => {
  const { registrar, registered } = fakeRegistrar();
  requiring(MISSING, () => t.fail('the real test must not be registered'), registrar, { CI: 'true' })('replication', () => undefined);
  t.false(prerequisitesMet('etcd store tests', MISSING, registrar, { CI: 'true' }));
  t.deepEqual(registered.map((r) => [r.kind, r.title]), [
    ['test', `replication (missing prerequisite: ${MISSING})`],
    ['test', `etcd store tests (missing prerequisite: ${MISSING})`],
  ]);
  for (const r of registered) t.deepEqual(await r.run(), [`CI=true: a missing prerequisite is a failure, not a skip. Missing: ${MISSING}`]);
});

test('nothing missing: the real registration, in both modes; nothing else is registered', (t) => {
  for (const env of [{}, { CI: 'true' }]) {
    const { registrar, registered } = fakeRegistrar();
    const titles: string[] = [];
    requiring(undefined, (title) => titles.push(title), registrar, env)('replication', () => undefined);
    t.true(prerequisitesMet('etcd store tests', null, registrar, env));
    t.deepEqual(titles, ['replication']);
    t.deepEqual(registered, []);
  }
});

test('not applicable here (by design, not missing): a skip in both modes', (t) => {
  const { registrar, registered } = fakeRegistrar();
  onlyWhere(false, 'this kernel has no device-mapper', () => t.fail('must not register'), registrar)('dm round trip', () => undefined);
  t.deepEqual(registered.map((r) => [r.kind, r.title]), [['skip', 'dm round trip (not applicable here: this kernel has no device-mapper)']]);
});

test('ext4 online resize: present with CAP_SYS_RESOURCE (bit 24 of CapEff), missing without it, and the reason says so', (t) => {
  t.is(missingExt4OnlineResize('Name:\tnode\nCapEff:\t000001ffffffffff\n'), undefined);
  const missing = missingExt4OnlineResize('Name:\tnode\nCapEff:\t000001fffeffffff\n');
  t.regex(missing ?? '', /CAP_SYS_RESOURCE/);
  t.truthy(missingExt4OnlineResize('Name:\tnode\n'), 'no CapEff line: missing');
});
