"""Autoregressive sampling from a Transformer: temperature, top-k and top-p (nucleus), with a KV
cache (each new token costs one position of compute plus attention over the cache) or by full
recomputation (for checking the cache).

The uniform numbers come from llmscratch's Philox generator (one draw of B per token), so
llmscratch.manual_seed(s) fixes the tokens; the choice itself runs in float64 on the host."""
from __future__ import annotations

import numbers

import numpy as np

import llmscratch as ls
from ..autograd import no_grad
from .config import _is_real

__all__ = ["generate", "sample_next"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_sampling(where: str, temperature, top_k, top_p):
    """temperature >= 0 and finite (0: greedy), top_k a positive integer, top_p in (0, 1]; bools
    are not numbers here."""
    if not _is_real(temperature) or temperature < 0:
        raise ValueError(f"{where}: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k <= 0):
        raise ValueError(f"{where}: top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"{where}: top_p must be in (0, 1], got {top_p!r}")


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, uniform: np.ndarray | None = None) -> np.ndarray:
    """Next ids (B,) from last-position logits (B, V). temperature 0 is greedy (argmax; ties to
    the lowest id). top_k keeps the k largest logits, top_p the smallest set of most likely ids
    whose probability reaches p; a top_k of V or more keeps every id. uniform: (B,) numbers in
    [0, 1) (drawn from llmscratch.rand when None)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"sample_next: logits must be (B, V), got shape {z.shape}")
    _check_sampling("sample_next", temperature, top_k, top_p)
    B = z.shape[0]
    if uniform is not None:
        uniform = np.asarray(uniform, dtype=np.float64)
        if uniform.shape != (B,) or not ((uniform >= 0) & (uniform < 1)).all():
            raise ValueError(f"sample_next: uniform must be {B} numbers in [0, 1)")
    return _sample(z, temperature, top_k, top_p, uniform)


def _sample(z: np.ndarray, temperature, top_k, top_p, uniform) -> np.ndarray:
    """sample_next on float64 logits z (B, V) and arguments already checked (generate checks
    them once, not at every token)."""
    B, V = z.shape
    if temperature == 0:
        return z.argmax(axis=1)
    z = z / float(temperature)
    if top_k is not None:
        if top_k < V:
            kth = np.sort(z, axis=1)[:, V - top_k][:, None]
            z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if top_p is not None:
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p      # mass of the more likely ids
        keep_sorted = before < top_p                          # always keeps the first
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=1, keepdims=True)
    if uniform is None:
        uniform = np.asarray(ls.rand(B, dtype=ls.float64))
    cdf = np.cumsum(p, axis=1)
    # the first id whose cdf exceeds u: it has p > 0, and u < cdf[-1] keeps it in range
    u = uniform.reshape(B, 1) * cdf[:, -1:]
    return (cdf <= u).sum(axis=1)


def generate(model, ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, use_cache: bool = True):
    """ids (B, T0) int -> (B, T0 + max_new_tokens) int64, the prompt followed by sampled ids.
    T0 + max_new_tokens must fit in the model's block_size."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a non-negative integer, got "
                         f"{max_new_tokens!r}")
    _check_sampling("generate", temperature, top_k, top_p)
    if isinstance(ids, ls.Tensor):
        ids = ids.cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"generate: ids must be a (B, T0) array of integer ids with T0 >= 1, got "
                         f"shape {ids.shape} of {ids.dtype}")
    B, T0 = ids.shape
    total = T0 + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(f"generate: prompt ({T0}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"block_size {model.config.block_size}")
    tokens = ids.astype(np.int64)
    if max_new_tokens == 0:
        return ls.tensor(tokens)
    device = model.wte.weight.device
    with no_grad():
        cache = model.new_kv_cache(B, total) if use_cache else None
        logits = model(ls.tensor(tokens, device=device), kv_cache=cache)
        for i in range(max_new_tokens):
            nxt = _sample(np.asarray(logits[:, -1], dtype=np.float64), temperature, top_k, top_p, None)
            tokens = np.concatenate([tokens, nxt[:, None].astype(np.int64)], axis=1)
            if i + 1 == max_new_tokens:
                break
            if use_cache:
                logits = model(ls.tensor(nxt[:, None].astype(np.int64), device=device),
                               kv_cache=cache, start_pos=T0 + i)
            else:
                logits = model(ls.tensor(tokens, device=device))
    return ls.tensor(tokens)
