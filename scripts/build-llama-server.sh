#!/usr/bin/env bash
# Builds llama.cpp's own server from the source node-llama-cpp ships in its npm package
# (node_modules/node-llama-cpp/llama/gitRelease.bundle: the same llama.cpp the runtime runs), for
# the side-by-side benchmark. Cached outside the checkout, keyed by the bundle's digest; prints
# the binary's path last. Exits 3 with a message when cmake or a C++ compiler is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bundle="$here/node_modules/node-llama-cpp/llama/gitRelease.bundle"
[ -f "$bundle" ] || { echo "error: $bundle not found: run npm install first" >&2; exit 3; }
for tool in cmake c++ git; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is needed to build llama-server (install cmake and a C++ compiler, e.g. apt-get install cmake g++)" >&2; exit 3; }
done
# Portable CPU flags, like node-llama-cpp's prebuilt binaries (a fair comparison), and no AMX: its
# kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the VMs here that report the feature.
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
digest=$( (sha256sum "$bundle"; echo "$flags") | sha256sum | cut -c1-16)
cache_root="${TORPOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/torpor}"
out="$cache_root/llama-server/$digest"
if [ -x "$out/llama-server" ]; then echo "$out/llama-server"; exit 0; fi
work="$out.build"
rm -rf "$work"
mkdir -p "$work"
echo "building llama-server from the bundled llama.cpp into $out (first build: several minutes on 2 cores)" >&2
git clone -q "$bundle" "$work/src" 2>/dev/null
cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF $flags >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out"
cp "$work/build/bin/llama-server" "$out/llama-server"
rm -rf "$work"
echo "$out/llama-server"
