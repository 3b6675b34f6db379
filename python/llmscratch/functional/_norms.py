"""layer_norm and rms_norm over the trailing dims (cpp/ops/layer_norm.cpp, cpp/ops/rms_norm.cpp),
and their variants fused with the residual add of a pre-norm block (add_layer_norm, add_rms_norm);
normalize (x over its p-norm along a dim, composed of the differentiable ops).

The kernels normalise over the last dim; a normalized_shape of several dims is handled by viewing
those dims as one (a reshape, which autograd sees)."""
import math
import numbers

import numpy as np

import llmscratch_core as _core

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "normalize"]


def _as_shape(op, normalized_shape):
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if is_int(normalized_shape):
        return (int(normalized_shape),)
    if isinstance(normalized_shape, (list, tuple)) and all(is_int(s) for s in normalized_shape):
        return tuple(int(s) for s in normalized_shape)
    raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, "
                    f"got {normalized_shape!r}")


def _flatten(op, x, normalized_shape, params):
    """Checks shapes and returns x, params viewed with the normalized dims folded into one."""
    if not isinstance(x, _core.Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: needs a floating-point input, got {x.dtype}")
    shape = _as_shape(op, normalized_shape)
    k = len(shape)
    if k == 0 or x.dim() < k or tuple(x.shape[x.dim() - k:]) != shape:
        raise ValueError(f"{op}: normalized_shape {shape} does not match the trailing dims of "
                         f"input shape {tuple(x.shape)}")
    for name, p in params.items():
        if p is None:
            continue
        if not isinstance(p, _core.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(p).__name__}")
        if tuple(p.shape) != shape:
            raise ValueError(f"{op}: {name} of shape {tuple(p.shape)} does not match "
                             f"normalized_shape {shape}")
    if k == 1:
        return x, params
    C = math.prod(shape)
    flat = {n: (None if p is None else p.reshape(C)) for n, p in params.items()}
    return x.reshape(list(x.shape[:x.dim() - k]) + [C]), flat


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape dims."""
    xf, p = _flatten("layer_norm", x, normalized_shape, {"weight": weight, "bias": bias})
    y = _core.call("layer_norm", [xf, p["weight"], p["bias"]], {"eps": float(eps)})[0]
    return y if xf is x else y.reshape(list(x.shape))


def machine_eps(x) -> float:
    """torch's eps=None for an RMS norm: the machine epsilon of the type x is computed in
    (float32 for 16-bit x)."""
    return float(np.finfo(np.float64 if x.dtype == _core.DType.float64 else np.float32).eps)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x^2) + eps) * weight over the trailing normalized_shape dims.
    eps=None (the default, as torch's) uses machine_eps(x)."""
    xf, p = _flatten("rms_norm", x, normalized_shape, {"weight": weight})
    y = _core.call("rms_norm", [xf, p["weight"]], {"eps": machine_eps(x) if eps is None else float(eps)})[0]
    return y if xf is x else y.reshape(list(x.shape))


def _check_residual(op, x, residual):
    for name, t in (("input", x), ("residual", residual)):
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"{op}: residual of shape {tuple(residual.shape)} does not match the "
                         f"input shape {tuple(x.shape)}")


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(h, y) with h = x + residual and y = layer_norm(h) over the last dim, in one kernel.
    Both outputs are differentiable: the gradient of x and of residual is dh + the norm's."""
    _check_residual("add_layer_norm", x, residual)
    h, y, _, _ = _core.call("add_layer_norm", [x, residual, weight, bias], {"eps": float(eps)})
    return h, y


def add_rms_norm(x, residual, weight=None, eps=None):
    """(h, y) with h = x + residual and y = rms_norm(h) over the last dim, in one kernel.
    eps=None uses machine_eps(x), as rms_norm does."""
    _check_residual("add_rms_norm", x, residual)
    h, y, _ = _core.call("add_rms_norm", [x, residual, weight], {"eps": machine_eps(x) if eps is None else float(eps)})
    return h, y


def normalize(input, p=2.0, dim=1, eps=1e-12):  # noqa: A002
    """input / max(||input||_p, eps) along dim, as torch's F.normalize. A vector of zeros stays
    zeros with a zero gradient: its norm goes through a where, not through |x|^(1/p) at 0."""
    from ._elementwise import where
    if not isinstance(input, _core.Tensor):
        raise TypeError(f"normalize: input must be a Tensor, got {type(input).__name__}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"normalize: input must be floating-point, got {input.dtype}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not p > 0 or math.isinf(p):
        raise ValueError(f"normalize: p must be a finite number > 0, got {p!r}")
    powered = input.abs() if p == 1 else input * input if p == 2 else input.abs() ** float(p)
    total = powered.sum(dim, keepdim=True)
    nonzero = total > 0
    safe = where(nonzero, total, 1.0)
    norm = where(nonzero, safe if p == 1 else safe.sqrt() if p == 2 else safe ** (1.0 / p), 0.0)
    return input / norm.clamp(min=float(eps))

