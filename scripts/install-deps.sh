#!/usr/bin/env bash
# Installs what Cairn needs on a Debian machine: the Debian packages (only those missing)
# and the npm dependencies (which build the native addon and compile TypeScript).
#   scripts/install-deps.sh           runtime + test packages
#   scripts/install-deps.sh --runtime packages the quick start needs
set -euo pipefail
cd "$(dirname "$0")/.."

runtime=(qemu-utils libnbd-bin fuse3 e2fsprogs xfsprogs util-linux thin-provisioning-tools)
testing=(nbdkit fio btrfs-progs etcd-server postgresql)
packages=("${runtime[@]}")
[ "${1:-}" = "--runtime" ] || packages+=("${testing[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci when node_modules is missing or older than the lock file; it builds native/ and dist/.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "installing npm dependencies (builds the native addon and better-sqlite3; about a minute)"
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f native/build/Release/cairn_native.node ]; then
  npx --no-install node-gyp rebuild --directory native --nodedir=/usr >/dev/null
fi
npm run --silent build
