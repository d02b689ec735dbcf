#!/usr/bin/env bash
# side_by_side_cpu.sh --llama BIN [--rounds N] [--batch LIST]: on this machine's CPU, time the GDN
# step of gdn beside llama.cpp's CPU op on the Qwen3.6-35B-A3B GDN shapes (Hk 16, Hv 32, D 128,
# FP32 state), rounds alternated (a small VM's timings drift; medians are printed), one table:
#   - gdn: `gdn bench --backend cpu --scheme both --distinct 1` (one buffer set reused, as
#     test-backend-ops does): the snapshot scheme (K = T snapshots) and the replay scheme (L = T),
#     decode T=1 and verify T=4;
#   - llama.cpp (--llama BIN: a CPU build of llama.cpp's or ggml's test-backend-ops whose
#     GATED_DELTA_NET perf cases include head_count=16, head_size=128, v_repeat=2 with K=1 at T=1
#     and K=4 at T=4 for the batch sizes asked): its perf mode, the op alone (with the l2 norms of
#     q and k that its case builds);
#   - llama.cpp's whole pattern, where BIN also has a GDN_PATTERN perf case (not in upstream; see
#     docs/PERF.md, "the CPU beside llama.cpp's whole pattern", for the graph it builds: the state
#     gathered from the cache with get_rows, the op, the snapshot tail copied into the cache with
#     cpy, timed as one graph per run). Rows without it print "-".
# Neither peer is part of this repository; this script only runs what it is given.
set -uo pipefail
cd "$(dirname "$0")/.."
llama="" rounds=4 batch="1,16"
while [ $# -gt 0 ]; do
  case $1 in
  --llama) llama=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  --batch) batch=$2; shift 2 ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "side_by_side_cpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$llama" ] || [ ! -x "$llama" ]; then
  echo "side_by_side_cpu.sh: --llama BIN (an executable) is required" >&2
  exit 2
fi
case $rounds in '' | *[!0-9]* | 0) echo "side_by_side_cpu.sh: --rounds wants a positive integer" >&2; exit 2 ;; esac
if [ ! -x build-cpu/gdn ]; then
  cmake -S . -B build-cpu -DGDN_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >build-cpu.log 2>&1 &&
    cmake --build build-cpu -j "$(nproc)" >>build-cpu.log 2>&1 || { tail -40 build-cpu.log; exit 1; }
fi

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
peer() { # label op vars-regex T B: one test-backend-ops perf run, "label T B us" or nothing
  "$llama" perf -o "$2" -b CPU -p "$3" 2>/dev/null |
    sed -n 's/.* \([0-9.]*\) us\/run.*/\1/p' | head -1 | sed "s/^/$1 $4 $5 /"
}
IFS=, read -ra bs <<<"$batch"
for ((r = 1; r <= rounds; r++)); do
  echo "round $r of $rounds" >&2
  for T in 1 4; do
    for B in "${bs[@]}"; do
      v="head_count=16,head_size=128,n_seq_tokens=$T,n_seqs=$B,v_repeat=2"
      peer llama_op GATED_DELTA_NET "$v,permuted=0,kda=0,K=$T\$" "$T" "$B" >>"$rows"
      peer llama_pattern GDN_PATTERN "$v,K=$T\$" "$T" "$B" >>"$rows"
      ./build-cpu/gdn bench --backend cpu --scheme both --tokens "$T" --K "$T" --batch "$B" --distinct 1 --json \
        2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        j = json.loads(line)
        print("gdn_%s %d %d %.1f" % (j["scheme"], j["T"], j["B"], j["us_per_layer"]))' >>"$rows"
    done
  done
done

python3 - "$rows" "$rounds" <<'EOF'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    label, T, B, us = line.split()
    times.setdefault((int(T), int(B), label), []).append(float(us))
def med(T, B, label):
    v = times.get((T, B, label))
    return statistics.median(v) if v else None
def cell(x):
    return "%10.0f" % x if x is not None else "%10s" % "-"
def ratio(a, b):
    return "%7.2fx" % (a / b) if a is not None and b is not None else "%8s" % "-"
print("us per layer call, medians of %s rounds; ratios: llama.cpp's time over gdn's faster scheme's" % sys.argv[2])
print("   T  K     B |  llama op  llama pattern | gdn snapshot  gdn replay | faster    op/gdn  pattern/gdn")
for (T, B) in sorted({(k[0], k[1]) for k in times}):
    op, pat = med(T, B, "llama_op"), med(T, B, "llama_pattern")
    snap, rep = med(T, B, "gdn_snapshot"), med(T, B, "gdn_replay")
    ours = [x for x in ((snap, "snapshot"), (rep, "replay")) if x[0] is not None]
    best, name = min(ours) if ours else (None, "-")
    print("%4d %2d %5d | %s %s    | %s %s | %-8s %s %s" % (T, T, B, cell(op), cell(pat), cell(snap), cell(rep),
                                                          name, ratio(op, best), ratio(pat, best)))
print("all runs (us):")
for key in sorted(times):
    print("  T=%d B=%d %-14s %s" % (key[0], key[1], key[2], " ".join("%.0f" % x for x in times[key])))
EOF
