"""gelu, silu and swiglu (cpp/ops/gelu.cpp, silu.cpp, swiglu.cpp; fused backward kernels)."""
import llmscratch_core as _core

__all__ = ["gelu", "silu", "swiglu"]


def _check(op, **tensors):
    for name, t in tensors.items():
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: needs floating-point inputs, got {name} of dtype {t.dtype}")


def check_gelu_approximate(op: str, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu(x, approximate="none"):
    """x * Phi(x); approximate='tanh' is the GPT-2 form x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))."""
    _check("gelu", x=x)
    check_gelu_approximate("gelu", approximate)
    return _core.call("gelu", [x], {"approximate": approximate})[0]


def silu(x, inplace=False):
    """x * sigmoid(x). inplace=True (torch's in-place form) is not implemented."""
    _check("silu", x=x)
    if inplace:
        raise NotImplementedError("silu: inplace=True is not supported (the result is a new tensor)")
    return _core.call("silu", [x], {})[0]


def swiglu(a, b):
    """silu(a) * b, the gated activation of LLaMA's MLP; a and b of one shape and dtype."""
    _check("swiglu", a=a, b=b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"swiglu: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    return _core.call("swiglu", [a, b], {})[0]
