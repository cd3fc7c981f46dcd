#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the Debian and npm dependencies,
# then type check, lint, build, unit tests and integration tests (npm test). Prints a
# final "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || { echo "dependency installation failed"; exit 1; }
log=$(mktemp)
npm test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '[0-9]+ tests? passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ tests? failed' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -Eo '[0-9]+ tests? skipped' "$log" | awk '{s+=$1} END {print s+0}')
rm -f "$log"
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
