"""Autoregressive sampling: temperature, top-k and top-p (nucleus) filtering, with the random
draws taken from the Philox generator so a seed fixes the output.

A model that accepts `kv_cache` (an object it fills and reuses) and `start_pos` is decoded
incrementally: the prompt runs once, then each new token runs alone against the cache. Other
models are run on the whole sequence for every token."""
import inspect

import numpy as np

from . import _creation
from .autograd import no_grad


def filter_logits(logits: np.ndarray, temperature=1.0, top_k=None, top_p=None) -> np.ndarray:
    """Probabilities (B, V) after temperature, top-k and top-p; temperature 0 means greedy."""
    logits = logits.astype(np.float64)
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(len(logits)), logits.argmax(-1)] = 1.0
        return probs
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, -1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = np.cumsum(sorted_p, -1) - sorted_p >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    return probs


def _draw(probs: np.ndarray) -> np.ndarray:
    """One index per row, by inverting the CDF at a Philox uniform."""
    u = _creation.rand(probs.shape[0], dtype=None).numpy().astype(np.float64)
    cdf = np.cumsum(probs, -1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(-1)
    return np.minimum(idx, probs.shape[-1] - 1)


def _supports_cache(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "kv_cache" in params and "start_pos" in params


@no_grad()
def generate(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             block_size=None, eos_id=None, use_cache=True):
    """Extend ids (B, T) int64 by up to max_new_tokens; returns the (B, T + n) int64 array."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    model.eval()
    cached = use_cache and _supports_cache(model)
    cache = model.new_kv_cache(ids.shape[0]) if cached and hasattr(model, "new_kv_cache") else {}
    pos = 0
    for _ in range(max_new_tokens):
        if cached:
            window = ids[:, pos:]
            logits = model(_creation.tensor(window), kv_cache=cache, start_pos=pos)
            pos = ids.shape[1]
        else:
            window = ids if block_size is None else ids[:, -block_size:]
            logits = model(_creation.tensor(window))
        last = np.asarray(logits[:, -1].float())
        nxt = _draw(filter_logits(last, temperature, top_k, top_p))
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if eos_id is not None and (nxt == eos_id).all():
            break
    return ids
