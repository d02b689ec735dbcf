#!/usr/bin/env python3
"""peer_fla_chunk.py: time fla's Triton chunk_gated_delta_rule forward (flash-linear-attention) on
the shapes of `gdn bench --prefill`, so the two can be read side by side.

fla is not part of this repository: point --fla at a directory holding its `fla` package (a
checkout of github.com/fla-org/flash-linear-attention, whole: the chunked path imports
fla.modules and fla.ops.common).

Conditions, as in `gdn bench --prefill`: one GDN layer of Qwen3.6-35B-A3B (Hk 16, Hv 32, D 128),
FP32 inputs and state, q and k L2-normalised in the kernel, scale 1/sqrt(D), log-decay g in
[-1, -0.001], beta in [0, 1], an initial state and the final state written (our layout:
state_v_first=True). One call per timing, CUDA events, median of --reps after a warm-up call.
With --check, sequence 0's output at the first T is compared with a float64 recurrence (max
|x - ref| / max |ref|), as `gdn bench --prefill --check` does for ours.
"""
import argparse
import json
import os
import sys

HK, HV, D = 16, 32, 128


def reference(q, k, v, g, beta, h0, scale):
    """Float64 recurrence, our layout S[v][k], q and k L2-normalised (eps 1e-6)."""
    import torch
    q = q.double()
    k = k.double()
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    rep = HV // HK
    q = q.repeat_interleave(rep, dim=2)
    k = k.repeat_interleave(rep, dim=2)
    v, g, beta, S = v.double(), g.double(), beta.double(), h0.double().clone()
    out = torch.empty_like(v)
    for t in range(q.shape[1]):
        S = S * torch.exp(g[:, t])[..., None, None]
        sk = torch.einsum("bhvk,bhk->bhv", S, k[:, t])
        d = beta[:, t][..., None] * (v[:, t] - sk)
        S = S + d[..., None] * k[:, t][:, :, None, :]
        out[:, t] = scale * torch.einsum("bhvk,bhk->bhv", S, q[:, t])
    return out, S


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fla", required=True, help="directory holding the fla package")
    ap.add_argument("--tokens", default="512,4096,16384")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.fla))
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    scale = D ** -0.5
    checked = False
    for T in [int(x) for x in args.tokens.split(",")]:
        for B in [int(x) for x in args.batch.split(",")]:
            gen = torch.Generator(device="cuda").manual_seed(1)
            dev = dict(device="cuda", dtype=torch.float32)
            q = torch.rand(B, T, HK, D, generator=gen, **dev) * 2 - 1
            k = torch.rand(B, T, HK, D, generator=gen, **dev) * 2 - 1
            v = torch.rand(B, T, HV, D, generator=gen, **dev) * 2 - 1
            g = -0.001 - 0.999 * torch.rand(B, T, HV, generator=gen, **dev)
            beta = torch.rand(B, T, HV, generator=gen, **dev)
            h0 = (torch.rand(B, HV, D, D, generator=gen, **dev) * 2 - 1) * 0.1

            def call():
                return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=h0,
                                              output_final_state=True, use_qk_l2norm_in_kernel=True,
                                              state_v_first=True)

            o, _ = call()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            ms = sorted(times)[len(times) // 2]
            row = {"peer": "fla chunk_gated_delta_rule", "T": T, "B": B, "ms": round(ms, 4),
                   "tokens_per_s": round(B * T / ms * 1e3, 1)}
            if args.check and not checked:
                checked = True
                o_ref, _ = reference(q[:1], k[:1], v[:1], g[:1], beta[:1], h0[:1], scale)
                err = (o[:1].double() - o_ref).abs().max() / o_ref.abs().max()
                row["o_max_rel"] = float(err)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
