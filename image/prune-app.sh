#!/bin/sh
# Turns a built Cairn tree (dist/, native addon, node_modules of `npm ci`) into what the
# image ships: production dependencies only, and no native build leftovers (sources,
# object files). Used by the Containerfile and scripts/build-image.sh alike.
#   image/prune-app.sh DIR
set -eu
cd "$1"
npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error
sqlite=node_modules/better-sqlite3
rm -rf "$sqlite/deps" "$sqlite/src" "$sqlite/build/Release/obj.target" "$sqlite/build/Release/.deps" \
  "$sqlite/build/Release/test_extension.node" "$sqlite/build/Release/sqlite3.a" "$sqlite/build/deps" "$sqlite/build/Release/obj"
