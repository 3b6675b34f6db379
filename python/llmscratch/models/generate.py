"""Autoregressive sampling from a Transformer: temperature, top-k and top-p (nucleus), with a KV
cache (each new token costs one position of compute plus attention over the cache) or by full
recomputation (for checking the cache), optionally stopping at end-of-sequence ids.

The uniform numbers come from llmscratch's Philox generator (one draw of B per token), so
llmscratch.manual_seed(s) fixes the tokens; the choice itself runs in float64 on the host."""
from __future__ import annotations

import numbers

import numpy as np

import llmscratch as ls
import llmscratch_core as _core
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
    [0, 1) (drawn from llmscratch.rand when None). -inf masks an id; a row with a NaN or +inf
    logit, or with no finite one, is a ValueError naming the row."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"sample_next: logits must be (B, V) with V >= 1, got shape {z.shape}")
    _check_sampling("sample_next", temperature, top_k, top_p)
    B = z.shape[0]
    if uniform is not None:
        uniform = np.asarray(uniform, dtype=np.float64)
        if uniform.shape != (B,) or not ((uniform >= 0) & (uniform < 1)).all():
            raise ValueError(f"sample_next: uniform must be {B} numbers in [0, 1)")
    _check_logits("sample_next", z)
    return _sample(z, temperature, top_k, top_p, uniform)


def _check_logits(where: str, z: np.ndarray):
    """Every row needs a finite logit and no NaN or +inf: otherwise its probabilities come out
    NaN (inf - inf) and the inverse cdf would silently pick id 0. -inf is a masked id."""
    m = z.max(axis=1)  # one pass: NaN where a row has one, +inf, or -inf where nothing is finite
    for what, bad in (("a NaN or +inf logit", np.isnan(m) | (m == np.inf)),
                      ("no finite logit", m == -np.inf)):
        if bad.any():
            raise ValueError(f"{where}: row {int(bad.argmax())} of the logits has {what}, so there is "
                             f"no distribution to sample from")


def _sample(z: np.ndarray, temperature, top_k, top_p, uniform) -> np.ndarray:
    """sample_next on float64 logits z (B, V) and arguments already checked (generate checks
    them once, not at every token)."""
    B, V = z.shape
    if temperature == 0:
        return z.argmax(axis=1)
    # Shift before dividing: z / T overflows to inf for a tiny T, and inf - inf is NaN. After
    # the shift the largest logit is 0, which top_k keeps, so exp needs no second shift; a gap
    # that overflows to -inf is a probability of 0, as it should be.
    with np.errstate(over="ignore"):
        z = (z - z.max(axis=1, keepdims=True)) / float(temperature)
    if top_k is not None:
        if top_k < V:
            kth = np.sort(z, axis=1)[:, V - top_k][:, None]
            z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z)
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


def _eos_ids(eos_token_id, vocab_size: int) -> np.ndarray | None:
    """eos_token_id (None, an id or a list of ids) as an int64 array, each id in the vocabulary."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if _is_int(eos_token_id) else eos_token_id
    if (not isinstance(ids, (list, tuple)) or not ids
            or not all(_is_int(i) and 0 <= i < vocab_size for i in ids)):
        raise ValueError(f"generate: eos_token_id must be an id or a non-empty list of ids in "
                         f"[0, vocab_size={vocab_size}), got {eos_token_id!r}")
    return np.asarray(ids, dtype=np.int64)


def generate(model, ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, use_cache: bool = True, eos_token_id=None):
    """ids (B, T0) int -> (B, T0 + n) int64, the prompt followed by n <= max_new_tokens sampled
    ids. T0 + max_new_tokens must fit in the model's block_size. The model runs in eval mode
    (no dropout; MoE dispatch dropless) and is given back in the mode it had.

    eos_token_id (an id or a list of ids): a row that samples one is finished, and its later
    positions repeat that id; generation stops once every row is finished, so n may be less
    than max_new_tokens. The other rows get the tokens they would get without it (each step
    still draws one number per row)."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a non-negative integer, got "
                         f"{max_new_tokens!r}")
    _check_sampling("generate", temperature, top_k, top_p)
    eos = _eos_ids(eos_token_id, model.config.vocab_size)
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
    bad = (tokens < 0) | (tokens >= model.config.vocab_size)
    if bad.any():  # the embedding would raise too, but not when no token is generated
        raise _core.IndexError(f"generate: id {tokens[bad][0]} is out of range for the vocabulary of "
                               f"{model.config.vocab_size}")
    if max_new_tokens == 0:
        return ls.tensor(tokens)
    device = model.wte.weight.device
    done = np.zeros(B, dtype=bool)  # rows that sampled an eos id
    # each module's own flag comes back, for a model that keeps a part in eval (a frozen one)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            cache = model.new_kv_cache(B, total) if use_cache else None
            logits = model(ls.tensor(tokens, device=device), kv_cache=cache)
            for i in range(max_new_tokens):
                # the logits come to the host here once per token (the check reads that copy)
                z = np.asarray(logits[:, -1], dtype=np.float64)
                _check_logits(f"generate (new token {i})", z)
                nxt = _sample(z, temperature, top_k, top_p, None).astype(np.int64)
                if eos is not None:
                    nxt = np.where(done, tokens[:, -1], nxt)  # a finished row repeats its eos
                    done |= np.isin(nxt, eos)
                tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
                if i + 1 == max_new_tokens or (eos is not None and done.all()):
                    break
                if use_cache:
                    logits = model(ls.tensor(nxt[:, None], device=device), kv_cache=cache,
                                   start_pos=T0 + i)
                else:
                    logits = model(ls.tensor(tokens, device=device))
    finally:
        for m, training in modes:
            m.training = training
    return ls.tensor(tokens)
