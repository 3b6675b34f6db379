"""softmax and log_softmax along any dim (fused row kernels: cpp/ops/softmax.cpp)."""
import numbers

import llmscratch_core as _core

__all__ = ["softmax", "log_softmax"]


def _prepare(op, x, dim, dtype):
    if not isinstance(x, _core.Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{op}: dim must be an integer, got {dim!r}")
    if dtype is not None:  # torch's dtype=: cast first, e.g. to softmax bf16 scores in float32
        x = x.to(dtype=dtype)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: needs a floating-point input, got {x.dtype}")
    return x


def softmax(x, dim, dtype=None):
    """exp(x - max) / sum(exp(x - max)) along dim."""
    x = _prepare("softmax", x, dim, dtype)
    return _core.call("softmax", [x], {"dim": int(dim)})[0]


def log_softmax(x, dim, dtype=None):
    """x - logsumexp(x) along dim."""
    x = _prepare("log_softmax", x, dim, dtype)
    return _core.call("log_softmax", [x], {"dim": int(dim)})[0]
