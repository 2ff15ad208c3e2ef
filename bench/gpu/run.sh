#!/usr/bin/env bash
# The GPU check: builds llama.cpp (the source node-llama-cpp ships) with the probe, llama-server and
# llama-batched-bench, writes a random-weight model of a real model's shape, and runs the probe,
# llama.cpp's own batched benchmark and llama-server's slot save/restore on it.
#
#   bench/gpu/run.sh cpu [OUTDIR]   here, on 2 cores: a small model, to prove the script and time the build
#   bench/gpu/run.sh gpu [OUTDIR]   on one NVIDIA H100/H200 (sm_90): an 8B-shaped model (Llama 3.1 8B's
#                                   layers and heads, a 32k vocabulary), Q4_0, 4.3 GiB
#
# Needs cmake, a C++ compiler, python3 (the slot calls), and for gpu nvcc; .gpu-carry/llama-src.tar.gz
# (bench/gpu/pack.sh) or node_modules' bundle and git. Build outputs stay in .gpu-build/ (ignored), so
# a second run on the same machine only runs. Exit status: non-zero when a step failed.
set -uo pipefail
mode=${1:-cpu}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$root/.gpu-build/out-$mode}
work=$root/.gpu-build
mkdir -p "$work" "$out"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "source"
if [ ! -f "$work/src/include/llama.h" ]; then
  rm -rf "$work/src" && mkdir -p "$work/src"
  if [ -f "$root/.gpu-carry/llama-src.tar.gz" ]; then
    tar -xzf "$root/.gpu-carry/llama-src.tar.gz" -C "$work/src"
  else
    git clone -q "$root/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$work/src" 2>/dev/null || { echo "no llama.cpp source: run bench/gpu/pack.sh or npm install"; exit 3; }
  fi
fi

case "$mode" in
  gpu)
    export PATH="$PATH:/usr/local/cuda/bin"
    flags="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON"
    shape="layers=32 embd=4096 ff=14336 heads=32 kv_heads=8 vocab=32000 type=q4_0"
    probe="ngl=999 ctx=8192 state_tokens=4096 prompt=512 gen=128 seqs=1,4,16 fa=off,on"
    bb="-ngl 999 -npp 512 -ntg 128 -npl 1,4,16 -c 10240"
    server="-ngl 999 -c 8192"; state_tokens=4096
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | sed 's/^/  /'
    nvcc --version | tail -2 ;;
  cpu)
    flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    shape="layers=8 embd=1024 ff=2816 heads=16 kv_heads=4 vocab=32000 type=q4_0"
    probe="ngl=0 ctx=4096 state_tokens=2048 prompt=128 gen=32 seqs=1,4 fa=off,on threads=2"
    bb="-ngl 0 -npp 128 -ntg 32 -npl 1,4 -c 1024 -t 2"
    server="-ngl 0 -c 4096 -t 2"; state_tokens=2048 ;;
  *) echo "usage: $0 cpu|gpu [OUTDIR]"; exit 2 ;;
esac

step "build ($mode)"
t0=$(date +%s)
build=$work/build-$mode
cmake -S "$root/bench/gpu" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_SRC="$work/src" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF $flags >"$out/cmake.log" 2>&1 \
  || { tail -30 "$out/cmake.log"; exit 4; }
# TORPOR_PROBE_ONLY=1 builds and runs the probe alone (a second run on a fresh machine, in less time).
targets="torpor-probe llama-server llama-batched-bench"
[ "${TORPOR_PROBE_ONLY:-}" = 1 ] && targets=torpor-probe
cmake --build "$build" --target $targets -j "$(nproc)" >"$out/build.log" 2>&1 \
  || { grep -m20 -B2 -A10 "error" "$out/build.log" | head -60; exit 4; }
echo "build took $(( $(date +%s) - t0 )) s on $(nproc) cores"
# Where each binary lands depends on the CMake version and layout: look them up.
binary() { find "$build" -name "$1" -type f -perm -u+x | head -1; }
probe_bin=$(binary torpor-probe); bb_bin=$(binary llama-batched-bench); server_bin=$(binary llama-server)
[ -n "$probe_bin" ] || { echo "torpor-probe is missing after the build"; exit 4; }

step "model"
model=$work/model-$mode.gguf
[ -f "$model" ] || "$probe_bin" make-model "$model" $shape || exit 5
ls -la "$model"

step "probe"
"$probe_bin" run "$model" $probe dir="$work" json="$out/probe.json" || status=6

if [ "${TORPOR_PROBE_ONLY:-}" = 1 ]; then echo; echo "done (probe only): status $status; JSON in $out/probe.json"; exit $status; fi

step "llama-batched-bench (llama.cpp's own batched decode, for comparison)"
"$bb_bin" -m "$model" -b 2048 -ub 512 $bb 2>"$out/batched-bench.err" | grep -E "^\|" || { tail -5 "$out/batched-bench.err"; status=7; }

step "llama-server slot save/restore ($state_tokens tokens, 3 runs)"
slots=$(mktemp -d)
port=18080
"$server_bin" -m "$model" $server -np 1 --port $port --host 127.0.0.1 --slot-save-path "$slots/" --no-webui >"$out/server.log" 2>&1 &
server_pid=$!
python3 - "$port" "$state_tokens" "$server_pid" <<'EOF' || status=8
import json, os, random, sys, time, urllib.request
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"
def call(path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(), headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read()), (time.perf_counter() - t0) * 1000
for _ in range(600):
    try:
        call("/health"); break
    except Exception:
        os.kill(pid, 0)  # raises once the server has exited: its log says why
        time.sleep(0.2)
random.seed(7)
prompt = [random.randrange(300, 32000) for _ in range(n)]
call("/completion", {"prompt": prompt, "n_predict": 1, "cache_prompt": True, "id_slot": 0, "temperature": 0})
for run in range(3):
    save, save_ms = call("/slots/0?action=save", {"filename": "probe.bin"})
    call("/slots/0?action=erase", {})
    restore, restore_ms = call("/slots/0?action=restore", {"filename": "probe.bin"})
    nxt, nxt_ms = call("/completion", {"prompt": prompt + [400], "n_predict": 16, "cache_prompt": True, "id_slot": 0, "temperature": 0})
    print(f"  run {run + 1}: save {save['timings']['save_ms']:.1f} ms ({save['n_written'] / 1048576:.1f} MiB; HTTP {save_ms:.1f} ms), "
          f"restore {restore['timings']['restore_ms']:.1f} ms (HTTP {restore_ms:.1f} ms), next turn {nxt_ms:.1f} ms, "
          f"{nxt.get('tokens_cached', '?')} cached")
EOF
kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null
rm -rf "$slots"
[ $status -ne 0 ] && tail -5 "$out/server.log"
echo; echo "done: status $status; JSON in $out/probe.json"
exit $status
