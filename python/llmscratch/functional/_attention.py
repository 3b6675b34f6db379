"""Scaled dot-product attention with causal/user masks and grouped kv heads (op "attention",
cpp/ops/attention.cpp). The op also returns the log-sum-exp of each score row, which its
FlashAttention-style backward uses to recompute the probabilities."""
import math
import numbers

import llmscratch_core as _core
import numpy as np

from ..autograd import is_grad_enabled

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                                 enable_gqa=False, causal_align="top_left", return_lse=False):
    """softmax(q k^T * scale + mask) v for q (B, NH, T, HS) and k, v (B, NKV, S, HS); the
    arguments as torch's (the same positional ones), so that a call means what it means there.

    NH must be a multiple of NKV (GQA: query head h uses kv head h // (NH // NKV)), whatever
    enable_gqa says (torch needs it True for NH != NKV). attn_mask is bool (True = attend) or
    float (added to the scores), broadcastable to (B, NH, T, S); a float mask gets no gradient
    (the fused backward never forms the (T, S) score gradient), so one that requires grad is
    refused. dropout_p must be 0: attention dropout is not implemented.
    is_causal hides key s from query t when s > t, torch's rule (aligned to the top left); with
    causal_align="bottom_right" (not a torch argument) when s > t + (S - T), so that a block of T
    queries at the end of a kv cache of S keys sees the keys up to its own positions, as the
    models' generation needs (FlashAttention's causal rule; torch's causal_lower_right). The two
    agree when T == S; the kernels implement the bottom-right rule, and a top-left one with
    T != S goes to them as a mask. With attn_mask too, both apply. A query row that sees no key
    gives zeros, as torch's. scale defaults to 1 / sqrt(HS). return_lse=True also returns lse
    (B, NH, T).
    """
    op = "scaled_dot_product_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if attn_mask is not None and not isinstance(attn_mask, _core.Tensor):
        raise TypeError(f"{op}: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask is not None and attn_mask.requires_grad and is_grad_enabled():
        raise NotImplementedError(f"{op}: a float attn_mask gets no gradient here, and this one requires "
                                  "grad (a learned bias would never train); pass attn_mask.detach()")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"{op}: dropout_p must be a number, got {dropout_p!r}")
    if dropout_p != 0:
        raise NotImplementedError(f"{op}: dropout_p must be 0 (attention dropout is not implemented), "
                                  f"got {dropout_p!r}")
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa), ("return_lse", return_lse)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{op}: {name} must be a bool, got {flag!r}")
    if causal_align not in ("top_left", "bottom_right"):
        raise ValueError(f"{op}: causal_align must be 'top_left' or 'bottom_right', got {causal_align!r}")
    causal = bool(is_causal)
    if causal and causal_align == "top_left" and min(q.dim(), k.dim()) >= 2 and q.shape[-2] != k.shape[-2]:
        attn_mask, causal = _with_top_left_causal(attn_mask, q.shape[-2], k.shape[-2], q.device), False
    attrs = {"causal": causal}
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"{op}: scale must be a number, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"{op}: scale must be finite, got {scale!r}")
        attrs["scale"] = float(scale)
    out, lse = _core.call("attention", [q, k, v, attn_mask], attrs)
    return (out, lse) if return_lse else out


def _with_top_left_causal(attn_mask, T, S, device):
    """attn_mask with torch's is_causal applied (query t sees keys s <= t) as a mask of its kind."""
    visible = np.tri(T, S, dtype=bool)
    if attn_mask is not None and attn_mask.dtype != _core.DType.bool:
        bias = _core.from_numpy(np.where(visible, 0.0, -np.inf), attn_mask.dtype).to(device=device)
        return attn_mask + bias
    tri = _core.from_numpy(visible).to(device=device)
    return tri if attn_mask is None else attn_mask & tri

