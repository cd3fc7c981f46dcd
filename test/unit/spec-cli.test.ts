// `cairnctl spec` as a user runs it: the default output is the committed daemonset.yaml,
// bad or contradictory flags exit 1 naming the flag and print no YAML, and every flag the
// generated pods pass is one their program has (cairnd: the settings table; each CSI
// sidecar: the flags of the version named).
import test from 'ava';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { SETTINGS } from '../../src/common/settings.js';
import { renderSpec } from '../../src/cli/spec/generate.js';
import { parseSpecOptions } from '../../src/cli/spec/options.js';
import { DEFAULT_SIDECARS, SIDECAR_FLAGS, SIDECAR_NAMES } from '../../src/cli/spec/sidecars.js';

const ROOT = join(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');

async function cairnctl(...args: string[]) {
  const script = `import { main } from ${JSON.stringify(MAIN)}; await main(['node', 'cairnctl', ...process.argv.slice(1)]);`;
  return execa('node', ['--import', 'tsx', '--input-type=module', '-e', script, '--', ...args], { reject: false });
}

test('daemonset.yaml is what `cairnctl spec` prints with no flags', async (t) => {
  const r = await cairnctl('spec');
  t.is(r.exitCode, 0, r.stderr);
  const committed = readFileSync(join(ROOT, 'daemonset.yaml'), 'utf8');
  t.true(r.stdout === committed.trimEnd(), 'daemonset.yaml has drifted from `cairnctl spec`: regenerate it with `npm run --silent spec:daemonset` and commit it');
});

const BAD: [string[], string, RegExp][] = [
  [['--etcd', 'internal', '--etcd-endpoints', 'http://e:2379'], '--etcd-endpoints', /contradicts --etcd internal/],
  [['--etcd', 'external'], '--etcd', /needs --etcd-endpoints/],
  [['--etcd-endpoints', 'etcd:2379'], '--etcd-endpoints', /not an etcd client URL/],
  [['--etcd-endpoints', 'http://e:2379', '--etcd-storage-class', 'fast'], '--etcd-storage-class', /only applies with --etcd internal/],
  [['--pool-devices', '/dev/sdb', '--pool-device-glob', '/dev/sd*'], '--pool-device-glob', /not both/],
  [['--pool-devices', 'sdb'], '--pool-devices', /not a \/dev path/],
  [['--pool-device-glob', '/dev/sd*; rm -rf /'], '--pool-device-glob', /no spaces or shell syntax/],
  [['--default-replicas', '4'], '--default-replicas', /write 1, 2 or 3/],
  [['--namespace', 'Cairn'], '--namespace', /not a namespace name/],
  [['--peer-tls', 'maybe'], '--peer-tls', /bootstrap, cert-manager, provided, insecure/],
  [['--peer-tls', 'insecure', '--peer-ca-secret', 'x'], '--peer-ca-secret', /contradicts --peer-tls insecure/],
  [['--no-snapshots', '--group-snapshots'], '--group-snapshots', /needs snapshots/],
  [['--toleration', 'a=b:Sometimes'], '--toleration', /Effect is NoSchedule/],
  [['--node-selector', 'disk'], '--node-selector', /key=value/],
  [['--sidecar-image', 'mounter=x:1'], '--sidecar-image', /name one of provisioner/],
  [['--zone-label', 'bad label'], '--zone-label', /not a label key/],
];

for (const [args, flag, why] of BAD) {
  test(`cairnctl spec ${args.join(' ')}: exits 1 naming ${flag}, prints no YAML`, async (t) => {
    const r = await cairnctl('spec', ...args);
    t.is(r.exitCode, 1);
    t.true(r.stderr.startsWith(`cairnctl: ${flag} `), r.stderr);
    t.regex(r.stderr, why);
    t.is(r.stdout, '');
  });
}

interface Container { name: string; image: string; command?: string[]; args?: string[] }
function containers(yaml: string): Container[] {
  const docs = parseAllDocuments(yaml).map((d) => d.toJS() as { kind: string; spec?: { template?: { spec?: { containers?: Container[] } } } });
  return docs.flatMap((d) => d.spec?.template?.spec?.containers ?? []);
}

test('every cairnd flag in the spec is a setting, and every sidecar flag is one its default version has', (t) => {
  const yaml = renderSpec(parseSpecOptions({ snapshots: true, groupSnapshots: true, poolDevices: '/dev/sdb', peerTls: 'insecure' }), []);
  const settingFlags = new Set(SETTINGS.map((s) => s.flag.split(' ')[0]));
  const byImage = new Map(SIDECAR_NAMES.map((n) => [DEFAULT_SIDECARS[n], n]));
  let sidecarsSeen = 0;
  for (const c of containers(yaml)) {
    const names = (c.args ?? []).map((a) => a.split('=')[0]!);
    const sidecar = byImage.get(c.image);
    if (sidecar) {
      sidecarsSeen++;
      for (const f of names) t.true(SIDECAR_FLAGS[sidecar].includes(f), `${c.name} (${c.image}) has no flag ${f}`);
    } else if (c.name === 'cairnd') {
      for (const f of names) t.true(settingFlags.has(f), `cairnd has no flag ${f}`);
    }
  }
  t.is(sidecarsSeen, SIDECAR_NAMES.length, 'every sidecar is deployed once');
});

test('the node daemon serves probes and metrics on the pod address, not loopback, and peers on 9471/9472', (t) => {
  const node = containers(renderSpec(parseSpecOptions({}), [])).find((c) => c.name === 'cairnd' && c.args?.includes('--role=node'));
  t.truthy(node);
  t.true(node!.args!.includes('--http-listen=0.0.0.0:9470'));
  t.true(node!.args!.includes('--peer-listen=0.0.0.0:9471'));
  t.true(node!.args!.includes('--data-listen=0.0.0.0:9472'));
});

test('the header names the flags, and running them again gives the same spec', async (t) => {
  const first = await cairnctl('spec', '--pool-devices', '/dev/sdb,/dev/sdc', '--toleration', 'storage=only:NoSchedule', '--no-snapshots', '--zone-label', '');
  t.is(first.exitCode, 0, first.stderr);
  const header = /^# .*generated by: cairnctl spec (.*)$/m.exec(first.stdout)?.[1] ?? '';
  t.is(header, "--no-snapshots --pool-devices=/dev/sdb,/dev/sdc --toleration=storage=only:NoSchedule --zone-label=''");
  const again = await cairnctl('spec', '--pool-devices=/dev/sdb,/dev/sdc', '--toleration=storage=only:NoSchedule', '--zone-label=', '--no-snapshots');
  t.is(again.stdout, first.stdout);
});
