#!/usr/bin/env bash
# The torpor runtime itself on one NVIDIA H100/H200 (the GPU machine has no Node.js and no network):
#   1. unpacks the node binary and node_modules that bench/gpu/pack-runtime.sh put in .gpu-carry/;
#   2. builds, from the llama.cpp that node-llama-cpp ships, libggml-cuda.so for sm_90 as a
#      loadable backend (GGML_BACKEND_DL, as node-llama-cpp's prebuilt is built) and drops it where
#      node-llama-cpp's prebuilt CUDA binaries expect it; beside it, the C++ probe on the CPU, to
#      write the 8B-shaped random model of the GPU check;
#   3. runs dist/bench/gpu/runtime-check.js on that model, with llama-server from the same build beside it.
#
#   bench/gpu/runtime.sh [OUTDIR]     a device run carries .gpu-carry and dist
#
# If the CUDA backend does not build or load, the check still runs on the CPU (its JSON says where).
set -uo pipefail
started=$(date +%s)
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/.gpu-build/out-runtime}
work=$root/.gpu-build
carry=$root/.gpu-carry
mkdir -p "$work" "$out"
step() { echo; echo "=== $* ($(date +%T))"; }
export PATH="$PATH:/usr/local/cuda/bin"

step "node and node_modules"
mkdir -p "$work/node"
[ -x "$work/node/node" ] || { xz -dc "$carry/node.xz" > "$work/node/node" && chmod +x "$work/node/node"; } || exit 3
export PATH="$work/node:$PATH"
[ -d "$root/node_modules/node-llama-cpp" ] || tar -xJf "$carry/node-modules.tar.xz" -C "$root" || exit 3
node --version

step "source"
if [ ! -f "$work/src/include/llama.h" ]; then
  rm -rf "$work/src" && mkdir -p "$work/src" && tar -xzf "$carry/llama-src.tar.gz" -C "$work/src" || exit 3
fi

step "build: libggml-cuda.so (sm_90, loadable backend) and the probe (CPU, for the model)"
t0=$(date +%s)
cmake -S "$root/bench/gpu" -B "$work/build-dl" -G Ninja -DLLAMA_SRC="$work/src" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGGML_BACKEND_DL=ON -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_COMMON=ON >"$out/cmake-dl.log" 2>&1 || tail -20 "$out/cmake-dl.log"
cmake -S "$root/bench/gpu" -B "$work/build-probe" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_SRC="$work/src" -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON >"$out/cmake-probe.log" 2>&1 || tail -20 "$out/cmake-probe.log"
cores=$(nproc)
# llama-server from the same build, the peer for the streams (it loads the backends beside it).
timeout 420 cmake --build "$work/build-dl" --target ggml-cuda ggml-cpu llama-server -j "$cores" >"$out/build-dl.log" 2>&1 &
dl=$!
cmake --build "$work/build-probe" --target torpor-probe -j 6 >"$out/build-probe.log" 2>&1 || { grep -m5 -A5 error "$out/build-probe.log"; }
wait $dl || grep -m10 -A5 error "$out/build-dl.log" | head -40
echo "builds took $(( $(date +%s) - t0 )) s on $cores cores"
cuda_lib=$(find "$work/build-dl" -name libggml-cuda.so -type f | head -1)
probe_bin=$(find "$work/build-probe" -name torpor-probe -type f -perm -u+x | head -1)
server_bin=$(find "$work/build-dl" -name llama-server -type f -perm -u+x | head -1)
if [ -n "$cuda_lib" ] && [ -n "$server_bin" ]; then export TORPOR_LLAMA_SERVER=$server_bin; else echo "no llama-server: the check runs without its peer"; fi
bins=$root/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda
if [ -n "$cuda_lib" ]; then cp "$cuda_lib" "$bins/" && ls -la "$bins/libggml-cuda.so"
else echo "no libggml-cuda.so: only the CPU's sealing figure runs"; export TORPOR_CHECK_SECTIONS=${TORPOR_CHECK_SECTIONS:-host,sealing-figure-9}; fi
# node-llama-cpp looks for the driver (libcuda, libnvidia-ml) and CUDA's runtime (libcudart, libcublas)
# on LD_LIBRARY_PATH and the usual folders before it tries its CUDA binaries: name where they are.
libdirs=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1|libnvidia-ml\.so\.1|libcudart\.so\.13|libcublas\.so\.13/ {print $NF}';
  find /usr/local/nvidia /usr/local/cuda/ -maxdepth 4 \( -name 'libcuda.so.1' -o -name 'libnvidia-ml.so.1' -o -name 'libcudart.so.13' -o -name 'libcublas.so.13' \) 2>/dev/null) |
  xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

step "model"
model=$work/model-gpu.gguf
[ -f "$model" ] || "$probe_bin" make-model "$model" layers=32 embd=4096 ff=14336 heads=32 kv_heads=8 vocab=32000 type=q4_0 || exit 5
ls -la "$model"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | sed 's/^/  /'

step "runtime check"
# A device command gets 600 s: the check has what the build left (its JSON is written after each section).
left=$(( ${TORPOR_DEADLINE_S:-575} - ($(date +%s) - started) )); [ "$left" -lt 60 ] && left=60
echo "the check has $left s"
# The process settings the chart gives the runtime (runtime/model/process-tuning.ts).
cd "$root" && MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 UV_THREADPOOL_SIZE=2 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 timeout "$left" node dist/bench/gpu/runtime-check.js "$model" "$out/runtime.json" 2>&1 | tee "$out/runtime.log"
status=${PIPESTATUS[0]}
echo; echo "done: status $status; JSON in $out/runtime.json"
exit "$status"
