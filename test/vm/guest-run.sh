#!/bin/sh
# PID 1 of the kernel-test VM, after the initramfs switch_rooted into the overlay of the
# host's /. Argument: the result share's path. Reads $share/env.sh (written by the host:
# PATH, REPO, GUEST_JS, MODULES, FILES), loads the kernel modules the tests need, runs ava on the
# kernel test files as root with the TAP reporter into $share/tap.txt, stores its exit
# code in $share/exit-code and powers off. Nothing here is timed.
share=$1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# A fresh /tmp, unless the checkout (and with it the share) lives under /tmp: a tmpfs there
# would hide it. The overlay root is writable anyway (its upper layer is a tmpfs).
case "$share" in
  /tmp/*) ;;
  *) mount -t tmpfs -o mode=1777 tmpfs /tmp ;;
esac
mount -t tmpfs tmpfs /run
. "$share/env.sh"
finish() {
  echo "$1" > "$share/exit-code.tmp" && mv "$share/exit-code.tmp" "$share/exit-code"
  dmesg > "$share/dmesg.txt" 2>&1
  sync
  /bin/busybox poweroff -f
}
{
  mkdir -p /lib/modules && mount --bind "$MODULES" /lib/modules &&
  for m in dm-thin-pool dm-snapshot dm-log-writes nbd loop; do
    case "$m" in
      nbd) modprobe nbd nbds_max=16 ;;
      loop) modprobe loop max_loop=32 ;;
      *) modprobe "$m" ;;
    esac || { echo "modprobe $m failed"; exit 1; }
  done
} > "$share/setup.txt" 2>&1 || finish 125
hostname cairn-vm
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null
cd "$GUEST_JS" || finish 126
export HOME=/root CI=true CAIRN_KERNEL_VM=1 FORCE_COLOR=0
if [ -n "${COMMAND:-}" ]; then
  sh -c "$COMMAND" > "$share/tap.txt" 2> "$share/stderr.txt"
else
  # shellcheck disable=SC2086
  "$REPO/node_modules/.bin/ava" --tap --serial --concurrency=1 --timeout=60m $FILES > "$share/tap.txt" 2> "$share/stderr.txt"
fi
finish $?
