"""Elementwise math, reductions and matmul as functions."""
import llmscratch_core as _core

from .._tensor import as_tensor_like, where  # noqa: F401

_ops = _core.ops

__all__ = ["add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "rsqrt", "tanh",
           "sigmoid", "abs", "relu", "sin", "cos", "clamp", "where", "masked_fill", "maximum",
           "minimum", "sum", "mean", "var", "max", "argmax", "matmul", "linear"]


def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    return a / b


def pow(a, b):  # noqa: A001
    return a ** b


def _unary(name):
    def fn(x):
        return _ops.unary(name, x)
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name}."
    return fn


neg, exp, log, sqrt, rsqrt, tanh, sigmoid, abs, relu, sin, cos = (  # noqa: A001
    _unary(n) for n in ["neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "relu", "sin", "cos"])


def clamp(x, min=None, max=None):  # noqa: A002
    return x.clamp(min, max)


def masked_fill(x, mask, value):
    return x.masked_fill(mask, value)


def maximum(a, b):
    return _ops.maximum(a, as_tensor_like(b, a))


def minimum(a, b):
    return _ops.minimum(a, as_tensor_like(b, a))


def sum(x, dim=None, keepdim=False):  # noqa: A001
    return x.sum(dim, keepdim)


def mean(x, dim=None, keepdim=False):
    return x.mean(dim, keepdim)


def var(x, dim=None, correction=1, keepdim=False):
    return x.var(dim, correction, keepdim)


def max(x, dim=None, keepdim=False):  # noqa: A001
    return x.max(dim, keepdim)


def argmax(x, dim=None, keepdim=False):
    return x.argmax(dim, keepdim)


def matmul(a, b):
    return _ops.matmul(a, b)


def linear(x, weight, bias=None):
    """x @ weight^T + bias, weight (out, in) as in torch.nn.Linear (the transpose is a view)."""
    for name, t in (("input", x), ("weight", weight)):
        if not isinstance(t, _core.Tensor):
            raise TypeError(f"linear: {name} must be a Tensor, got {type(t).__name__}")
    if x.dim() < 1 or not (weight.dim() == 2 or (weight.dim() == 1 and bias is None)):
        raise ValueError(f"linear: input must have at least 1 dim and weight 2 (out, in), or 1 without a "
                         f"bias, got shapes {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.dim() == 1 and bias is None:  # torch's: one output feature, dropped from the shape
        return _ops.matmul(x, weight)
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but weight has shape {tuple(weight.shape)}")
    return _ops.linear(x, weight, bias)
