"""Indexing, selection and scans along one dimension: index_select, gather, scatter_add, one_hot,
topk, sort, argsort, cumsum (cpp/ops/index.cpp, topk.cpp, sort.cpp, cumsum.cpp); and the
triangles of a matrix, tril and triu (a where over a mask).

Indices are int32 or int64 tensors; a negative or out-of-range index raises IndexError naming the
op, the value and the dimension size. topk and sort return (values, indices) named tuples.
"""
import builtins
import collections

import llmscratch_core as _core

from ._checks import require_int as _int, require_tensor as _tensor

from .._dtype import as_dtype

Tensor = _core.Tensor

__all__ = ["index_select", "gather", "scatter_add", "one_hot", "topk", "sort", "argsort", "cumsum", "tril", "triu"]

topk_result = collections.namedtuple("topk", ["values", "indices"])
sort_result = collections.namedtuple("sort", ["values", "indices"])


def index_select(input, dim, index):  # noqa: A002
    """out[..., j, ...] = input[..., index[j], ...] along ``dim``; index is 1-D (or 0-d)."""
    _tensor(input, "input", "index_select")
    _tensor(index, "index", "index_select")
    return _core.call("index_select", [input, index], {"dim": _int(dim, "dim", "index_select")})[0]


def gather(input, dim, index):  # noqa: A002
    """out[i][j][k] = input[i][index[i][j][k]][k] for dim=1 (torch.gather semantics)."""
    _tensor(input, "input", "gather")
    _tensor(index, "index", "gather")
    return _core.call("gather", [input, index], {"dim": _int(dim, "dim", "gather")})[0]


def scatter_add(input, dim, index, src):  # noqa: A002
    """A new tensor: input with src[i][j][k] added at [i][index[i][j][k]][k] for dim=1."""
    _tensor(input, "input", "scatter_add")
    _tensor(index, "index", "scatter_add")
    _tensor(src, "src", "scatter_add")
    return _core.call("scatter_add", [input, index, src], {"dim": _int(dim, "dim", "scatter_add")})[0]


def one_hot(tensor, num_classes=-1):
    """int64 tensor of shape tensor.shape + (num_classes,); num_classes=-1 uses max + 1."""
    _tensor(tensor, "tensor", "one_hot")
    return _core.call("one_hot", [tensor], {"num_classes": _int(num_classes, "num_classes", "one_hot")})[0]


def topk(input, k, dim=-1, largest=True, sorted=True):  # noqa: A002
    """The k largest (smallest) values along ``dim`` and their int64 indices, always sorted;
    ties go to the lower index, NaN counts as the largest value."""
    _tensor(input, "input", "topk")
    values, indices = _core.call("topk", [input], {"k": _int(k, "k", "topk"), "dim": _int(dim, "dim", "topk"),
                                                   "largest": builtins.bool(largest)})
    return topk_result(values, indices)


def sort(input, dim=-1, descending=False, *, stable=False):  # noqa: A002
    """Sorted values along ``dim`` and their int64 indices. Always stable (``stable`` is accepted
    for torch compatibility); NaN sorts as the largest value."""
    _tensor(input, "input", "sort")
    values, indices = _core.call("sort", [input], {"dim": _int(dim, "dim", "sort"),
                                                   "descending": builtins.bool(descending)})
    return sort_result(values, indices)


def argsort(input, dim=-1, descending=False, stable=False):  # noqa: A002
    """The indices that sort ``input`` along ``dim`` (always stable)."""
    return sort(input, dim, descending).indices


def cumsum(input, dim, dtype=None):  # noqa: A002
    """Running sums along ``dim``; integer inputs give int64, floats keep their dtype. With
    ``dtype`` the input is cast first, as in torch."""
    _tensor(input, "input", "cumsum")
    dtype = as_dtype(dtype)
    if dtype is not None and dtype != input.dtype:
        input = _core.ops.to_dtype(input, dtype)
    return _core.call("cumsum", [input], {"dim": _int(dim, "dim", "cumsum")})[0]


def _triangle(input, diagonal, op, lower):  # noqa: A002
    _tensor(input, "input", op)
    if input.ndim < 2:
        raise ValueError(f"{op}: input must have at least 2 dims, got shape {tuple(input.shape)}")
    diagonal = _int(diagonal, "diagonal", op)
    from .._creation import arange, zeros
    from .._tensor import where

    n, m = input.shape[-2:]
    above = arange(m, device=input.device).reshape(1, m) - arange(n, device=input.device).reshape(n, 1)
    keep = above <= diagonal if lower else above >= diagonal  # (n, m), broadcast over the batch
    return where(keep, input, zeros((), dtype=input.dtype, device=input.device))


def tril(input, diagonal=0):  # noqa: A002
    """input with zeros above its ``diagonal``-th diagonal (0: the main one, positive: above it)
    in the last two dims, as torch.tril (a NaN there becomes 0 too)."""
    return _triangle(input, diagonal, "tril", lower=True)


def triu(input, diagonal=0):  # noqa: A002
    """input with zeros below its ``diagonal``-th diagonal in the last two dims, as torch.triu."""
    return _triangle(input, diagonal, "triu", lower=False)


# Tensor methods, as in torch (kept if the Tensor class already defines them).
for _name, _fn in [("index_select", index_select), ("gather", gather), ("scatter_add", scatter_add),
                   ("topk", topk), ("sort", sort), ("argsort", argsort), ("cumsum", cumsum),
                   ("tril", tril), ("triu", triu)]:
    if not hasattr(Tensor, _name):
        setattr(Tensor, _name, _fn)
