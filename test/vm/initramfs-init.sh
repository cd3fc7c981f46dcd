#!/bin/sh
# /init of the kernel-test VM's initramfs (busybox sh). Loads the virtio, virtiofs and
# overlay modules, mounts the host's / (virtiofs tag "root", read-only) under a tmpfs
# overlay so the guest can write and every change is thrown away, mounts the read-write
# share (tag "share") at the path given as cairn.share=, and switch_roots into the overlay
# running cairn.script= as PID 1. Any failure here powers off after writing the reason to
# the console; the host then reports it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "cairn-vm-init: $*"; poweroff -f; }
for m in $(cat /mods/order); do insmod "/mods/$m.ko" || fail "insmod $m failed"; done
script= share=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cairn.script=*) script=${arg#cairn.script=} ;;
    cairn.share=*) share=${arg#cairn.share=} ;;
  esac
done
[ -n "$script" ] && [ -n "$share" ] || fail "cairn.script= and cairn.share= are required"
mount -t virtiofs -o ro root /lower || fail "mounting the root share failed"
mkdir -p /ovl
mount -t tmpfs -o mode=0755 ovl /ovl || fail "tmpfs for the overlay failed"
mkdir -p /ovl/upper /ovl/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work /newroot || fail "overlay mount failed"
mkdir -p "/newroot$share"
mount -t virtiofs share "/newroot$share" || fail "mounting the result share failed"
umount /proc /sys
umount /dev
exec switch_root /newroot /bin/sh "$script" "$share"
