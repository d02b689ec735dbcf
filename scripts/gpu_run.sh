#!/usr/bin/env bash
# gpu_run.sh [golden] [tests] [bench] [peers]: one call on a GPU machine that builds gdn with CUDA
# (sm_90), runs the tests (CUDA included), optionally regenerates the golden vectors with
# transformers, and times `gdn bench`. Logs and JSON go to $OUT (or ./gpu-out) so they can be
# copied into docs/PERF.md. With no arguments it does tests and bench.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
steps=${*:-tests bench}
jobs=$(nproc)

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
nvcc --version | tail -2

cmake -S . -B build-gpu -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release >build-gpu.log 2>&1 &&
  cmake --build build-gpu -j "$jobs" >>build-gpu.log 2>&1 || { tail -40 build-gpu.log; exit 1; }

for step in $steps; do
  case $step in
  tests)
    ctest --test-dir build-gpu --output-on-failure 2>&1 | tee "$out/ctest.log" | tail -30 ;;
  golden) # regenerate tests/golden (the tests of this run use the new files), keep a copy in $out
    PYTHONUNBUFFERED=1 python3 scripts/make_golden.py tests/golden 2>&1 | tee "$out/golden.log"
    mkdir -p "$out/golden" && cp tests/golden/*.safetensors "$out/golden/" ;;
  bench)
    ./build-gpu/gdn bench --json | tee "$out/bench.json"
    ./build-gpu/gdn bench --backend cuda 2>&1 | tee "$out/bench.txt" ;;
  peers)
    [ -x .peers/run_peer_gdn.sh ] && bash .peers/run_peer_gdn.sh 2>&1 | tee "$out/peers.txt" ;;
  *) echo "gpu_run.sh: unknown step '$step'" >&2; exit 2 ;;
  esac
done
