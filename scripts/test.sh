#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the Debian and npm dependencies,
# then runs every stage (scripts/run-tests.sh, which `npm test` runs too) and prints the
# final count. Exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || { echo "dependency installation failed"; exit 1; }
exec scripts/run-tests.sh
