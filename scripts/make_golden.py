#!/usr/bin/env python3
"""Make golden vectors for the gated_delta_net op from an implementation we did not write: the torch
reference functions of Hugging Face transformers (Qwen3-Next modeling code). Run on a machine with
torch and transformers (a GPU is used when present, with TF32 off):

    python3 scripts/make_golden.py OUTDIR

Each OUTDIR/gdn_golden_<name>.safetensors holds the op's inputs in the layout of `gdn op`
(q, k [B,T,Hk,Dk]; v [B,T,Hv,Dv]; g, beta [B,T,Hv]; state [B,Hv,Dv,Dk]) with its metadata
(K, broadcast, l2norm), and the expected outputs computed by transformers:
  expected_o       [B,T,Hv,Dv]           torch_recurrent_gated_delta_rule on the whole sequence
  expected_states  [N,B,Hv,Dv,Dk]        newest first: the state after the last T-s tokens,
                                         from the same function run on each prefix
  expected_o_chunk [B,T,Hv,Dv]           torch_chunk_gated_delta_rule (a second algorithm)
transformers computes in float32, so the expected values carry float32 rounding. The prefill_*
cases are long enough for the op's own chunked form, which test_golden also runs.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.models.qwen3_next import modeling_qwen3_next as hf  # noqa: E402

# name, B, T, Hk, Hv, D, K, broadcast, l2norm
CASES = [
    ("interleaved_l2", 2, 5, 2, 4, 32, 3, "interleaved", 1),
    ("tiled_plain", 1, 4, 2, 6, 64, 4, "tiled", 0),
    ("decode_d128", 3, 1, 1, 2, 128, 1, "interleaved", 1),
    ("k_above_t", 1, 7, 2, 2, 16, 9, "tiled", 1),
    # long enough for the op's chunked form (prefill): several chunks, then the last K token by token
    ("prefill_t200", 1, 200, 2, 4, 64, 2, "interleaved", 1),
    ("prefill_t150", 2, 150, 1, 2, 32, 1, "tiled", 1),
]


def expand_heads(x, Hv, broadcast):
    """[B,T,Hk,D] -> [B,T,Hv,D] by our broadcast rule (transformers expects equal head counts)."""
    r = Hv // x.shape[2]
    if r == 1:
        return x
    if broadcast == "interleaved":  # value head h reads key head h // r, as transformers' model does
        return x.repeat_interleave(r, dim=2)
    return x.repeat(1, 1, r, 1)  # tiled: value head h reads key head h % Hk, as ggml does


def run_recurrent(q, k, v, g, beta, state_kv, l2norm):
    out, final = hf.torch_recurrent_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=state_kv, output_final_state=True,
        use_qk_l2norm_in_kernel=bool(l2norm))
    return out, final


def make_case(name, B, T, Hk, Hv, D, K, broadcast, l2norm, device, outdir, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hk, D, generator=gen)
    k = torch.randn(B, T, Hk, D, generator=gen)
    if not l2norm:  # keep |k| near 1 so the recurrence stays stable, as normalised keys do
        k = k / D ** 0.5
    v = torch.randn(B, T, Hv, D, generator=gen)
    # log-decay in [-20, -1e-4], log-uniform; beta in [0, 1]
    u = torch.rand(B, T, Hv, generator=gen)
    g = -torch.exp(torch.log(torch.tensor(1e-4)) + u * (torch.log(torch.tensor(20.0)) - torch.log(torch.tensor(1e-4))))
    beta = torch.rand(B, T, Hv, generator=gen)
    state = 0.1 * torch.randn(B, Hv, D, D, generator=gen)  # ours: [B,Hv,Dv,Dk]

    dev = lambda x: x.to(device)  # noqa: E731
    qe, ke = dev(expand_heads(q, Hv, broadcast)), dev(expand_heads(k, Hv, broadcast))
    state_kv = dev(state.transpose(-1, -2).contiguous())  # transformers: [B,H,Dk,Dv]
    o, _ = run_recurrent(qe, ke, dev(v), dev(g), dev(beta), state_kv, l2norm)
    N = min(T, K)
    snaps = []
    for s in range(N):  # state after token T-1-s: run the prefix of T-s tokens
        n = T - s
        _, final = run_recurrent(qe[:, :n], ke[:, :n], dev(v)[:, :n], dev(g)[:, :n], dev(beta)[:, :n],
                                 state_kv, l2norm)
        snaps.append(final.transpose(-1, -2).contiguous().cpu())
    o_chunk, _ = hf.torch_chunk_gated_delta_rule(
        qe, ke, dev(v), g=dev(g), beta=dev(beta), initial_state=state_kv, output_final_state=True,
        use_qk_l2norm_in_kernel=bool(l2norm))
    tensors = {
        "q": q, "k": k, "v": v, "g": g, "beta": beta, "state": state,
        "expected_o": o.cpu(), "expected_states": torch.stack(snaps), "expected_o_chunk": o_chunk.cpu(),
    }
    tensors = {key: t.float().contiguous() for key, t in tensors.items()}
    meta = {"K": str(K), "broadcast": broadcast, "l2norm": str(l2norm),
            "source": f"transformers {transformers.__version__} modeling_qwen3_next "
                      f"torch_recurrent_gated_delta_rule / torch_chunk_gated_delta_rule, torch {torch.__version__}, "
                      f"device {device}"}
    path = os.path.join(outdir, f"gdn_golden_{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    diff = (o.cpu() - o_chunk.cpu()).abs().max().item()
    print(f"{path}: B={B} T={T} Hk={Hk} Hv={Hv} D={D} K={K} {broadcast} l2norm={l2norm}; "
          f"|recurrent - chunked| max {diff:.3g}")


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/golden"
    os.makedirs(outdir, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for i, case in enumerate(CASES):
        make_case(*case, device=device, outdir=outdir, seed=1234 + i)


if __name__ == "__main__":
    main()
