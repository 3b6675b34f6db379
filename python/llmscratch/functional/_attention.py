"""Scaled dot-product attention with causal/user masks and grouped kv heads (op "attention",
cpp/ops/attention.cpp). The op also returns the log-sum-exp of each score row, which its
FlashAttention-style backward uses to recompute the probabilities."""
import math
import numbers

import llmscratch_core as _core

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None,
                                 return_lse=False):
    """softmax(q k^T * scale + mask) v for q (B, NH, T, HS) and k, v (B, NKV, S, HS).

    NH must be a multiple of NKV (GQA: query head h uses kv head h // (NH // NKV)). attn_mask is
    bool (True = attend) or float (added to the scores), broadcastable to (B, NH, T, S).
    is_causal hides key s from query t when s > t + (S - T): aligned to the bottom right, which
    matches torch's top-left is_causal when T == S and suits a query block at the end of a kv
    cache when T < S. A query row that sees no key gives zeros (torch gives NaN there).
    scale defaults to 1 / sqrt(HS). return_lse=True also returns lse (B, NH, T).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor, got "
                            f"{type(t).__name__}")
    if attn_mask is not None and not isinstance(attn_mask, _core.Tensor):
        raise TypeError("scaled_dot_product_attention: attn_mask must be a Tensor or None, got "
                        f"{type(attn_mask).__name__}")
    attrs = {"causal": bool(is_causal)}
    if scale is not None:
        if not isinstance(scale, numbers.Real):
            raise TypeError(f"scaled_dot_product_attention: scale must be a number, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scaled_dot_product_attention: scale must be finite, got {scale!r}")
        attrs["scale"] = float(scale)
    out, lse = _core.call("attention", [q, k, v, attn_mask], attrs)
    return (out, lse) if return_lse else out
