#!/usr/bin/env bash
# Packs the llama.cpp source that node-llama-cpp ships (its gitRelease.bundle, 35 MB) into
# .gpu-carry/llama-src.tar.gz (about 9 MB: no models, docs or tests), the one thing besides the
# checkout that the GPU machine needs: it has no Node.js, no network and takes 64 MiB of files.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle="$root/node_modules/node-llama-cpp/llama/gitRelease.bundle"
[ -f "$bundle" ] || { echo "error: $bundle not found: run npm install first" >&2; exit 3; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$bundle" "$tmp/src" 2>/dev/null
mkdir -p "$root/.gpu-carry"
(cd "$tmp/src" && git archive HEAD CMakeLists.txt cmake common ggml include src tools scripts vendor licenses LICENSE) | gzip -6 > "$root/.gpu-carry/llama-src.tar.gz"
ls -la "$root/.gpu-carry/llama-src.tar.gz"
