#!/usr/bin/env bash
# run.sh: build the safetensors fuzz target with clang's libFuzzer, ASan and UBSan, and run it.
#   fuzz/run.sh [SECONDS]     fuzz for SECONDS (default 30), starting from the seeds in
#                             fuzz/corpus/; exits nonzero if the fuzzer finds a crash, leak or
#                             sanitizer report, and keeps the crashing input for replay.
#   fuzz/run.sh --make-corpus rewrite the committed seeds in fuzz/corpus/ (python3, no numpy).
# Everything the run writes goes into a temporary directory, so the committed seeds stay as
# they are; new inputs the fuzzer finds are discarded with it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
corpus="$root/fuzz/corpus"

make_corpus() {
    mkdir -p "$corpus"
    python3 - "$corpus" <<'PY'
import json, os, struct, sys

out = sys.argv[1]

def file_bytes(header, data=b"", pad=True):
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)  # as Python's safetensors pads
    return struct.pack("<Q", len(text)) + text + data

def tensors(items, metadata=None):
    """items: (name, dtype, shape, data bytes) in file order; returns (header, data)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    return header, data

seeds = {}
h, d = tensors([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))])
seeds["valid_f32.safetensors"] = file_bytes(h, d)
h, d = tensors([
    ("a.f32", "F32", [3], struct.pack("<3f", 0.5, -1, 2)),
    ("b.f16", "F16", [1, 2], b"\x00\x3c\x00\xc0"),
    ("c.bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
    ("d.i32", "I32", [2, 1, 1], struct.pack("<2i", -7, 9)),
    ("e.f64", "F64", [], struct.pack("<d", 3.25)),
    ("f.empty", "F32", [0, 4], b""),
], metadata={"format": "pt", "note": "caf\u00e9 \"quoted\"\n"})
seeds["valid_all_dtypes.safetensors"] = file_bytes(h, d)
# keys out of order, metadata last, no padding: the data section starts unaligned
h = b'{"y":{"shape":[1],"dtype":"I32","data_offsets":[4,8]},"x":{"data_offsets":[0,4],"dtype":"I32","shape":[1]},"__metadata__":{}}'
seeds["valid_unordered.safetensors"] = file_bytes(h, struct.pack("<2i", 1, 2), pad=False)
seeds["valid_empty.safetensors"] = file_bytes({})
h, d = tensors([("s", "F32", [1, 1, 1, 1, 1, 2], struct.pack("<2f", 1, 2))])
seeds["valid_six_dims.safetensors"] = file_bytes(h, d)
h = b'{"__metadata__":{"u":"\\u00e9\\ud83d\\ude00\\t\\/"},"z":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}'
seeds["valid_escapes.safetensors"] = file_bytes(h, b"\0\0\x80\x3f")

seeds["invalid_overlap.safetensors"] = file_bytes(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
seeds["invalid_hole.safetensors"] = file_bytes(
    {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8))
seeds["invalid_dtype.safetensors"] = file_bytes(
    {"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))
seeds["invalid_json.safetensors"] = file_bytes(b'{"a":{"dtype":"F32",}}')
seeds["invalid_nesting.safetensors"] = file_bytes(b'{"__metadata__":' + b"[" * 80 + b"]" * 80 + b"}")
seeds["invalid_length.safetensors"] = struct.pack("<Q", 1 << 40) + b"{}"
seeds["invalid_number.safetensors"] = file_bytes(
    b'{"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}}', bytes(4))

for name, blob in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(blob)
print(f"wrote {len(seeds)} seeds to {out}")
PY
}

if [[ "${1:-}" == "--make-corpus" ]]; then
    make_corpus
    exit 0
fi

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -lt 1 ]]; then
    echo "usage: fuzz/run.sh [SECONDS] | --make-corpus" >&2
    exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gdn-fuzz.XXXXXX")"
keep_work=0
cleanup() { if [[ "$keep_work" == 0 ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT

# clang with the libFuzzer runtime: a one-line target must build. In CI, as root, install it.
have_libfuzzer() {
    command -v clang >/dev/null 2>&1 || return 1
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$work/probe.c"
    clang -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" >/dev/null 2>&1
}
if ! have_libfuzzer; then
    if [[ -n "${CI:-}" && "$(id -u)" == 0 ]]; then
        echo "run.sh: clang with libFuzzer not found; installing clang (CI, root)"
        apt-get install -y clang || { apt-get update && apt-get install -y clang; }
    fi
    if ! have_libfuzzer; then
        echo "run.sh: needs clang with the libFuzzer runtime (clang -fsanitize=fuzzer);" \
             "install it with 'apt-get install clang' and run again" >&2
        exit 1
    fi
fi

# Only the sources the reader needs: the rest of src/core calls into the backends.
binary="$work/fuzz_safetensors"
clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=c11 \
    -Wall -Wextra -Wshadow -I"$root/include" -I"$root/src" \
    "$root/src/core/status.c" "$root/src/core/tensor.c" "$root/src/core/json.c" \
    "$root/src/core/safetensors.c" "$root/fuzz/fuzz_safetensors.c" -o "$binary"

# Tokens the fuzzer should splice in: field names, dtypes, JSON escapes.
cat >"$work/safetensors.dict" <<'DICT'
"__metadata__"
"\"dtype\":"
"\"shape\":"
"\"data_offsets\":"
"\"F32\""
"\"F16\""
"\"BF16\""
"\"I32\""
"\"F64\""
"\\u0000"
"\\ud83d\\ude00"
"9223372036854775807"
"18446744073709551616"
"1e5"
DICT

mkdir -p "$work/corpus"
if compgen -G "$corpus/*" >/dev/null; then
    cp "$corpus"/* "$work/corpus/"
fi

echo "run.sh: fuzzing for ${seconds}s in $work"
status=0
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
    "$binary" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -dict="$work/safetensors.dict" -artifact_prefix="$work/" -print_final_stats=1 \
    "$work/corpus" 2>"$work/fuzz.log" || status=$?
tail -n 25 "$work/fuzz.log"

if [[ "$status" != 0 ]] || compgen -G "$work/crash-*" >/dev/null || compgen -G "$work/leak-*" >/dev/null ||
   compgen -G "$work/timeout-*" >/dev/null || compgen -G "$work/oom-*" >/dev/null; then
    keep_work=1
    echo "run.sh: the fuzzer found a failure (exit $status); inputs and log kept in $work" >&2
    echo "run.sh: replay with: $binary $work/<crash file>" >&2
    exit 1
fi
echo "run.sh: no failure found in ${seconds}s"
