#!/usr/bin/env bash
# Builds node-llama-cpp's addon with torpor's state-file and threadpool methods (runtime/native/) and
# installs it where node-llama-cpp looks for a local build first (llama/localBuilds/linux-x64).
#
# Only the addon's own C++ (about 20 files, 15-30 s on 2 cores) is compiled: it links against the
# prebuilt llama.cpp libraries node-llama-cpp installed from the npm registry, with llama.cpp's
# headers taken from the source node-llama-cpp ships (llama/gitRelease.bundle, the release those
# libraries were built from), and OpenSSL's from Node's own headers (the addon uses the OpenSSL
# inside Node). The methods it adds seal a sequence's state into a hibernation file as llama.cpp
# streams it out, and open it as llama.cpp streams it in, instead of staging plaintext in a file,
# reading it back and encrypting it, keep a context's CPU threads between its decodes, read greedy
# tokens off the logits, and run greedy generation for all of a context's sequences in a native
# loop (docs/benchmarks.md).
#
# Run by `npm install` (postinstall). Never fails the install: where it cannot build (not Linux x64,
# no C++ compiler or git), it says so and exits 0, and the runtime uses node-llama-cpp's prebuilt
# addon and staged files, as before. TORPOR_SKIP_ADDON_BUILD=1 skips it; --force rebuilds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
nlc="$here/node_modules/node-llama-cpp"
prebuilt="$here/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
out="$nlc/llama/localBuilds/linux-x64"
skip() { echo "torpor: not building the runtime addon: $1; the runtime stages sealed state in files instead (slower, same files) and decodes as node-llama-cpp does" >&2; exit 0; }

[ "${TORPOR_SKIP_ADDON_BUILD:-}" = "1" ] && skip "TORPOR_SKIP_ADDON_BUILD=1"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || skip "only built on Linux x64 (this is $(uname -s)-$(uname -m))"
[ -d "$nlc/llama/addon" ] && [ -f "$nlc/llama/gitRelease.bundle" ] || skip "node-llama-cpp's sources are not installed"
[ -f "$prebuilt/llama-addon.node" ] || skip "node-llama-cpp's prebuilt linux-x64 binaries are not installed"
for tool in c++ git; do command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing (apt-get install g++ git)"; done
napi=$(cd "$here" && node -p "require('node-addon-api').include_dir" 2>/dev/null) || skip "node-addon-api is missing"
napi="$here/$napi"
node_inc="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")/include/node"
[ -f "$node_inc/node_api.h" ] || skip "Node.js headers not found at $node_inc"

# Rebuilt only when an input changes: node-llama-cpp's addon and libraries, our additions and this script, Node's headers.
digest=$( (cd "$nlc/llama" && cat addon/*.cpp addon/*.h addon/globals/* llama.cpp.info.json; \
  sha256sum "$prebuilt"/lib*.so; cat "$here/runtime/native/"* "$here/scripts/build-runtime-addon.sh"; cat "$node_inc/node_version.h") | sha256sum | cut -c1-16)
if [ "${1:-}" != "--force" ] && [ "$(cat "$out/Release/torpor-addon.digest" 2>/dev/null)" = "$digest" ]; then exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
git clone -q --bare "$nlc/llama/gitRelease.bundle" "$work/llama.git"
mkdir -p "$work/src"
git --git-dir="$work/llama.git" archive HEAD include ggml/include common src vendor/hash/xxhash | tar -x -C "$work/src"
cp -r "$nlc/llama/addon" "$work/addon"
cp "$here/runtime/native/"*.cpp "$here/runtime/native/"*.h "$work/addon/"
(cd "$work" && git apply "$here/runtime/native/addon.patch") || skip "runtime/native/addon.patch does not apply to this node-llama-cpp's addon"
flags=(-c -O2 -fPIC -fexceptions -std=c++17 -DNAPI_VERSION=7 -w -I"$napi" -I"$node_inc"
  -I"$work/src/include" -I"$work/src/ggml/include" -I"$work/src" -I"$work/src/common" -I"$work/src/src" -I"$work/src/vendor/hash/xxhash")
if ! (cd "$work" && ls addon/*.cpp addon/globals/*.cpp | xargs -P "$(nproc)" -I{} c++ "${flags[@]}" {} -o {}.o); then
  skip "the addon did not compile (see the errors above)"
fi
# The libraries node-llama-cpp's own addon links, by their names in this release (libllama.v0.5.0.so...).
libs=()
for lib in $(readelf -d "$prebuilt/llama-addon.node" 2>/dev/null | sed -n 's/.*Shared library: \[\(lib\(llama\|ggml\)[^]]*\)\].*/\1/p'); do libs+=("-l:$lib"); done
[ ${#libs[@]} -gt 0 ] || skip "could not read which llama.cpp libraries the prebuilt addon links (readelf)"
c++ -shared -o "$work/llama-addon.node" "$work"/addon/*.o "$work"/addon/globals/*.o -L"$prebuilt" \
  "${libs[@]}" -Wl,-rpath,'$ORIGIN' \
  || skip "the addon did not link against node-llama-cpp's prebuilt libraries"

# node-llama-cpp's layout for a local build: Release/ with the addon, its build metadata and the
# libraries beside it (relative links to the prebuilt ones, so a copied node_modules keeps working),
# and buildDone.status. Metadata names this machine's platform, so the addon is not test-loaded in
# a child process on every start.
stage="$out.new"
rm -rf "$stage"
mkdir -p "$stage/Release"
cp "$work/llama-addon.node" "$stage/Release/"
for lib in "$prebuilt"/*.so; do ln -s "$(realpath -m --relative-to="$out/Release" "$lib")" "$stage/Release/$(basename "$lib")"; done
(cd "$here" && node --input-type=module -e "
  import fs from 'node:fs';
  const { getPlatformInfo } = await import('$nlc/dist/bindings/utils/getPlatformInfo.js');
  const meta = JSON.parse(fs.readFileSync('$prebuilt/_nlcBuildMetadata.json', 'utf8'));
  meta.buildOptions.platformInfo = await getPlatformInfo();
  meta.buildOptions.torpor = 'state files, threadpools, greedy sampling and the decode loop (runtime/native)';
  fs.writeFileSync('$stage/Release/_nlcBuildMetadata.json', JSON.stringify(meta));
") || skip "could not write the build metadata"
echo "$digest" > "$stage/Release/torpor-addon.digest"
echo done > "$stage/buildDone.status"
# Refuse an addon this Node cannot load: node-llama-cpp would fall back to its own, but say so here.
(cd "$stage/Release" && node -e "const a = require('./llama-addon.node'); const p = a.AddonContext?.prototype; if (!['saveSequenceStatePlain', 'loadSequenceStatePlain', 'attachThreadpool', 'sampleGreedy', 'decodeLoopRun'].every((m) => typeof p?.[m] === 'function')) process.exit(1)") \
  || { rm -rf "$stage"; skip "the built addon does not load"; }
rm -rf "$out"
mv "$stage" "$out"
echo "torpor: built node-llama-cpp's addon with torpor's state files, threadpools and decode loop in $(( $(date +%s) - t0 )) s ($out)" >&2
