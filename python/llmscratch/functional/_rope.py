"""Rotary position embedding (op "rope", cpp/ops/rope.cpp) and its cos/sin tables."""
import numbers

import numpy as np

import llmscratch_core as _core

__all__ = ["rope", "rope_cache"]


def rope(x, cos, sin, interleaved=False):
    """Rotate channel pairs of x (B, T, NH, HS) by the angles in cos, sin (T, HS/2).

    interleaved=False pairs channel i with i + HS/2 (GPT-NeoX, Hugging Face LLaMA);
    interleaved=True pairs 2i with 2i + 1 (GPT-J, Meta LLaMA). Leading dims before T are free.
    """
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"rope: {name} must be a Tensor, got {type(t).__name__}")
    return _core.call("rope", [x, cos, sin], {"interleaved": bool(interleaved)})[0]


def rope_cache(T, HS, theta=10000.0, dtype=None, device=None):
    """(cos, sin), each (T, HS/2): angle[t, i] = t * theta^(-2i / HS), computed in float64."""
    if not isinstance(T, numbers.Integral) or T < 0:
        raise ValueError(f"rope_cache: T must be a non-negative integer, got {T!r}")
    if not isinstance(HS, numbers.Integral) or HS <= 0 or HS % 2:
        raise ValueError(f"rope_cache: head size HS must be a positive even integer, got {HS!r}")
    if not theta > 0:
        raise ValueError(f"rope_cache: theta must be positive, got {theta!r}")
    from .._creation import tensor
    from .._dtype import float32

    inv_freq = float(theta) ** (-np.arange(0, HS, 2, dtype=np.float64) / HS)
    angle = np.outer(np.arange(T, dtype=np.float64), inv_freq)
    dtype = dtype or float32
    return (tensor(np.cos(angle), dtype=dtype, device=device),
            tensor(np.sin(angle), dtype=dtype, device=device))
