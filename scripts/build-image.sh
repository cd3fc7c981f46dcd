#!/usr/bin/env bash
# Builds the Cairn image without a container engine or a registry: a Debian bookworm root
# filesystem from Debian's archive (mmdebstrap) with the packages in image/runtime-packages,
# this machine's Node.js 20 and the built app, then an OCI image of it (umoci). It is the
# image the Containerfile describes; docs/kubernetes.md ("The image") says where they differ.
#   scripts/build-image.sh              root filesystem and OCI image
#   scripts/build-image.sh --rootfs     the root filesystem only (what npm run test:image uses)
# Output, under CAIRN_IMAGE_DIR (default /var/tmp/cairn-image):
#   rootfs/                   the image's root filesystem
#   oci/                      an OCI image layout, tag cairn:<version>
#   cairn-<version>.oci.tar   the same as one file: podman load -i, docker load -i (Docker 25+)
# The bookworm base is reused while image/runtime-packages is unchanged; the app and Node.js
# are copied in anew every run. CAIRN_IMAGE_MIRROR names another Debian mirror (a URI, or a
# sources file) for mmdebstrap; by default it uses Debian's own, with updates and security.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${CAIRN_IMAGE_DIR:-/var/tmp/cairn-image}
ROOTFS="$OUT/rootfs"
APP=/opt/cairn/app
VERSION=$(node -p 'require("./package.json").version')
rootfs_only=false
case "${1:-}" in
  "") ;;
  --rootfs) rootfs_only=true ;;
  *) echo "usage: scripts/build-image.sh [--rootfs]" >&2; exit 2 ;;
esac

fail() { echo "build-image: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root: mmdebstrap makes device nodes and root-owned files"
[ -n "$OUT" ] && [ "$OUT" != / ] || fail "CAIRN_IMAGE_DIR must name a directory other than /"
# The image runs the Node.js that built the native addons (the same ABI). Debian bookworm's
# nodejs is 18, older than Cairn supports, so it is not taken from the archive.
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" = 20 ] || fail "this machine's Node.js is $(node --version); the image is Node.js 20: install Node.js 20 and rerun"
node_bin=$(readlink -f "$(command -v node)")

started=$(date +%s)
tools=(mmdebstrap)
$rootfs_only || tools+=(umoci)
missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 1. The app: built here (scripts/install-deps.sh), then copied and pruned to production.
[ -f native/build/Release/cairn_native.node ] && [ -d node_modules ] || scripts/install-deps.sh --runtime
npm run --silent build
mkdir -p "$OUT"
staging="$OUT/app"
rm -rf "$staging"
mkdir -p "$staging/native/build/Release"
cp -a package.json package-lock.json bin proto deploy dist node_modules "$staging/"
cp native/build/Release/cairn_native.node "$staging/native/build/Release/"
sh image/prune-app.sh "$staging"

# 2. The base: Debian bookworm, minimal, with the runtime packages; no docs, man pages or
# locales, no apt lists (as in the official slim images).
packages=$(grep -v '^#' image/runtime-packages | paste -sd, -)
# The stamp: what the base was made from (the package list and this script's options).
stamp="bookworm $(cat image/runtime-packages "$0" | sha256sum | cut -c1-16)"
if [ "$(cat "$ROOTFS/etc/cairn-image-base" 2>/dev/null)" != "$stamp" ]; then
  echo "building the bookworm root filesystem (mmdebstrap) in $ROOTFS"
  rm -rf "$ROOTFS"
  mirror=()
  [ -z "${CAIRN_IMAGE_MIRROR:-}" ] || mirror=("$CAIRN_IMAGE_MIRROR")
  # The merged-usr hook makes /usr merged with symlinks, as Debian's own images are, instead
  # of installing usrmerge (which brings Perl).
  mmdebstrap --quiet --variant=minbase --include="$packages" --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$ROOTFS" "${mirror[@]}"
  echo "$stamp" > "$ROOTFS/etc/cairn-image-base"
fi

# 3. Node.js and the app, with cairnd and cairnctl on PATH.
install -m 0755 "$node_bin" "$ROOTFS/usr/local/bin/node"
rm -rf "$ROOTFS$APP"
mkdir -p "$(dirname "$ROOTFS$APP")"
mv "$staging" "$ROOTFS$APP"
ln -sfn "$APP/bin/cairnd.js" "$ROOTFS/usr/local/bin/cairnd"
ln -sfn "$APP/bin/cairnctl.js" "$ROOTFS/usr/local/bin/cairnctl"
echo "root filesystem: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
if $rootfs_only; then echo "done in $(($(date +%s) - started)) s"; exit 0; fi

# 4. The OCI image: one layer of the root filesystem, the Containerfile's entrypoint and env.
oci="$OUT/oci"
rm -rf "$oci"
umoci init --layout "$oci"
umoci new --image "$oci:$VERSION"
umoci insert --image "$oci:$VERSION" "$ROOTFS" /
umoci config --image "$oci:$VERSION" --os linux --architecture "$(dpkg --print-architecture)" --config.workingdir / \
  --config.entrypoint cairnd --config.env CAIRN_LOG_FORMAT=json --config.env NODE_ENV=production \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.label org.opencontainers.image.title=cairn --config.label "org.opencontainers.image.version=$VERSION"
umoci gc --layout "$oci"
tarball="$OUT/cairn-$VERSION.oci.tar"
tar -C "$oci" -cf "$tarball" .
echo "OCI image: $oci (tag $VERSION), $tarball ($(du -h "$tarball" | cut -f1))"
echo "done in $(($(date +%s) - started)) s"
