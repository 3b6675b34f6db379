"""Every kernel family once, forward and backward, on small odd shapes, without importing torch:
the workload for compute-sanitizer's racecheck (and a quick memcheck); under pytest, which loads
torch, a racecheck pass did not get past start-up within its time limit.

    compute-sanitizer --tool racecheck --error-exitcode 9 python bench/sanitize_kernels.py
    python bench/sanitize_kernels.py --device cpu --dtypes float32   # the same calls on the CPU (a dry run)

Correctness is the test suite's job; this only has to reach each kernel, including the
shared-memory paths: row reductions, the GEMM tiles, flash attention, scans, sorts, the fused
optimizer and the MoE dispatch."""
import argparse
import sys

import numpy as np

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core


def run(device, dtype):
    rng = np.random.default_rng(0)
    float_dt = getattr(ls, dtype)

    def t(*shape, grad=False):
        x = ls.tensor(rng.standard_normal(shape), dtype=ls.float32).to(dtype=float_dt).to(device=device)
        return x.requires_grad_(True) if grad else x

    def ids(high, *shape):
        return ls.tensor(rng.integers(0, high, size=shape)).to(device=device)

    # row kernels: softmax, log_softmax, layer_norm, rms_norm, their fused residual-add variants,
    # cross-entropy (fwd + bwd)
    x, x2 = t(37, 1000, grad=True), t(37, 1000, grad=True)
    w, b = t(1000, grad=True), t(1000, grad=True)
    y = F.softmax(x, -1).sum() + F.log_softmax(x, -1).sum() + F.layer_norm(x, (1000,), w, b).sum()
    y = y + F.rms_norm(x, (1000,), w).sum() + F.cross_entropy(x, ids(1000, 37))
    for h, z in (F.add_layer_norm(x, x2, w, b), F.add_rms_norm(x, x2, w)):
        y = y + (h * z).sum()
    # the in-place pair on logits of their own, the backward's factor 2 not skipped
    y = y + 2.0 * F.cross_entropy(x * 1.0, ids(1000, 37), inplace_backward=True)
    y.backward()
    # rows long enough for the in-place kernel to split each over a cluster of blocks on Hopper
    long_rows = t(5, 40000, grad=True)
    F.cross_entropy(long_rows * 1.0, ids(40000, 5), inplace_backward=True).backward()
    # activations, RoPE, dropout
    a = t(5, 9, 4, 64, grad=True)
    cos, sin = F.rope_cache(9, 64, dtype=float_dt, device=device)
    (F.gelu(a, approximate="tanh") + F.silu(a) + F.swiglu(a, a) + F.rope(a, cos, sin)
     + F.dropout(a, 0.1)).sum().backward()
    # embedding (the backward's sort and per-row sums; runs longer than a chunk, summed in pieces)
    table = t(300, 64, grad=True)
    F.embedding(ids(300, 7, 11), table).sum().backward()
    F.embedding(ids(3, 200), table).sum().backward()
    # GEMM: both tile configs, transposed operands; split-K (few tiles, long K); an odd N (C's rows
    # not 16-byte aligned: element stores, and padded copies in the backward)
    for m, k, n in ((129, 72, 264), (2000, 136, 2104), (256, 2048, 256), (300, 64, 131)):
        p, q = t(m, k, grad=True), t(n, k, grad=True)
        (p @ q.transpose(0, 1)).sum().backward()
    # attention: the tensor-core kernels (HS 64 and 128, causal and not, GQA) and the simple one
    for hs in (64, 128, 40):
        q, k, v = t(2, 4, 77, hs, grad=True), t(2, 2, 77, hs, grad=True), t(2, 2, 77, hs, grad=True)
        for causal in (True, False):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()
    # reductions, scans, sorts, top-k, gathers
    s = t(33, 5000)
    s.sum([0]), s.sum([1]), s.max(-1), F.cumsum(s, -1), F.sort(s, -1), F.topk(s, 2), F.topk(s, 50)
    F.index_select(s, 0, ids(33, 9)), F.cat([s, s], 0)
    # the fused optimizer and the global norm, with fp32 masters of 16-bit weights
    params = [t(300, 7), t(5)]
    masters = [p_.to(dtype=ls.float32) for p_ in params]
    grads = [t(*p_.shape) for p_ in params]
    zeros = [[ls.zeros(*p_.shape, device=device) for p_ in params] for _ in range(2)]
    core.ops.adamw_step(masters, grads, zeros[0], zeros[1], 1e-3, 0.9, 0.95, 1e-8, 0.1, 1, None,
                        model_copies=params if float_dt != ls.float32 else [])
    core.ops.global_norm(grads)
    # MoE dispatch: permute, grouped GEMM (forward and weight gradient), combine
    N, E, K, C, H = 50, 4, 2, 64, 96
    experts = ids(E, N, K)
    token, row, offsets, counts = core.call("moe_permute", [experts], {"n_experts": E, "capacity": -1})
    xs = t(N * K, C, grad=True)
    we = t(E, C, H, grad=True)
    ys = core.call("grouped_matmul", [xs, we, offsets], {"transpose_w": False})[0]
    gates = t(N, K, grad=True)
    core.call("moe_combine", [ys, gates, row], {})[0].sum().backward()
    if device != "cpu":
        ls.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"])
    args = ap.parse_args()
    if args.device != "cpu" and not ls.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    for dtype in args.dtypes:
        run(args.device, dtype)
        print(f"{dtype}: every kernel family ran on {args.device}")
    assert "torch" not in sys.modules, "the sanitizer workload must not load torch"
    return 0


if __name__ == "__main__":
    sys.exit(main())
