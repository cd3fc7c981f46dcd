#!/usr/bin/env bash
# One command to a working single-node Cairn: installs what is missing, starts cairnd on
# embedded defaults under ./.cairn (file-backed pool, SQLite store), creates a demo volume
# and serves it over NBD.
#   scripts/quickstart.sh          start (idempotent)
#   scripts/quickstart.sh stop     stop cairnd (flushes and closes every export)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="$PWD/.cairn"
SOCK="$DATA_DIR/cairnd.sock"
export CAIRN_API_SOCKET="$SOCK"
VOLUME="${CAIRN_DEMO_VOLUME:-demo}"
SIZE="${CAIRN_DEMO_SIZE:-10GiB}"
ctl() { node bin/cairnctl.js "$@"; }

if [ "${1:-}" = "stop" ]; then
  if [ -f "$DATA_DIR/cairnd.pid" ] && kill "$(cat "$DATA_DIR/cairnd.pid")" 2>/dev/null; then
    for _ in $(seq 1 100); do [ -f "$DATA_DIR/cairnd.pid" ] || break; sleep 0.1; done
    echo "cairnd stopped"
  else
    echo "cairnd is not running"
  fi
  exit 0
fi

scripts/install-deps.sh --runtime
mkdir -p "$DATA_DIR"
if ! ctl status >/dev/null 2>&1; then
  echo "starting cairnd (data in $DATA_DIR, log in $DATA_DIR/cairnd.log)"
  setsid node bin/cairnd.js --data-dir "$DATA_DIR" --log-format json >>"$DATA_DIR/cairnd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do ctl status >/dev/null 2>&1 && break; sleep 0.2; done
  ctl status >/dev/null || { echo "cairnd did not start; see $DATA_DIR/cairnd.log"; tail -n 20 "$DATA_DIR/cairnd.log"; exit 1; }
fi
ctl volume create "$VOLUME" --size "$SIZE" >/dev/null
URI=$(ctl volume export "$VOLUME")
ctl status
echo
ctl volume list
cat <<MSG

Volume "$VOLUME" is served at:
  $URI

Try it:
  export CAIRN_API_SOCKET=$SOCK
  node bin/cairnctl.js volume inspect $VOLUME
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '$URI'

Put a filesystem on it (needs root; this kernel has no nbd driver, so nbdfuse + loop):
  mkdir -p /tmp/cairn-fuse /mnt/$VOLUME
  nbdfuse /tmp/cairn-fuse '$URI' &
  LOOP=\$(losetup -f --show --direct-io=on /tmp/cairn-fuse/nbd)
  mkfs.ext4 -q \$LOOP && mount \$LOOP /mnt/$VOLUME
  # ... and to undo: umount /mnt/$VOLUME; losetup -d \$LOOP; fusermount3 -u /tmp/cairn-fuse
Or let cairnd attach it (/dev/nbdX where the kernel has nbd, else nbdfuse + loop; needs root):
  node bin/cairnctl.js volume attach $VOLUME    # prints the device; volume detach $VOLUME undoes it

Stop cairnd with: scripts/quickstart.sh stop
MSG
