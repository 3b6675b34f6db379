"""Inverted dropout with a Philox mask (op "dropout", cpp/ops/dropout.cpp): element n is kept
iff the n-th uniform of the draw is >= p, and kept values are scaled by 1 / (1 - p). The mask is
recomputed from (seed, offset) in the backward, never stored."""
import numbers

import llmscratch_core as _core

__all__ = ["dropout"]

_U64 = 1 << 64


def _as_int64(u):
    """The core's attrs are int64; the seed is a uint64 carried through with the same bits."""
    return u - _U64 if u >= 1 << 63 else u


def is_probability(p) -> bool:
    """A number in [0, 1] (bools are not numbers here)."""
    return isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 <= float(p) <= 1.0


def dropout(x, p=0.5, training=True, inplace=False):
    """x * mask / (1 - p) when training; x itself when not training or p == 0. inplace=True (torch's
    in-place form) is not implemented."""
    if not isinstance(x, _core.Tensor):
        raise TypeError(f"dropout: x must be a Tensor, got {type(x).__name__}")
    if inplace:
        raise NotImplementedError("dropout: inplace=True is not supported (the mask is applied out of place)")
    if not is_probability(p):
        raise ValueError(f"dropout: p must be in [0, 1], got {p!r}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"dropout: x must be floating, got {x.dtype}")
    if not training or p == 0:
        return x
    # Reserve the counters of x.numel() values, as every random draw does (core/philox.h):
    # the generator advances by ceil(n / 4) Philox blocks.
    seed, offset = _core.get_rng_state()
    _core.set_rng_state(seed, offset + (x.numel() + 3) // 4)
    attrs = {"p": float(p), "seed": _as_int64(seed), "offset": _as_int64(offset)}
    return _core.call("dropout", [x], attrs)[0]
