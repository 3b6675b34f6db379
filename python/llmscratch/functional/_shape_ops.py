"""Joining and cutting tensors along one dimension: cat, stack, split, chunk.

Thin wrappers over the registered ops "cat", "stack" and "split" (cpp/ops/concat.cpp); split and
chunk return views, as in torch.
"""
import builtins
import numbers

import llmscratch_core as _core

from .._tensor import _wrap_dim
from ._checks import require_int as _int, require_tensor as _tensor

Tensor = _core.Tensor

__all__ = ["cat", "concat", "concatenate", "stack", "split", "chunk"]


def _tensor_list(tensors, op):
    if isinstance(tensors, Tensor):
        raise TypeError(f"{op}: expected a sequence of tensors, got a single Tensor")
    try:
        tensors = list(tensors)
    except TypeError:
        raise TypeError(f"{op}: expected a sequence of tensors, got {type(tensors).__name__}") from None
    for i, t in enumerate(tensors):
        _tensor(t, f"element {i}", op)
    return tensors


def _dim_size(t, dim, op):
    """Size of dimension ``dim`` (negative counts from the end), validated like the core does."""
    dim = _int(dim, "dim", op)
    if t.ndim == 0:
        raise ValueError(f"{op}: cannot {op} a zero-dimensional tensor")
    return t.shape[_wrap_dim(dim, t.ndim, op)]


def cat(tensors, dim=0):
    """Concatenate tensors of equal shape except in ``dim`` (1-D empty tensors are skipped)."""
    return _core.call("cat", _tensor_list(tensors, "cat"), {"dim": _int(dim, "dim", "cat")})[0]


concat = concatenate = cat


def stack(tensors, dim=0):
    """Join tensors of one shape along a new dimension ``dim``."""
    return _core.call("stack", _tensor_list(tensors, "stack"), {"dim": _int(dim, "dim", "stack")})[0]


def split(tensor, split_size_or_sections, dim=0):
    """Views of ``tensor`` along ``dim``: pieces of ``split_size`` (the last one smaller) for an
    int, or of the listed sizes (which must sum to the dimension's size)."""
    _tensor(tensor, "tensor", "split")
    n = _dim_size(tensor, dim, "split")
    if isinstance(split_size_or_sections, numbers.Integral) and not isinstance(split_size_or_sections, builtins.bool):
        size = int(split_size_or_sections)
        if size < 0 or (size == 0 and n > 0):
            raise ValueError(f"split: split_size must be positive (or 0 for an empty dimension), got {size}"
                             f" for dimension {dim} of size {n}")
        sizes = [min(size, n - off) for off in range(0, n, size)] if n > 0 else [0]
    else:
        try:
            sizes = [_int(s, "split sizes", "split") for s in split_size_or_sections]
        except TypeError:
            raise TypeError("split: split_size_or_sections must be an int or a sequence of ints, got "
                            f"{split_size_or_sections!r}") from None
    return tuple(_core.call("split", [tensor], {"sizes": sizes, "dim": int(dim)}))


def chunk(input, chunks, dim=0):  # noqa: A002
    """Split into pieces of ceil(n / chunks) along ``dim``, the last smaller; as in torch this can
    give fewer than ``chunks`` pieces (an empty dimension gives ``chunks`` empty pieces)."""
    _tensor(input, "input", "chunk")
    chunks = _int(chunks, "chunks", "chunk")
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be greater than 0, got {chunks}")
    n = _dim_size(input, dim, "chunk")
    if n == 0:
        return split(input, [0] * chunks, dim)
    return split(input, -(-n // chunks), dim)


# Tensor methods, as in torch (kept if the Tensor class already defines them).
for _name, _fn in [("split", split), ("chunk", chunk)]:
    if not hasattr(Tensor, _name):
        setattr(Tensor, _name, _fn)
