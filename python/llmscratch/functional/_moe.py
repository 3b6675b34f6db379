"""Mixture-of-Experts dispatch ops (cpp/ops/moe.cpp): token permutation by expert, grouped matmul
over per-expert row segments, and the gate-weighted combine back to token order.

    token, row, offsets, counts = moe_permute(expert_ids (N, k), E, capacity=None)
    x_sorted = index_select(x, 0, token)                      (N*k, C)
    h = grouped_matmul(x_sorted, w (E, C, H), offsets)        (N*k, H)
    out = moe_combine(h, gates (N, k), row)                   (N, H)

Every index tensor is int64 with a fixed size, so nothing needs to reach the host.
"""
import numbers

import llmscratch_core as _core

from ._checks import require_int as _int, require_tensor as _tensor

__all__ = ["moe_permute", "grouped_matmul", "moe_combine"]


def moe_permute(expert_ids, n_experts, capacity=None):
    """Sort the N*k (token, slot) assignments by expert (stable counting sort).

    Returns (token (N*k,), row (N, k), offsets (E+1,), counts (E,)): sorted row r holds token
    token[r]; expert e owns rows offsets[e]:offsets[e+1]; row[n, s] is where assignment (n, s)
    went, -1 if dropped; counts[e] is expert e's load before dropping. capacity=None is dropless;
    an int keeps at most that many assignments per expert (first choices first)."""
    _tensor(expert_ids, "expert_ids", "moe_permute")
    if expert_ids.dtype not in (_core.DType.int32, _core.DType.int64):
        raise TypeError(f"moe_permute: expert_ids must be int32 or int64, got {expert_ids.dtype}")
    if capacity is not None and (not isinstance(capacity, numbers.Integral)
                                 or isinstance(capacity, bool) or capacity < 0):
        raise ValueError(f"moe_permute: capacity must be None or a non-negative int, got {capacity!r}")
    n_experts = _int(n_experts, "n_experts", "moe_permute")
    cap = -1 if capacity is None else int(capacity)
    return tuple(_core.call("moe_permute", [expert_ids], {"n_experts": n_experts, "capacity": cap}))


def grouped_matmul(x, w, offsets, transpose_w=False):
    """y[r] = x[r] @ w[e] for the rows r of segment e (offsets (E+1,) int64); rows past
    offsets[E] are 0. transpose_w: w is (E, N, K) and y[r] = x[r] @ w[e]^T."""
    _tensor(x, "x", "grouped_matmul")
    _tensor(w, "w", "grouped_matmul")
    _tensor(offsets, "offsets", "grouped_matmul")
    return _core.call("grouped_matmul", [x, w, offsets], {"transpose_w": bool(transpose_w)})[0]


def moe_combine(y, gates, row):
    """out[n] = sum_s gates[n, s] * y[row[n, s]], skipping row = -1 (dropped assignments). The
    kept rows must be distinct, as moe_permute gives them (each gradient row comes from one
    assignment): the CPU refuses a repeated one; the GPU backends do not check."""
    _tensor(y, "y", "moe_combine")
    _tensor(gates, "gates", "moe_combine")
    _tensor(row, "row", "moe_combine")
    return _core.call("moe_combine", [y, gates, row], {})[0]
