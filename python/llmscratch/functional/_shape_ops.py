"""Joining and cutting tensors along one dimension: cat, stack, split, chunk, narrow, unbind;
movedim; and pad (constant padding of the trailing dims, a cat of constant blocks).

Thin wrappers over the registered ops "cat", "stack" and "split" (cpp/ops/concat.cpp) and the
views (slicing, squeeze, permute); split, chunk, narrow, unbind and movedim return views, as in
torch.
"""
import builtins
import numbers

import llmscratch_core as _core

from .._creation import full
from .._tensor import _wrap_dim
from ._checks import require_int as _int, require_tensor as _tensor

Tensor = _core.Tensor

__all__ = ["cat", "concat", "concatenate", "stack", "split", "chunk", "narrow", "unbind", "movedim", "moveaxis",
           "pad"]


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


def narrow(input, dim, start, length):  # noqa: A002
    """The view input[..., start : start + length, ...] along ``dim``; a negative start counts from
    the end, as in torch."""
    _tensor(input, "input", "narrow")
    n = _dim_size(input, dim, "narrow")
    start, length = _int(start, "start", "narrow"), _int(length, "length", "narrow")
    if not -n <= start <= n:
        raise IndexError(f"narrow: start {start} is out of range for dimension {dim} of size {n}")
    start = start + n if start < 0 else start
    if length < 0 or start + length > n:
        raise ValueError(f"narrow: start ({start}) + length ({length}) exceeds dimension {dim} of size {n}")
    d = _wrap_dim(dim, input.ndim, "narrow")
    return input[(slice(None),) * d + (slice(start, start + length),)]


def unbind(input, dim=0):  # noqa: A002
    """The slices along ``dim`` with that dimension removed, as a tuple of views."""
    _tensor(input, "input", "unbind")
    n = _dim_size(input, dim, "unbind")
    d = _wrap_dim(dim, input.ndim, "unbind")
    return tuple(piece.squeeze(d) for piece in split(input, 1, d)) if n else ()


def movedim(input, source, destination):  # noqa: A002
    """The view with dimensions ``source`` (an int or a sequence) moved to ``destination``, the
    others keeping their order."""
    _tensor(input, "input", "movedim")
    one = isinstance(source, numbers.Integral)
    if one != isinstance(destination, numbers.Integral):
        raise TypeError("movedim: source and destination must both be ints or both sequences")
    src = [source] if one else list(source)
    dst = [destination] if one else list(destination)
    if len(src) != len(dst):
        raise ValueError(f"movedim: source ({len(src)} dims) and destination ({len(dst)} dims) "
                         f"must have the same number of dims")
    nd = max(input.ndim, 1)  # a 0-d tensor takes dim 0 or -1
    src = [_wrap_dim(_int(d, "source", "movedim"), nd, "movedim") for d in src]
    dst = [_wrap_dim(_int(d, "destination", "movedim"), nd, "movedim") for d in dst]
    for name, dims in (("source", src), ("destination", dst)):
        if len(set(dims)) != len(dims):
            raise ValueError(f"movedim: repeated dim in {name} {dims}")
    if input.ndim == 0:
        return input
    order = [None] * input.ndim
    for s_, d_ in zip(src, dst):
        order[d_] = s_
    rest = iter(d for d in range(input.ndim) if d not in src)
    order = [next(rest) if o is None else o for o in order]
    return input.permute(order)


moveaxis = movedim


# Tensor methods, as in torch (kept if the Tensor class already defines them).
for _name, _fn in [("split", split), ("chunk", chunk), ("narrow", narrow), ("unbind", unbind),
                   ("movedim", movedim), ("moveaxis", movedim)]:
    if not hasattr(Tensor, _name):
        setattr(Tensor, _name, _fn)


def pad(input, pad, mode="constant", value=None):  # noqa: A002
    """torch's F.pad in constant mode: pad = (left, right) for the last dim, then (left, right) for
    the one before, and so on; a negative amount cuts that many elements off (a view); value
    (default 0) fills the new elements, which get no gradient."""
    _tensor(input, "input", "pad")
    if mode != "constant":
        raise NotImplementedError(f"pad: only mode='constant' is implemented, got {mode!r}")
    if not isinstance(pad, (list, tuple)) or len(pad) % 2 or len(pad) // 2 > input.dim():
        raise ValueError(f"pad: pad must be a sequence of (left, right) pairs for at most the {input.dim()} "
                         f"dims of the input, got {pad!r}")
    amounts = [_int(a, "pad", "pad") for a in pad]
    out = input
    for i in range(len(amounts) // 2):
        dim, left, right = out.dim() - 1 - i, amounts[2 * i], amounts[2 * i + 1]
        n = out.shape[dim]
        if n + builtins.min(left, 0) + builtins.min(right, 0) < 0:
            raise ValueError(f"pad: cutting {-left} and {-right} off dimension {dim} of size {n} leaves "
                             "a negative size")
        if left < 0 or right < 0:  # the cuts first: a view
            start = -builtins.min(left, 0)
            out = narrow(out, dim, start, n - start + builtins.min(right, 0))
        parts = ([_constant_block(out, dim, left, value)] if left > 0 else []) + [out] + \
            ([_constant_block(out, dim, right, value)] if right > 0 else [])
        if len(parts) > 1:
            out = cat(parts, dim)
    return out


def _constant_block(like, dim, amount, value):
    """A tensor shaped like ``like`` but ``amount`` long along dim, filled with value (0 if None)."""
    shape = list(like.shape)
    shape[dim] = amount
    return full(shape, 0 if value is None else value, dtype=like.dtype, device=like.device)

