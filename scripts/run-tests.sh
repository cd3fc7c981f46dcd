#!/usr/bin/env bash
# The stages of the test suite (what `npm test` and scripts/test.sh run): type check, lint,
# build, unit, integration and kernel VM tests, each to the end even when an earlier one
# failed. Prints a final count of tests passed, failed, skipped and todo plus the stages
# that failed, and exits non-zero when anything failed. With CI=true a test whose
# prerequisite is missing fails instead of skipping (test/helpers/prereq.ts), so a CI run
# cannot pass without running everything. Installs nothing: scripts/test.sh does that first.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed_stages=()

# stage <name> <command...>: runs it, output to the terminal and (for the count) the log.
stage() {
  local name=$1
  shift
  echo "== $name"
  "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed_stages+=("$name")
}

stage typecheck npm run --silent typecheck
stage lint npm run --silent lint
stage build npm run --silent build
# ava's TAP reporter writes one line per test (and per crashed file, failed hook, uncaught
# exception or unhandled rejection, as "not ok"), which is what is counted below.
stage unit npm run --silent test:unit -- --tap
if [[ " ${failed_stages[*]} " == *" build "* ]]; then
  echo "== integration, vm: not run (the build failed; they run the built daemon)"
  failed_stages+=("integration (not run)" "vm (not run)")
else
  stage integration npm run --silent test:integration -- --tap
  stage vm npm run --silent test:vm -- --tap
fi

passed=$(grep -E '^ok [0-9]+ ' "$log" | grep -Evc '# (SKIP|TODO)$')
failed=$(grep -E '^not ok [0-9]+ ' "$log" | grep -Evc '# TODO$')
skipped=$(grep -Ec '^ok [0-9]+ .*# SKIP$' "$log")
todo=$(grep -Ec '^(not )?ok [0-9]+ .*# TODO$' "$log")
echo "tests: $passed passed, $failed failed, $skipped skipped, $todo todo"
if [ ${#failed_stages[@]} -gt 0 ]; then
  echo "failed stages: ${failed_stages[*]}"
  exit 1
fi
[ "$failed" -eq 0 ] || exit 1
