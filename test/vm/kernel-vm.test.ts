/**
 * The kernel tests (test/kernel/**), run inside a qemu guest with a Debian kernel that has
 * device-mapper, dm-thin-pool and nbd (the host's kernel has neither). One boot per run;
 * each test in the guest becomes a test here with the guest's name and output, so a
 * failure in the guest is a named failure on the host, not a timeout.
 *
 *   npm run test:vm                                         all kernel tests
 *   CAIRN_VM_FILES=test/kernel/dm-pool.test.ts npm run test:vm   a chosen set
 *   CAIRN_SKIP_VM=1 npm test                                skips the VM (fails with CI=true)
 *
 * Needs root (apt-get, qemu, virtiofsd); see docs/pool-dm.md "Kernel tests".
 */
import test from 'ava';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compileGuestTests, prepareVm, REPO, runInVm, type VmRunResult } from './vm-runner.js';
import { parseTap } from './tap.js';
import { missingRoot, NOT_APPLICABLE, prerequisitesMet, registerMissing } from '../helpers/prereq.js';

/** The whole VM run (boot, tests, power-off) is killed after this; normal runs take a few minutes. */
const DEADLINE_MS = 15 * 60_000;
const TAIL_LINES = 60;

function kernelTestFiles(): string[] {
  const chosen = process.env.CAIRN_VM_FILES;
  if (chosen) return chosen.split(',').map((f) => f.trim()).filter(Boolean);
  return readdirSync(join(REPO, 'test/kernel')).filter((f) => f.endsWith('.test.ts')).sort().map((f) => `test/kernel/${f}`);
}

function tail(text: string, lines = TAIL_LINES): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Why the VM cannot run here (with CI=true each of these fails the run: see helpers/prereq.ts). */
function whyNot(): string | undefined {
  if (process.env.CAIRN_SKIP_VM === '1') return 'CAIRN_SKIP_VM=1 is set: unset it to run the kernel tests';
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'needs Linux on x86-64';
  return missingRoot('apt-get, qemu, virtiofsd');
}

const skipReason = whyNot();
let run: VmRunResult | undefined;
let setupError: unknown;
const startedAt = Date.now();
const timings: Record<string, number> = {};
if (skipReason === undefined) {
  try {
    const { kernelDir, setupMs } = await prepareVm();
    timings.setupMs = setupMs;
    timings.compileMs = (await compileGuestTests()).compileMs;
    run = await runInVm(kernelDir, { files: kernelTestFiles(), deadlineMs: DEADLINE_MS });
    timings.vmMs = run.durationMs;
  } catch (err) {
    setupError = err;
  }
}

if (!prerequisitesMet('kernel tests in a VM', skipReason)) {
  // registered: a skip, or a failure under CI=true
} else if (setupError !== undefined || run === undefined) {
  test('kernel VM: set up and boot', (t) => {
    t.fail(`the kernel VM could not be prepared: ${setupError instanceof Error ? setupError.stack ?? setupError.message : String(setupError)}`);
  });
} else {
  const result = run;
  const results = parseTap(result.tap);
  for (const r of results) {
    const title = `guest › ${r.title}`;
    // A guest test left out for a missing prerequisite counts as one here (a failure under
    // CI=true); one that does not apply to the guest's kernel by design stays a skip.
    if (r.status === 'skipped' && r.title.includes(NOT_APPLICABLE)) test.skip(title, () => undefined);
    else if (r.status === 'skipped') registerMissing(title, 'skipped inside the kernel VM');
    else if (r.status === 'todo') test.todo(title);
    else {
      test(title, (t) => {
        if (r.output) t.log(r.output.trimEnd());
        if (r.status === 'failed') t.fail(`failed inside the VM (kernel ${result.kernel})`);
        else t.pass();
      });
    }
  }
  test('kernel VM: the guest ran every file and exited cleanly', (t) => {
    t.log(`kernel ${result.kernel}; setup ${timings.setupMs} ms, compile ${timings.compileMs} ms, VM ${timings.vmMs} ms, total ${Date.now() - startedAt} ms`);
    const problems: string[] = [];
    if (result.timedOut) problems.push(`the VM was killed after ${DEADLINE_MS} ms (the test running then is the one after the last result above)`);
    else if (result.exitCode === null) problems.push('the guest wrote no exit code (it failed before or while starting ava)');
    else if (result.exitCode !== 0 && !results.some((r) => r.status === 'failed')) problems.push(`ava exited ${result.exitCode} in the guest with no failed test`);
    if (results.length === 0) problems.push('the guest reported no tests');
    if (problems.length === 0) return t.pass();
    t.log(`guest module setup:\n${result.setupLog || '(empty)'}`);
    t.log(`guest ava stderr:\n${tail(result.stderr) || '(empty)'}`);
    t.log(`guest console:\n${tail(result.console)}`);
    t.log(`guest dmesg (tail):\n${tail(result.dmesg, 30)}`);
    t.fail(problems.join('; '));
  });
}
