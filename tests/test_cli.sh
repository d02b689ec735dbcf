#!/usr/bin/env bash
# test_cli.sh GDN TEST_GOLDEN GOLDEN_DIR: the gdn command's op, help and bench --stack paths.
# Good input gives the golden result; every kind of bad input gives a message on stderr, a
# non-zero exit and no output file.
set -u
gdn=$1 test_golden=$2 golden_dir=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
ok()   { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

golden=$golden_dir/gdn_golden_interleaved_l2.safetensors

# help tells the truth about the commands
"$gdn" --help >"$work/help" 2>&1 && grep -q 'gdn bench' "$work/help" && grep -q 'gdn op' "$work/help" \
  && ok || fail "gdn --help"
"$gdn" op --help >"$work/help" 2>&1 && grep -q 'broadcast' "$work/help" && ok || fail "gdn op --help"
"$gdn" bench --help >"$work/help" 2>&1 && grep -q -- '--json' "$work/help" && ok || fail "gdn bench --help"
"$gdn" frobnicate >/dev/null 2>&1 && fail "unknown command accepted" || ok

# good input on the CPU backend matches the golden vectors
if "$gdn" op gated_delta_net --in "$golden" --out "$work/out.safetensors" --backend cpu; then
  "$test_golden" --compare "$work/out.safetensors" "$golden" && ok || fail "cpu output differs from golden"
else
  fail "gdn op on a golden file"
fi

# the same on the CUDA backend where one is present (it says why when it is not)
if "$gdn" op gated_delta_net --in "$golden" --out "$work/out_cuda.safetensors" --backend cuda 2>"$work/err"; then
  "$test_golden" --compare "$work/out_cuda.safetensors" "$golden" && ok || fail "cuda output differs from golden"
elif grep -q "cannot open the cuda backend" "$work/err" && [ ! -e "$work/out_cuda.safetensors" ]; then
  ok; echo "cuda: skipped ($(head -c 160 "$work/err"))"
else
  fail "gdn op --backend cuda: $(cat "$work/err")"
fi

# a prompt of 200 tokens: the CPU takes the chunked form by itself, and both forms match the
# transformers recurrence (metadata chunk -1 and 32 derived from the golden file)
prefill=$golden_dir/gdn_golden_prefill_t200.safetensors
if "$gdn" op gated_delta_net --in "$prefill" --out "$work/prefill.safetensors" --backend cpu &&
  "$test_golden" --compare "$work/prefill.safetensors" "$prefill"; then ok; else fail "gdn op on a prefill golden file"; fi
python3 - "$prefill" "$work" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
for chunk in ("-1", "32"):
    header["__metadata__"]["chunk"] = chunk
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(f"{sys.argv[2]}/prefill_chunk{chunk}.safetensors", "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n:])
PY
for chunk in -1 32; do
  if "$gdn" op gated_delta_net --in "$work/prefill_chunk$chunk.safetensors" --out "$work/p$chunk.safetensors" \
      --backend cpu && "$test_golden" --compare "$work/p$chunk.safetensors" "$prefill"; then ok
  else fail "gdn op with metadata chunk=$chunk"; fi
done

# bad input: derived files written with python's standard library only
python3 - "$golden" "$work" <<'PY'
import json, struct, sys
src, work = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n]); data = raw[8 + n:]

def write(name, header, tensors):
    """tensors: dict name -> (dtype, shape, bytes), laid out in order"""
    h, blob = {}, b""
    if "__metadata__" in header:
        h["__metadata__"] = header["__metadata__"]
    for key, (dtype, shape, b) in tensors.items():
        h[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(b)]}
        blob += b
    text = json.dumps(h).encode()
    text += b" " * (-len(text) % 8)
    open(f"{work}/{name}.safetensors", "wb").write(struct.pack("<Q", len(text)) + text + blob)

tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
           for k, v in header.items() if k != "__metadata__"}
meta = header["__metadata__"]
write("missing_q", header, {k: v for k, v in tensors.items() if k != "q"})
t = dict(tensors); t["q"] = ("I32",) + t["q"][1:]; write("q_i32", header, t)
t = dict(tensors); s = t["q"][1]; t["q"] = ("F32", [s[1], s[0]] + s[2:], t["q"][2]); write("q_swapped", header, t)
t = dict(tensors); s = t["g"][1]; t["g"] = ("F32", [s[0] * s[1], s[2]], t["g"][2]); write("g_2dims", header, t)
for key, value in [("K", "zero"), ("K", "0"), ("broadcast", "diagonal"), ("l2norm", "2"), ("scale", "-1"),
                   ("chunk", "48"), ("chunk_tf32", "yes")]:
    h = dict(header); h["__metadata__"] = dict(meta, **{key: value}); write(f"meta_{key}_{value}", h, tensors)
open(f"{work}/garbage.safetensors", "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
# the state stored as BF16 (nearest even): a good input whose outputs follow (checked below)
t = dict(tensors); f = struct.unpack(f"<{len(t['state'][2]) // 4}I", t["state"][2])
t["state"] = ("BF16", t["state"][1], struct.pack(f"<{len(f)}H", *[(u + 0x7FFF + ((u >> 16) & 1)) >> 16 for u in f]))
write("good_state_bf16", header, t)
open(f"{work}/truncated.safetensors", "wb").write(raw[: len(raw) // 2])
PY
[ $? -eq 0 ] || { fail "could not derive the bad input files"; echo "test_cli: $passed passed, $failed failed"; exit 1; }
for bad in "$work"/missing_q "$work"/q_i32 "$work"/q_swapped "$work"/g_2dims "$work"/meta_* \
           "$work"/garbage "$work"/truncated "$work"/does_not_exist; do
  bad=${bad%.safetensors}
  out=$work/out_$(basename "$bad").safetensors
  if "$gdn" op gated_delta_net --in "$bad.safetensors" --out "$out" --backend cpu 2>"$work/err"; then
    fail "$(basename "$bad"): accepted"
  elif [ ! -s "$work/err" ]; then
    fail "$(basename "$bad"): no message"
  elif [ -e "$out" ]; then
    fail "$(basename "$bad"): output file left behind"
  else
    ok; echo "rejected $(basename "$bad"): $(head -c 160 "$work/err")"
  fi
done
# a BF16 state: states come back BF16, o and states close to the F32 golden outputs (the
# differences are the BF16 roundings of the state, a few 1e-3 relative)
if "$gdn" op gated_delta_net --in "$work/good_state_bf16.safetensors" --out "$work/out_bf16.safetensors" \
  --backend cpu 2>"$work/err" && python3 - "$work/out_bf16.safetensors" "$golden" <<'PY'
import json, math, struct, sys
def load(path):
    raw = open(path, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b = data[v["data_offsets"][0]:v["data_offsets"][1]]
        if v["dtype"] == "BF16":
            out[k] = (v["dtype"], [struct.unpack("<f", struct.pack("<I", h << 16))[0]
                                   for h in struct.unpack(f"<{len(b) // 2}H", b)])
        else:
            out[k] = (v["dtype"], list(struct.unpack(f"<{len(b) // 4}f", b)))
    return out
got, want = load(sys.argv[1]), load(sys.argv[2])
assert got["states"][0] == "BF16" and got["o"][0] == "F32", (got["states"][0], got["o"][0])
for name in ("o", "states"):
    g, w = got[name][1], want[f"expected_{name}" if f"expected_{name}" in want else name][1]
    rel = math.sqrt(sum((a - b) ** 2 for a, b in zip(g, w)) / sum(b * b for b in w))
    assert len(g) == len(w) and 0 < rel < 2e-2, (name, rel)
PY
then ok; else fail "gdn op with a BF16 state: $(cat "$work/err")"; fi
"$gdn" op gated_delta_net --in "$golden" --out "$work/x.safetensors" --backend tpu 2>/dev/null \
  && fail "unknown backend accepted" || ok
"$gdn" op gated_delta_net --in "$golden" --out "$work/nodir/x.safetensors" --backend cpu 2>/dev/null \
  && fail "unwritable output accepted" || ok

# gdn bench --stack on the CPU: one JSON object per row, passes off and on per (T, B), and the
# two rows of a pair compute the same thing (same checksum), with fewer copies when on; also with
# BF16 state pools (the gathers and the snapshot tail then move BF16 bits, so the passes change
# nothing either)
for shape in "" "--tokens 4 --K 4" "--tokens 4 --K 4 --state bf16" "--tokens 4 --K 4 --gates fused --l2norm op"; do
  # shellcheck disable=SC2086
  if "$gdn" bench --stack --backend cpu --layers 2 --batch 1 --reps 2 --scheme snapshot --json $shape >"$work/stack.json" 2>"$work/err"; then
    if python3 - "$work/stack.json" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert rows and all(r["scheme"] == "snapshot" and r["layers"] == 2 and r["B"] == 1 for r in rows), rows
keys = ("backend", "scheme", "passes", "T", "K", "B", "layers", "us_per_step", "state_bytes_per_step",
        "copies", "launches", "checksum", "cache_bytes_per_sequence", "state")
assert all(all(k in r for k in keys) for r in rows), "missing keys"
pairs = {}
for r in rows:
    pairs.setdefault((r["T"], r["K"], r["B"]), {})[r["passes"]] = r
for key, p in pairs.items():
    assert set(p) == {"on", "off"}, (key, list(p))
    assert p["on"]["checksum"] == p["off"]["checksum"], (key, p["on"]["checksum"], p["off"]["checksum"])
    assert p["on"]["copies"] < p["off"]["copies"], key
    assert p["on"]["copies"] == 0 and p["on"]["gathers"] == 0, (key, p["on"]["copies"], p["on"]["gathers"])
    assert p["on"]["state_bytes_per_step"] < p["off"]["state_bytes_per_step"], key
print("bench --stack:", len(rows), "rows,", ", ".join(f"T={k[0]} B={k[2]} checksum {p['on']['checksum']}"
                                                   for k, p in pairs.items()))
PY
    then ok; else fail "gdn bench --stack $shape: rows do not check out: $(cat "$work/stack.json")"; fi
  else
    fail "gdn bench --stack $shape: $(cat "$work/err")"
  fi
done
# the gates fused into one gdn_gates node compute the same floats as the chain of six: the same
# checksum, five nodes fewer per layer
if "$gdn" bench --stack --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --K 4 --passes on --json \
    >"$work/chain.json" 2>"$work/err" &&
  "$gdn" bench --stack --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --K 4 --passes on --gates fused --json \
    >"$work/fused.json" 2>>"$work/err" && python3 - "$work/chain.json" "$work/fused.json" <<'PY'
import json, sys
chain, fused = (json.loads(open(f).read().strip()) for f in sys.argv[1:])
assert chain["gates"] == "chain" and fused["gates"] == "fused", (chain["gates"], fused["gates"])
assert chain["checksum"] == fused["checksum"], (chain["checksum"], fused["checksum"])
assert fused["nodes"] == chain["nodes"] - 5, (chain["nodes"], fused["nodes"])
PY
then ok; else fail "gdn bench --stack --gates fused: $(cat "$work/err")"; fi
# the replay scheme's rows: same checksum with the passes off and on and whatever the ring
if "$gdn" bench --stack --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --scheme replay --json >"$work/r4.json" 2>"$work/err" &&
  "$gdn" bench --stack --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --scheme replay --ring 9 --json >"$work/r9.json" 2>>"$work/err" &&
  python3 - "$work/r4.json" "$work/r9.json" <<'PY'
import json, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
assert len(rows) == 4 and all(r["scheme"] == "replay" for r in rows), rows
assert len({r["checksum"] for r in rows}) == 1, [r["checksum"] for r in rows]
assert {r["ring"] for r in rows} == {4, 9}, rows
assert all(r["copies"] == 0 and r["gathers"] == 0 for r in rows if r["passes"] == "on"), rows
PY
then ok; else fail "gdn bench --stack --scheme replay: $(cat "$work/err")"; fi
# the op bench's schemes: a snapshot row (K states) and replay rows (one state and a ring) whose
# cycles and bytes follow from T, L and the tokens kept: L=4: commit every step (2 steps until
# the ring position repeats); L=12: fold 4, 8, 12 tokens, commit on the third.
if "$gdn" bench --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --json >"$work/op4.json" 2>"$work/err" &&
  "$gdn" bench --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --scheme replay --ring 12 --json >"$work/op12.json" 2>>"$work/err" &&
  "$gdn" bench --backend cpu --layers 2 --batch 1 --reps 1 --tokens 4 --scheme replay --accept 1 --json >"$work/op1.json" 2>>"$work/err" &&
  python3 - "$work/op4.json" "$work/op12.json" "$work/op1.json" <<'PY'
import json, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
assert [r["scheme"] for r in rows] == ["snapshot", "replay", "replay", "replay"], rows
snap, r4, r12, r1 = rows
state = 32 * 128 * 128 * 4                           # one sequence's state of one layer
token = (16 * 128 + 32 * 128 + 32) * 4              # one ring entry: k, delta, g
io = 4 * (2 * 16 * 128 + 2 * 32 * 128 + 2 * 32) * 4  # q, k, v, o, g, beta of 4 tokens
assert snap["K"] == 4 and snap["cache_bytes_per_sequence"] == 2 * 4 * state, snap
assert r4["ring"] == 4 and r4["steps_in_cycle"] == 2 and r4["cache_bytes_per_sequence"] == 2 * (state + 8 * token), r4
assert r4["min_bytes_per_layer"] == io + 2 * state + 8 * token, r4   # fold 4 + commit, append 4
# the fold pattern repeats every 3 steps; the ring start (16 positions, +12 per commit) every 12
assert r12["ring"] == 12 and r12["steps_in_cycle"] == 12, r12
assert abs(r12["min_bytes_per_layer"] - (io + 4 * state / 3 + (8 + 12 + 16) / 3 * token)) < 1, r12
# one token kept: fold 1 + commit every step, the pending token walking the 8 ring positions
assert r1["accept"] == 1 and r1["steps_in_cycle"] == 8, r1
assert r1["min_bytes_per_layer"] == io + 2 * state + 5 * token, r1
assert all(r["us_per_layer"] > 0 for r in rows), rows
PY
then ok; else fail "gdn bench --scheme: $(cat "$work/op4.json" "$work/op12.json" "$work/op1.json" "$work/err")"; fi
"$gdn" bench --backend cpu --tokens 4 --ring 3 >/dev/null 2>&1 && fail "ring shorter than T accepted" || ok
"$gdn" bench --backend cpu --scheme sideways >/dev/null 2>&1 && fail "bad bench --scheme accepted" || ok
"$gdn" bench --stack --backend cpu --passes sideways >/dev/null 2>&1 && fail "bad --passes accepted" || ok
"$gdn" bench --stack --backend cpu --scheme sideways >/dev/null 2>&1 && fail "bad --scheme accepted" || ok
"$gdn" bench --stack --help >"$work/help" 2>&1 && grep -q -- '--passes' "$work/help" && ok || fail "gdn bench --stack --help"
# gdn bench --prefill: one JSON row per (T, B), both forms timed, errors against float64 small
"$gdn" bench --prefill --help >"$work/help" 2>&1 && grep -q -- '--chunk' "$work/help" && ok || fail "gdn bench --prefill --help"
if "$gdn" bench --prefill --backend cpu --tokens 40,100 --reps 1 --check --json >"$work/prefill.json" 2>"$work/err" &&
  python3 - "$work/prefill.json" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [(r["T"], r["B"]) for r in rows] == [(40, 1), (100, 1)], rows
for r in rows:
    assert r["serial_ms"] > 0 and r["chunked_ms"] > 0 and r["chunk"] == 32, r
    assert r["serial_o_max_rel"] < 1e-5 and r["chunked_o_max_rel"] < 1e-4 and r["chunked_state_max_rel"] < 1e-4, r
    assert r["auto"] == ("chunked" if r["T"] >= 64 else "serial"), r
PY
then ok; else fail "gdn bench --prefill: $(cat "$work/prefill.json" "$work/err")"; fi
"$gdn" bench --prefill --backend cpu --chunk 48 >/dev/null 2>&1 && fail "bad --chunk accepted" || ok

# gdn check spec: speculative decoding with rollback against sequential decoding, bit for bit,
# on the CPU (every acceptance pattern) and on CUDA where present.
for accept in random all none 2; do
  if "$gdn" check spec --backend cpu --steps 150 --accept "$accept" --json >"$work/spec.json" 2>"$work/err" &&
    grep -q '"identical":true' "$work/spec.json" && grep -q '"max_abs_diff":0,' "$work/spec.json"; then ok
  else fail "gdn check spec --accept $accept: $(cat "$work/spec.json" "$work/err")"; fi
done
for ring in 4 9; do
  if "$gdn" check spec --backend cpu --scheme replay --ring $ring --steps 150 --json >"$work/spec.json" 2>"$work/err" &&
    grep -q '"identical":true' "$work/spec.json" && grep -q '"scheme":"replay"' "$work/spec.json"; then ok
  else fail "gdn check spec --scheme replay --ring $ring: $(cat "$work/spec.json" "$work/err")"; fi
done
# sequences with their own token counts in one step (padded to the step's T), both schemes
for scheme in snapshot replay; do
  if "$gdn" check spec --backend cpu --scheme $scheme --mixed --steps 150 --json >"$work/spec.json" 2>"$work/err" &&
    grep -q '"identical":true' "$work/spec.json" && grep -q '"mixed":true' "$work/spec.json"; then ok
  else fail "gdn check spec --scheme $scheme --mixed: $(cat "$work/spec.json" "$work/err")"; fi
done
# BF16 state storage: rounded after every token, so verify-and-rollback is still bit-exact
for scheme in snapshot replay; do
  if "$gdn" check spec --backend cpu --scheme $scheme --state bf16 --steps 150 --json \
    >"$work/spec.json" 2>"$work/err" &&
    grep -q '"identical":true' "$work/spec.json" && grep -q '"state_dtype":"bf16"' "$work/spec.json"; then ok
  else fail "gdn check spec --scheme $scheme --state bf16: $(cat "$work/spec.json" "$work/err")"; fi
done
# the block's fused variants (gates in one node, q/k normalised inside the GDN op, whose replay
# fold then normalises the ring's k itself): still bit-identical to sequential decoding
for scheme in snapshot replay; do
  if "$gdn" check spec --backend cpu --scheme $scheme --gates fused --l2norm op --steps 150 --json \
    >"$work/spec.json" 2>"$work/err" && grep -q '"identical":true' "$work/spec.json"; then ok
  else fail "gdn check spec --scheme $scheme --gates fused --l2norm op: $(cat "$work/spec.json" "$work/err")"; fi
done
# gdn check bf16: the BF16 state's error against the F32 state's over 2000 decode steps stays
# bounded; --max-error 0 must fail (the error is measured, not assumed)
if "$gdn" check bf16 --backend cpu --json >"$work/bf16.json" 2>"$work/err" && python3 - "$work/bf16.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read())
assert r["ok"] and r["finite"] and r["steps"] == 2000, r
assert 0 < r["output_error_max"] <= 0.05, r
assert 0 < r["state_error"] < 3 * r["bf16_round_error"], r  # no drift: about one rounding's worth
assert r["output_error_1"] == 0, r  # the first token sees the zero state, exact in BF16
PY
then ok; else fail "gdn check bf16: $(cat "$work/bf16.json" "$work/err")"; fi
"$gdn" check bf16 --backend cpu --steps 50 --max-error 0 >/dev/null 2>&1 && fail "check bf16 --max-error 0 passed" || ok
"$gdn" check bf16 --backend cpu --shape huge >/dev/null 2>&1 && fail "bad check bf16 --shape accepted" || ok
"$gdn" check spec --backend cpu --scheme replay --ring 3 >/dev/null 2>&1 && fail "--ring below --tokens accepted" || ok
if "$gdn" check spec --backend cuda --steps 500 --scheme replay --mixed --json >"$work/spec.json" 2>"$work/err"; then
  grep -q '"identical":true' "$work/spec.json" && ok || fail "gdn check spec replay on cuda: $(cat "$work/spec.json")"
elif grep -q "cannot open the cuda backend" "$work/err"; then
  ok
else
  fail "gdn check spec --backend cuda --scheme replay: $(cat "$work/spec.json" "$work/err")"
fi
if "$gdn" check spec --backend cuda --steps 500 --json >"$work/spec.json" 2>"$work/err"; then
  grep -q '"identical":true' "$work/spec.json" && ok || fail "gdn check spec on cuda: $(cat "$work/spec.json")"
elif grep -q "cannot open the cuda backend" "$work/err"; then
  ok; echo "check spec on cuda: skipped"
else
  fail "gdn check spec --backend cuda: $(cat "$work/spec.json" "$work/err")"
fi
"$gdn" check spec --backend cpu --tokens 3 --accept 4 >/dev/null 2>&1 && fail "--accept above --tokens accepted" || ok
"$gdn" check spec --backend cpu --scheme sideways >/dev/null 2>&1 && fail "bad check --scheme accepted" || ok
"$gdn" check spec --help 2>&1 | grep -q -- '--accept' && ok || fail "gdn check spec --help"

echo "test_cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
