#!/usr/bin/env bash
# Packs what the GPU machine needs to run the torpor runtime itself (bench/gpu/runtime.sh), beside
# the llama.cpp source (bench/gpu/pack.sh): this machine's node binary and the node_modules the
# runtime loads, without what it does not (the Kubernetes client, the CDK, other platforms'
# binaries) and without node-llama-cpp's prebuilt libggml-cuda.so (159 MB, all architectures,
# already compressed: xz keeps 124 MB of it), which runtime.sh builds there for sm_90 from the same
# source. Everything goes to .gpu-carry/ (ignored), which a device run names in `carry` with dist/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
carry=$root/.gpu-carry
mkdir -p "$carry"
[ -f "$carry/llama-src.tar.gz" ] || "$root/bench/gpu/pack.sh"
node_bin=$(readlink -f "$(command -v node)")
if [ ! -f "$carry/node.xz" ] || [ "$node_bin" -nt "$carry/node.xz" ]; then
  xz -T0 -9 -c "$node_bin" > "$carry/node.xz.tmp" && mv "$carry/node.xz.tmp" "$carry/node.xz"
fi
nm=node_modules
excludes=(
  "$nm/@node-llama-cpp/linux-arm64" "$nm/@node-llama-cpp/linux-armv7l" "$nm/@node-llama-cpp/linux-x64-vulkan"
  "$nm/@node-llama-cpp/linux-x64-cuda-ext" "$nm/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda/libggml-cuda.so"
  "$nm/node-llama-cpp/llama/gitRelease.bundle" "$nm/aws-cdk-lib" "$nm/@aws-cdk" "$nm/typescript" "$nm/openai"
  "$nm/@kubernetes" "$nm/@types" "$nm/fast-check" "$nm/.cache"
)
(cd "$root" && tar -cf - $(printf -- '--exclude=%s ' "${excludes[@]}") "$nm") | xz -T0 -6 > "$carry/node-modules.tar.xz"
ls -la "$carry"
du -ch "$carry"/* "$root/dist" | tail -1
