#!/usr/bin/env bash
# side_by_side.sh [--fla DIR] [--llama BIN]: on a GPU machine, in one run, build gdn (CUDA, sm_90)
# and time the GDN op beside the peers on the Qwen3.6-35B-A3B GDN shapes (Hk 16, Hv 32, D 128,
# FP32 state), then print one table (and $OUT/side_by_side.json, one object per row):
#   - gdn: `gdn bench` rows (snapshot scheme): decode T=1 K=1, verify T=4 with the final state
#     only (K=1) and with 4 snapshots (K=4); distinct buffers per layer (state from DRAM), and
#     with --distinct 1 (one buffer set reused, as ggml's test-backend-ops does);
#   - fla (--fla DIR: a checkout of github.com/fla-org/flash-linear-attention): its Triton
#     fused_recurrent forward through scripts/peer_fla.py, same shapes, distinct buffers, T=1 and
#     T=4 (it writes the final state only: compare with gdn's K=1 rows);
#   - llama.cpp (--llama BIN: a test-backend-ops binary of llama.cpp or ggml built with CUDA whose
#     GATED_DELTA_NET cases include head_count=16, head_size=128, v_repeat=2 for n_seqs 1, 8, 64,
#     256 with K=1 at T=1 and K=4 at T=4): its perf mode, CUDA graphs on, one buffer set reused.
# Neither peer is part of this repository; this script only runs what it is given. llama.cpp's
# cache fusion (its graph writing the snapshots straight into the cache) cannot be timed by
# test-backend-ops, which runs the op alone; `gdn bench --stack` times our whole step instead.
set -uo pipefail
cd "$(dirname "$0")/.."
fla="" llama=""
while [ $# -gt 0 ]; do
  case $1 in
  --fla) fla=$2; shift 2 ;;
  --llama) llama=$2; shift 2 ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "side_by_side.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
out=${OUT:-gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -x build-gpu/gdn ]; then
  cmake -S . -B build-gpu -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release >build-gpu.log 2>&1 &&
    cmake --build build-gpu -j "$(nproc)" >>build-gpu.log 2>&1 || { tail -40 build-gpu.log; exit 1; }
fi

rows=$out/side_by_side.rows
: >"$rows"
for shape in "--tokens 1 --K 1" "--tokens 4 --K 1" "--tokens 4 --K 4"; do
  for distinct in "" "--distinct 1"; do
    # shellcheck disable=SC2086
    ./build-gpu/gdn bench --backend cuda --scheme snapshot $shape $distinct --json 2>/dev/null |
      sed "s/^{/{\"who\":\"gdn\",\"reused\":$([ -n "$distinct" ] && echo true || echo false),/" >>"$rows" ||
      { echo "side_by_side.sh: gdn bench failed" >&2; exit 1; }
  done
done
if [ -n "$fla" ]; then
  python3 scripts/peer_fla.py --fla "$fla" --json | sed 's/^{/{"who":"fla","reused":false,/' >>"$rows" ||
    echo "side_by_side.sh: fla failed (its rows are missing)" >&2
fi
if [ -n "$llama" ]; then
  pattern='head_count=16,head_size=128,n_seq_tokens=(1|4),n_seqs=(1|8|64|256),v_repeat=2,permuted=0,kda=0,K=(1|4)$'
  "$llama" perf -o GATED_DELTA_NET -b CUDA0 -p "$pattern" 2>&1 | tee "$out/llama.txt" | python3 -c '
import json, re, sys
case = None  # a case line may be split from its timing by a log line of the CUDA backend
for line in sys.stdin:
    m = re.search(r"n_seq_tokens=(\d+),n_seqs=(\d+),.*K=(\d+)\):", line)
    case = (int(m[1]), int(m[2]), int(m[3])) if m else case
    t = re.search(r"([\d.]+) us/run", line)
    if t and case:
        T, B, K = case
        print(json.dumps(dict(who="llama.cpp", reused=True, T=T, K=K, B=B, us_per_layer=float(t[1]))))
        case = None
' >>"$rows" || echo "side_by_side.sh: llama.cpp failed (its rows are missing)" >&2
fi

python3 - "$rows" "$out/side_by_side.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
def us(who, reused, T, K, B):
    for r in rows:
        if r["who"] == who and r["reused"] == reused and (r["T"], r["K"], r["B"]) == (T, K, B):
            return r["us_per_layer"]
def cell(x):
    return f"{x:9.2f}" if x is not None else "        -"
def ratio(a, b):
    return f"{b / a:6.2f}x" if a and b else "      -"
gdn = [r for r in rows if r["who"] == "gdn" and not r["reused"]]
copy = gdn[0]["copy_gbps"] if gdn else 0
print(f"\nus per layer call, median of a 30-layer CUDA graph step; device copy {copy:.0f} GB/s")
print("distinct: a buffer set per layer (state from DRAM); reused: one set (test-backend-ops' way)\n")
print(f"{'T':>2} {'K':>2} {'B':>4} | {'gdn':>9} {'fla':>9} {'fla/gdn':>7} | "
      f"{'gdn':>9} {'llama.cpp':>9} {'llama/gdn':>9}")
print(f"{'':>10} | {'distinct':>9} {'distinct':>9} {'':>7} | {'reused':>9} {'reused':>9}")
for T, K in ((1, 1), (4, 1), (4, 4)):
    for B in (1, 8, 64, 256):
        a, f = us("gdn", False, T, K, B), us("fla", False, T, K, B)
        b, l = us("gdn", True, T, K, B), us("llama.cpp", True, T, K, B)
        if a is None and b is None:
            continue
        print(f"{T:>2} {K:>2} {B:>4} | {cell(a)} {cell(f)} {ratio(a, f)} | {cell(b)} {cell(l)} {ratio(b, l):>9}")
PY
