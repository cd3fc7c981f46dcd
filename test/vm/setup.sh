#!/usr/bin/env bash
# Prepares the kernel test VM (idempotent; everything it makes lives in test/vm/.cache/):
#   1. installs the Debian packages the harness and the guest tests need (only missing ones);
#   2. downloads the cloud kernel package that linux-image-cloud-amd64 depends on and
#      extracts it with dpkg -x (never apt-get install linux-image-*: that pulls in udev and
#      initramfs-tools and touches the host), then runs depmod on the extracted tree;
#   3. builds a tiny initramfs: static busybox, test/vm/initramfs-init.sh as /init and the
#      virtio/virtiofs/fuse/overlay modules the init needs before the root is mounted.
# Prints the cache directory's kernel folder on success (the last line of stdout).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
CACHE="$HERE/.cache"
mkdir -p "$CACHE"
log() { echo "vm-setup: $*" >&2; }
APT_OPTS=(-o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)

packages=(qemu-system-x86 busybox-static cpio kmod dmsetup e2fsprogs xfsprogs util-linux libnbd-bin fuse3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "${missing[@]}" >&2
fi

# The concrete kernel package behind the cloud meta-package (its version moves).
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { log "cannot find the package behind linux-image-cloud-amd64"; exit 1; }
kdir="$CACHE/$kpkg"
if [ ! -f "$kdir/.extracted" ]; then
  log "downloading and extracting $kpkg"
  rm -rf "$kdir" "$CACHE"/dl && mkdir -p "$CACHE/dl" "$kdir/root"
  (cd "$CACHE/dl" && apt-get -o APT::Sandbox::User=root download "$kpkg" >&2)
  dpkg -x "$CACHE"/dl/*.deb "$kdir/root"
  rm -rf "$CACHE/dl"
  kver=$(ls "$kdir/root/lib/modules" | head -n1)
  depmod -b "$kdir/root" "$kver"
  echo "$kver" > "$kdir/kver"
  touch "$kdir/.extracted"
fi
kver=$(cat "$kdir/kver")
mods="$kdir/root/lib/modules/$kver"

initrd="$kdir/initramfs.gz"
if [ ! -f "$initrd" ] || [ "$HERE/initramfs-init.sh" -nt "$initrd" ]; then
  log "building the initramfs"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work"/{bin,dev,proc,sys,newroot,lower,share,mods}
  cp /bin/busybox "$work/bin/busybox"
  for applet in sh mount umount mkdir insmod switch_root poweroff cat echo sleep ls; do ln -s busybox "$work/bin/$applet"; done
  # Load order matters: virtio_ring before virtio (see shared notes).
  order=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs overlay)
  : > "$work/mods/order"
  for m in "${order[@]}"; do
    f=$(find "$mods/kernel" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { log "module $m not in the kernel package (built in?)"; continue; }
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$work/mods/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$work/mods/$m.ko" ;;
      *) cp "$f" "$work/mods/$m.ko" ;;
    esac
    echo "$m" >> "$work/mods/order"
  done
  cp "$HERE/initramfs-init.sh" "$work/init"
  chmod +x "$work/init"
  (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
fi
echo "$kdir"
