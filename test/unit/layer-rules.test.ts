// The layer rules of docs/architecture.md, as `npm run lint` checks them: dependency-cruiser
// with .dependency-cruiser.cjs, run on a fixture tree that breaks them and on src/.
import test from 'ava';
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CONFIG = `${ROOT}.dependency-cruiser.cjs`;
const DEPCRUISE = `${ROOT}node_modules/.bin/depcruise`;

interface Violation {
  from: string;
  to: string;
  rule: { name: string; severity: string };
  cycle?: { name: string }[];
}

/** The exit code of the command `npm run lint` runs, and the violations as JSON (that reporter always exits 0). */
async function cruise(cwd: string): Promise<{ exitCode: number | undefined; violations: Violation[] }> {
  const [lint, json] = await Promise.all([
    execa(DEPCRUISE, ['--config', CONFIG, 'src'], { cwd, reject: false }),
    execa(DEPCRUISE, ['--config', CONFIG, '--output-type', 'json', 'src'], { cwd }),
  ]);
  const out = JSON.parse(json.stdout) as { summary: { violations: Violation[] } };
  return { exitCode: lint.exitCode, violations: out.summary.violations };
}

test('an upward type-only import, a type-only circle and a CLI reaching past the API fail the check', async (t) => {
  const { exitCode, violations } = await cruise(`${ROOT}test/fixtures/layer-rules`);
  t.not(exitCode, 0);
  const found = violations.map((v) => `${v.rule.name} ${v.from} -> ${v.to}`).sort();
  t.deepEqual(found, [
    'cli-only-api src/cli/main.ts -> src/engine/volume.ts',
    'layer-engine src/engine/volume.ts -> src/cluster/volume-doc.ts',
    'no-circular src/engine/nbd/connection.ts -> src/engine/nbd/runner.ts',
  ]);
  t.true(violations.every((v) => v.rule.severity === 'error'));
});

test('src/ keeps the layer rules and has no circles', async (t) => {
  const { exitCode, violations } = await cruise(ROOT);
  t.deepEqual(violations.map((v) => `${v.rule.name} ${v.from} -> ${v.to}`), []);
  t.is(exitCode, 0);
});
