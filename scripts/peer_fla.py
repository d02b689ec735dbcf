#!/usr/bin/env python3
"""peer_fla.py: time fla's Triton fused_recurrent Gated DeltaNet forward (flash-linear-attention,
fused_recurrent_gated_delta_rule_fwd) on the shapes `gdn bench` uses, under the same conditions,
so that scripts/side_by_side.sh can print both in one table.

fla is not part of this repository: point --fla at a directory holding its `fla` package (a
checkout of github.com/fla-org/flash-linear-attention). Only fla.utils, fla.ops.utils and
fla.ops.gated_delta_rule are imported (their package __init__ files that would import every other
op, and their optional dependencies, are skipped).

Conditions, as in `gdn bench`: Qwen3.6-35B-A3B GDN shapes (Hk 16, Hv 32, D 128), FP32 state in
our layout ([Hv][Dv][Dk]: fla's state_v_first=True), l2norm off, scale 1/sqrt(D), gates given as
log-decay g and beta; a step is 30 layer calls over distinct buffer sets (state from DRAM) or
--distinct N sets, captured once as a CUDA graph and replayed; the median step time over
--reps replays is divided by the layer count. fla's fused_recurrent writes the final state only
(no snapshots), so its row matches `gdn bench --tokens T --K 1`. Before timing, one call is
checked against a float64 recurrence written here (so the harness is known to call it right).
"""
import argparse
import importlib
import json
import math
import os
import re
import sys
import types

HK, HV, D = 16, 32, 128


def import_fla(root):
    """fla.ops.gated_delta_rule.fused_recurrent from the checkout at `root`, with the package
    __init__ files of fla, fla.ops, fla.ops.utils and fla.ops.gated_delta_rule stubbed out."""
    pkg = os.path.join(root, "fla")
    if not os.path.isdir(pkg):
        sys.exit(f"peer_fla.py: no fla package under {root}")
    for name, rel in (("fla", ""), ("fla.ops", "ops"), ("fla.ops.utils", "ops/utils"),
                      ("fla.ops.gated_delta_rule", "ops/gated_delta_rule")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(pkg, rel)]
        sys.modules[name] = module
    # fla.utils reads the package version; take it from the skipped __init__.py
    init = os.path.join(pkg, "__init__.py")
    found = re.search(r'__version__ = "([^"]+)"', open(init).read()) if os.path.exists(init) else None
    sys.modules["fla"].__version__ = found.group(1) if found else "0"
    return importlib.import_module("fla.ops.gated_delta_rule.fused_recurrent")


def reference(q, k, v, g, beta, h0, scale):
    """Float64 recurrence, our layout: S[v][k]; S <- e^g S; d = beta (v - S k); S += d k^T; o = S q."""
    import torch
    B, T = q.shape[0], q.shape[1]
    S = h0.double().clone()
    o = torch.empty(v.shape, dtype=torch.float64, device=v.device)
    for t in range(T):
        qt = q[:, t].double().repeat_interleave(HV // HK, dim=1) * scale  # fla: head h reads h // (HV/HK)
        kt = k[:, t].double().repeat_interleave(HV // HK, dim=1)
        S = S * torch.exp(g[:, t].double())[:, :, None, None]
        d = beta[:, t].double()[:, :, None] * (v[:, t].double() - torch.einsum("bhvk,bhk->bhv", S, kt))
        S = S + d[:, :, :, None] * kt[:, :, None, :]
        o[:, t] = torch.einsum("bhvk,bhk->bhv", S, qt)
    return o, S


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fla", required=True, help="directory holding fla's `fla` package")
    ap.add_argument("--batch", default="1,8,64,256")
    ap.add_argument("--tokens", default="1,4")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--distinct", type=int, default=0, help="buffer sets (0: one per layer within 24 GiB)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    fr = import_fla(args.fla)
    forward = fr.fused_recurrent_gated_delta_rule_fwd
    dev = torch.device("cuda")
    scale = 1.0 / math.sqrt(D)
    torch.manual_seed(0)

    def uniform(shape, lo, hi):
        return torch.empty(shape, device=dev, dtype=torch.float32).uniform_(lo, hi)

    def make_set(B, T):
        return dict(q=uniform((B, T, HK, D), -0.15, 0.15), k=uniform((B, T, HK, D), -0.15, 0.15),
                    v=uniform((B, T, HV, D), -1, 1), g=uniform((B, T, HV), -2.0, -0.01),
                    beta=uniform((B, T, HV), 0, 1), h0=uniform((B, HV, D, D), -0.1, 0.1))

    def call(s):
        return forward(q=s["q"], k=s["k"], v=s["v"], g=s["g"], beta=s["beta"], scale=scale, initial_state=s["h0"],
                       output_final_state=True, use_qk_l2norm_in_kernel=False, state_v_first=True)

    # The harness calls fla right: one small call against the float64 recurrence.
    s = make_set(2, 4)
    o, ht = call(s)
    ro, rs = reference(s["q"], s["k"], s["v"], s["g"], s["beta"], s["h0"], scale)
    err_o = ((o.double() - ro).norm() / ro.norm()).item()
    err_s = ((ht.double() - rs).norm() / rs.norm()).item()
    if not (err_o < 1e-5 and err_s < 1e-5):
        sys.exit(f"peer_fla.py: fla's output differs from the float64 recurrence (o {err_o:.3g}, state {err_s:.3g})")
    if not args.json:
        print(f"fla fused_recurrent vs float64 recurrence: o {err_o:.2e}, state {err_s:.2e} (relative L2)")

    name = torch.cuda.get_device_name()
    for T in [int(x) for x in args.tokens.split(",")]:
        for B in [int(x) for x in args.batch.split(",")]:
            io = 4 * (2 * B * T * HK * D + 2 * B * T * HV * D + 2 * B * T * HV)
            state = 4 * B * HV * D * D
            per_set = io + 2 * state  # inputs, o, h0 and the final state fla allocates
            sets = args.distinct or max(1, min(args.layers, (24 << 30) // per_set))
            bufs = [make_set(B, T) for _ in range(sets)]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # compile and warm up outside the capture
                for i in range(3):
                    call(bufs[i % sets])
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for layer in range(args.layers):
                    call(bufs[layer % sets])
            times = []
            for rep in range(args.reps + 2):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                stop.record()
                stop.synchronize()
                if rep >= 2:
                    times.append(start.elapsed_time(stop) * 1e3)
            times.sort()
            us = times[len(times) // 2] / args.layers
            min_bytes = io + 2 * state
            row = dict(peer="fla fused_recurrent", device=name, T=T, K=1, B=B, layers=args.layers, sets=sets,
                       reps=args.reps, us_per_layer=round(us, 3), min_bytes_per_layer=min_bytes,
                       gbps=round(min_bytes / (us * 1e-6) / 1e9, 1))
            print(json.dumps(row) if args.json else
                  f"fla   T={T} K=1 B={B:4d}  {us:10.2f} us/layer  {row['gbps']:8.1f} GB/s  ({sets} buffer sets)")
            del graph, bufs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
