"""Python operators and methods of Tensor: arithmetic with numpy broadcasting and scalar
promotion, comparisons, indexing, conversions, printing and DLPack. Every computation goes
through the op registry (llmscratch_core.call / llmscratch_core.ops)."""
import builtins
import collections
import copy
import math
import numbers

import numpy as np

import llmscratch_core as _core

from .autograd import Function as _Function, backward as _autograd_backward
from ._creation import fill_number, full, past_double, tensor
from ._dtype import as_device, as_dtype, bfloat16, bool_, float16, float32, float64, int32, int64, uint8

Tensor = _core.Tensor
_ops = _core.ops


# ---- scalars and promotion ---------------------------------------------------------------------

def _scalar_dtype(value, like: Tensor):
    """Dtype for a Python scalar combined with a tensor (torch rules: the tensor's dtype wins
    within a category; a float scalar with an integer tensor gives float32)."""
    if isinstance(value, builtins.bool):
        return like.dtype
    if isinstance(value, numbers.Integral):
        return like.dtype if like.dtype != bool_ else int64
    if like.dtype.is_floating_point:
        return like.dtype
    return float32


_SCALARS = (numbers.Number, np.number, np.bool_)
# An int scalar with a narrower integer tensor wraps to the tensor's dtype, as torch's
# (int32 + 2**40 adds 0): (bits, signed)
_WRAPPED = {int32: (32, True), uint8: (8, False)}


def _wrap_int(v: int, bits: int, signed: bool) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if signed and v >> (bits - 1) else v


def as_tensor_like(value, like: Tensor, wrap: bool = True) -> Tensor:
    """value as a tensor on like's device: a scalar in the dtype the scalar rule gives it with like
    (_scalar_dtype), a list or array in its own dtype, as tensor() makes it. An integer outside a
    narrow integer dtype's range wraps, as in torch's arithmetic; with wrap=False it is refused
    (torch's where, setitem and pow exponents), by the creation op's range check."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, _SCALARS):
        dtype = _scalar_dtype(value, like)
        if not wrap:
            value = fill_number(value, dtype)
        elif dtype in _WRAPPED and isinstance(value, numbers.Integral) and not isinstance(value, builtins.bool):
            value = _wrap_int(int(value), *_WRAPPED[dtype])
        if past_double(dtype, value):  # exact past 2^53, where the op's double would round
            return full([], value, dtype, like.device)
        return _ops.full([], float(value), dtype, like.device)
    if isinstance(value, (list, tuple, np.ndarray)):
        return tensor(value, device=like.device)
    raise TypeError(f"unsupported operand type {type(value).__name__} for a Tensor operation")


def _binary(fn):
    """self op other. A scalar's dtype comes from self (_scalar_dtype), which is cast to it where
    the scalar's category wins (an integer tensor and a float); a list or array is a tensor of its
    own dtype that promotes with self by the op's tensor rules, as torch's tensors made from them
    (casting self to it had made float64 + [1, 2] an int64 sum)."""
    def op(self, other):
        other_t = as_tensor_like(other, self)
        if isinstance(other, _SCALARS) and other_t.dtype != self.dtype:
            return fn(self.to(dtype=other_t.dtype), other_t)
        return fn(self, other_t)
    return op


def _rbinary(fn):
    """other op self, for a non-tensor other on the left: promoted as in _binary."""
    def op(self, other):
        other_t = as_tensor_like(other, self)
        if isinstance(other, _SCALARS) and other_t.dtype != self.dtype:
            return fn(other_t, self.to(dtype=other_t.dtype))
        return fn(other_t, self)
    return op


def _compare(how):
    def op(self, other):
        if other is None or isinstance(other, (str, bytes)):  # x == "a" is False, as torch's
            return NotImplemented
        return _ops.compare(self, as_tensor_like(other, self), how)
    return op


def _logical(name, on_bools):
    """&, | and ^ of bool tensors (attention masks), through where and compare: there are no
    bitwise kernels, so other dtypes are a TypeError rather than a silent arithmetic stand-in."""
    def op(self, other):
        other = as_tensor_like(other, self)
        if self.dtype != bool_ or other.dtype != bool_:
            raise TypeError(f"'{name}' is supported between bool tensors only, got {self.dtype} "
                            f"and {other.dtype}")
        return on_bools(self, other)
    return op


def _invert(self):
    """~x: logical not of a bool tensor; bitwise not (-1 - x, exact) of an integer one."""
    if self.dtype == bool_:
        return _ops.compare(self, as_tensor_like(False, self), "eq")
    if self.dtype.is_floating_point:
        raise TypeError(f"'~' is not defined for {self.dtype} tensors")
    return -1 - self


T = Tensor
T.__and__ = T.__rand__ = _logical("&", lambda a, b: _ops.where(a, b, a))
T.__or__ = T.__ror__ = _logical("|", lambda a, b: _ops.where(a, a, b))
T.__xor__ = T.__rxor__ = _logical("^", lambda a, b: _ops.compare(a, b, "ne"))
T.__invert__ = _invert
T.__add__ = _binary(_ops.add)
T.__radd__ = _rbinary(_ops.add)
T.__sub__ = _binary(_ops.sub)
T.__rsub__ = _rbinary(_ops.sub)
T.__mul__ = _binary(_ops.mul)
T.__rmul__ = _rbinary(_ops.mul)
_div, _rdiv = _binary(_ops.div), _rbinary(_ops.div)


def _true_divisor(value, like):
    """An integer scalar with an integer tensor divides by its own value, as a float (torch's true
    division), not wrapped to a narrow dtype first (uint8 7 / -1 is -7.0, not 7 / 255)."""
    if (isinstance(value, numbers.Integral) and not isinstance(value, builtins.bool)
            and not like.dtype.is_floating_point):
        return float(value)
    return value


T.__truediv__ = lambda self, other: _div(self, _true_divisor(other, self))
T.__rtruediv__ = lambda self, other: _rdiv(self, _true_divisor(other, self))
T.__floordiv__ = _binary(_ops.floor_divide)
T.__rfloordiv__ = _rbinary(_ops.floor_divide)
T.__mod__ = _binary(_ops.remainder)
T.__rmod__ = _rbinary(_ops.remainder)
_pow_any = _binary(_ops.pow)


def _pow(self, other):
    if (not self.dtype.is_floating_point and isinstance(other, numbers.Integral)
            and not isinstance(other, builtins.bool)):
        if other < 0:
            raise ValueError("Integers to negative integer powers are not allowed (1 / x of an "
                             "integer is not an integer): use a floating tensor")
        other = as_tensor_like(other, self, wrap=False)  # an exponent is not wrapped (torch refuses it)
    return _pow_any(self, other)


T.__pow__ = _pow
T.__rpow__ = _rbinary(_ops.pow)
T.__matmul__ = lambda self, other: _ops.matmul(self, other)
T.__rmatmul__ = lambda self, other: _ops.matmul(as_tensor_like(other, self), self)
T.__neg__ = lambda self: _ops.unary("neg", self)
T.__pos__ = lambda self: self
T.__abs__ = lambda self: _ops.unary("abs", self)
for _name, _how in [("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge")]:
    setattr(T, f"__{_name}__", _compare(_how))
    setattr(T, _name, _compare(_how))  # x.eq(y), as torch
T.__hash__ = object.__hash__


# ---- predicates ------------------------------------------------------------------------------

def _any(self, dim=None, keepdim=False):
    """Whether any element is nonzero (True, or NaN), over all or along dim, as torch's."""
    nonzero = self if self.dtype == bool_ else self != 0
    n = nonzero.sum() if dim is None else nonzero.sum(dim, keepdim)
    return n > 0


def _all(self, dim=None, keepdim=False):
    zero = ~self if self.dtype == bool_ else self == 0
    n = zero.sum() if dim is None else zero.sum(dim, keepdim)
    return n == 0


def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):  # noqa: A002
    """|input - other| <= atol + rtol |other| elementwise, the difference finite (equal infinities
    close), as torch's; bool tensors: equality."""
    other = other if isinstance(other, Tensor) else as_tensor_like(other, input)
    if input.dtype == bool_ and other.dtype == bool_:
        return input == other
    diff = (input - other).abs()
    close = (input == other) | ((diff <= atol + rtol * other.abs()) & isfinite(diff))
    if equal_nan:
        close = close | ((input != input) & (other != other))
    return close


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):  # noqa: A002
    return builtins.bool(_all(isclose(input, other, rtol, atol, equal_nan)).item())


def equal(input, other):  # noqa: A002
    """Same shape and the same values (NaN unequal), as torch.equal."""
    return tuple(input.shape) == tuple(other.shape) and builtins.bool(_all(input == other).item())


def is_tensor(obj):
    return isinstance(obj, Tensor)


def isnan(input):  # noqa: A002
    return input != input


def isinf(input):  # noqa: A002
    if not input.dtype.is_floating_point:  # an integer is never infinite
        return full(tuple(input.shape), False, dtype=bool_, device=input.device)
    return input.abs() == float("inf")


def isfinite(input):  # noqa: A002
    return ~(isnan(input) | isinf(input))


T.any, T.all = _any, _all
T.isclose, T.allclose, T.equal = isclose, allclose, equal
T.isnan, T.isinf, T.isfinite = isnan, isinf, isfinite
T.logical_not = lambda self: (self == 0) if self.dtype != bool_ else ~self


def _contains(self, element):
    if not isinstance(element, (Tensor, numbers.Number, np.generic)):
        raise RuntimeError(f"'in' on a tensor takes a tensor or a number, got {type(element).__name__}")
    return builtins.bool(_any(self == element).item())


T.__contains__ = _contains


def _format(self, spec):
    """f"{loss:.3f}" of a 0-d tensor formats its number, as torch's."""
    if self.ndim == 0:
        return format(self.item(), spec)
    return object.__format__(self, spec)


T.__format__ = _format


def _new(value):
    def make(self, *size, dtype=None, device=None, requires_grad=False):
        """A new tensor of self's dtype and device unless given, as torch's new_zeros etc."""
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        return _new_full(self, shape, value, dtype, device, requires_grad)
    return make


def _new_full(self, size, fill_value, dtype=None, device=None, requires_grad=False):
    return full(tuple(size), fill_value, dtype=dtype or self.dtype, device=device or self.device,
                requires_grad=requires_grad)


T.new_zeros = T.new_empty = _new(0)
T.new_ones = _new(1)
T.new_full = _new_full
T.new_tensor = lambda self, data, dtype=None, device=None, requires_grad=False: tensor(
    data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)
T.byte = lambda self: self.to(dtype=uint8)
# numpy defers to the tensor's reflected operators (array + tensor is a tensor, promoted by the
# tensor rules) instead of converting the tensor and answering with an ndarray, as with torch's
T.__array_priority__ = 1000


def _inplace(fn):
    """x op= y writes the result into x's memory (so views and parameters see it). A float result
    into an integer tensor is refused, as torch does (copy_ would truncate it); copy_ itself
    refuses a result that requires grad where the gradient would be lost."""
    def op(self, other):
        value = fn(self, other)
        if (value.dtype.is_floating_point and not self.dtype.is_floating_point) or \
                (self.dtype == bool_ and value.dtype != bool_):
            raise TypeError(f"in-place operation: the result type {value.dtype} cannot be written "
                            f"into a {self.dtype} tensor in place")
        _ops.copy_(self, value)
        return self
    return op


T.__iadd__ = _inplace(T.__add__)
T.__isub__ = _inplace(T.__sub__)
T.__imul__ = _inplace(T.__mul__)
T.__itruediv__ = _inplace(T.__truediv__)
T.__ifloordiv__ = _inplace(T.__floordiv__)
T.__imod__ = _inplace(T.__mod__)
# no in-place kernels for these: the out-of-place result is copied in, as for the others
T.__ipow__ = _inplace(T.__pow__)
T.__iand__ = _inplace(T.__and__)
T.__ior__ = _inplace(T.__or__)
T.__ixor__ = _inplace(T.__xor__)
T.add_ = lambda self, other, alpha=1: T.__iadd__(self, other if alpha == 1 else other * alpha)
T.sub_ = lambda self, other, alpha=1: T.__isub__(self, other if alpha == 1 else other * alpha)
T.mul_ = _inplace(T.__mul__)
T.div_ = _inplace(T.__truediv__)
T.floor_divide_ = _inplace(T.__floordiv__)
T.remainder_ = _inplace(T.__mod__)
T.pow_ = _inplace(T.__pow__)


def _copy_(self, src):
    _ops.copy_(self, as_tensor_like(src, self))
    return self


def _fill_(self, value):
    value = fill_number(value, self.dtype)
    if past_double(self.dtype, value):  # the op's double would round it
        _ops.copy_(self, as_tensor_like(value, self))
    else:
        _ops.fill_(self, float(value))
    return self


T.copy_ = _copy_
T.fill_ = _fill_
T.zero_ = lambda self: _fill_(self, 0.0)


# ---- math methods ------------------------------------------------------------------------------

for _u in ["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "sign", "relu", "sin", "cos", "neg"]:
    setattr(T, _u, (lambda name: lambda self: _ops.unary(name, self))(_u))
T.add = lambda self, other: self + other
T.sub = lambda self, other: self - other
T.mul = lambda self, other: self * other
T.div = lambda self, other: self / other
T.floor_divide = lambda self, other: self // other
T.remainder = lambda self, other: self % other
T.pow = lambda self, other: self ** other
T.matmul = lambda self, other: _ops.matmul(self, other)


class _ClampByTensors(_Function):
    """x limited to [lo, hi] (tensors, either None), max winning where lo > hi, with torch's
    gradients: x's where lo <= x <= hi (none at NaN), lo's where x < lo < hi, hi's where x > hi
    or hi < lo."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        out = x
        if lo is not None:  # a NaN bound gives NaN, as torch's
            out = _ops.where(_ops.compare(out, lo, "lt") | (lo != lo), lo, out)
        if hi is not None:
            out = _ops.where(_ops.compare(out, hi, "gt") | (hi != hi), hi, out)
        ctx.bounds = (lo is not None, hi is not None)
        ctx.save_for_backward(*[t for t in (x, lo, hi) if t is not None])
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = list(ctx.saved_tensors)
        x = saved.pop(0)
        lo = saved.pop(0) if ctx.bounds[0] else None
        hi = saved.pop(0) if ctx.bounds[1] else None
        zero = as_tensor_like(0.0, grad)

        def where(cond):
            return _ops.where(cond, grad, zero)
        if lo is not None and hi is not None:
            return (where((x >= lo) & (x <= hi)), where((x < lo) & (lo < hi)), where((x > hi) | (hi < lo)))
        if lo is not None:
            return where(x >= lo), where(x < lo), None
        return where(x <= hi), None, where(x > hi)


def _clamp(self, min=None, max=None):  # noqa: A002
    """self limited to [min, max]. A tensor bound keeps its gradient (_ClampByTensors)."""
    if isinstance(min, Tensor) or isinstance(max, Tensor):  # (a 0-d bound may be on the CPU)
        return _ClampByTensors.apply(self, *(None if b is None else as_tensor_like(b, self).to(device=self.device)
                                             for b in (min, max)))
    return _ops.clamp(self, min, max)


T.clamp = _clamp
T.clip = T.clamp


def _masked_fill(self, mask, value):
    """value where mask is true. The op carries value as a double (one outside an integer dtype's
    range is refused there: a fill value is not wrapped, as torch's); an int64 one past 2^53
    (which the double would round) is made exactly by as_tensor_like and passed as a 0-d tensor."""
    if isinstance(value, Tensor) and self.dtype.is_floating_point:  # a 0-d tensor keeps its gradient
        return _ops.masked_fill(self, mask, value.to(device=self.device))  # (it may be on the CPU)
    if isinstance(value, Tensor):  # into integers: as the number, range-checked (no gradient there)
        value = value.item()
    value = fill_number(value, self.dtype)
    if past_double(self.dtype, value):
        return _ops.masked_fill(self, mask, as_tensor_like(value, self))
    return _ops.masked_fill(self, mask, float(value))


T.masked_fill = _masked_fill
T.maximum = lambda self, other: _ops.maximum(self, as_tensor_like(other, self))
T.minimum = lambda self, other: _ops.minimum(self, as_tensor_like(other, self))


def _dims(dim):
    if dim is None:
        return []
    return [dim] if isinstance(dim, numbers.Integral) else list(dim)


T.sum = lambda self, dim=None, keepdim=False: _ops.sum(self, _dims(dim), keepdim)
T.mean = lambda self, dim=None, keepdim=False: _ops.mean(self, _dims(dim), keepdim)
T.var = lambda self, dim=None, correction=1, keepdim=False, unbiased=None: _ops.var(
    self, _dims(dim), correction if unbiased is None else int(unbiased), keepdim)


class _Std(_Function):
    """The square root of a variance, whose gradient is 0 where the std is 0 (a constant slice), as
    torch's std: sqrt's own backward gives 0 * inf = NaN there."""

    @staticmethod
    def forward(ctx, var):
        std = var.sqrt()
        ctx.save_for_backward(std)
        return std

    @staticmethod
    def backward(ctx, grad):
        std, = ctx.saved_tensors
        return (grad / (2 * std)).masked_fill(std == 0, 0.0)


T.std = lambda self, dim=None, correction=1, keepdim=False, unbiased=None: _Std.apply(
    T.var(self, dim, correction, keepdim, unbiased))

max_result = collections.namedtuple("max", ["values", "indices"])
min_result = collections.namedtuple("min", ["values", "indices"])


def _max(self, dim=None, keepdim=False):
    """max() of all elements, the (values, indices) named tuple along dim, or with a tensor the
    elementwise maximum (torch's max(other); a 0-d int tensor is not a dim)."""
    if isinstance(dim, Tensor):
        return _ops.maximum(self, dim)
    if dim is None:
        return _ops.amax(self)
    return max_result(*_ops.max(self, dim, keepdim))


def _reversed_order(x):
    """An exact order-reversing map and its inverse, so that min is a max: -x for floats; for
    integers -1 - x (~x: no overflow at the most negative value, where -x wraps), in int64 for
    uint8 and bool, which have no negation."""
    if x.dtype.is_floating_point:
        return -x, lambda v: -v
    wide = x if x.dtype in (int32, int64) else x.to(dtype=int64)
    return ~wide, lambda v: (~v).to(dtype=x.dtype)


def _min(self, dim=None, keepdim=False):
    if isinstance(dim, Tensor):  # the elementwise minimum, as _max
        return _ops.minimum(self, dim)
    flipped, back = _reversed_order(self)
    if dim is None:
        return back(_ops.amax(flipped))
    values, indices = _ops.max(flipped, dim, keepdim)
    return min_result(back(values), indices)


def _amax(self, dim=None, keepdim=False):
    """The largest value, or the largest values over dim (an int or a tuple), as torch's amax: the
    gradient split over each slice's tied maxima (the "amax" op)."""
    return _ops.amax(self, _dims(dim), keepdim)


def _amin(self, dim=None, keepdim=False):
    """The smallest value(s), as torch's amin: amax of the exact order-reversing map."""
    flipped, back = _reversed_order(self)
    return back(_amax(flipped, dim, keepdim))


T.max = _max
T.min = _min
T.amax = _amax
T.amin = _amin


def _argmax(self, dim=None, keepdim=False):
    """Index of the largest value along dim, or in the flattened tensor; keepdim then keeps every
    dimension, of size 1, as torch."""
    if dim is not None:
        return _ops.argmax(self, dim, keepdim)
    flat = _ops.argmax(self.reshape(-1), 0, False)
    return flat.reshape([1] * self.ndim) if keepdim else flat


T.argmax = _argmax
T.argmin = lambda self, dim=None, keepdim=False: T.argmax(_reversed_order(self)[0], dim, keepdim)


# ---- shape methods -----------------------------------------------------------------------------

def _no_dtype(values, op):
    """The core's dtype enum converts to an int (float32 to 0): as a size or dim it would pass."""
    for v in values:
        if isinstance(v, _core.DType):
            raise TypeError(f"{op}: expected ints, got the dtype {v}")
    return values


def _shape_args(args, op="view"):
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return _no_dtype(list(args[0]), op)
    return _no_dtype(list(args), op)


def _view(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], _core.DType):
        raise NotImplementedError("view(dtype), reinterpreting the bytes, is not supported; to(dtype) converts")
    return _ops.view(self, _shape_args(shape))


T.reshape = lambda self, *shape: _ops.reshape(self, _shape_args(shape, "reshape"))
T.view = _view
T.view_as = lambda self, other: _ops.view(self, list(other.shape))
T.permute = lambda self, *dims: _ops.permute(self, _shape_args(dims, "permute"))
T.transpose = lambda self, d0, d1: _ops.transpose(self, *_no_dtype([d0, d1], "transpose"))
T.expand = lambda self, *shape: _ops.expand(self, _shape_args(shape, "expand"))
T.expand_as = lambda self, other: _ops.expand(self, list(other.shape))
T.unsqueeze = lambda self, dim: _ops.unsqueeze(self, *_no_dtype([dim], "unsqueeze"))


def _squeeze(self, dim=None):
    """As torch's: dim None (every size-1 dim), an int, or a tuple of dims (each size-1 one)."""
    if not isinstance(dim, (tuple, list)):
        return _ops.squeeze(self, dim)
    n = builtins.max(self.ndim, 1)
    for d in dim:
        if not -n <= d < n:
            _ops.squeeze(self, d)  # raises the op's out-of-range error
    wrapped = [d % n for d in dim]
    for d in wrapped:
        if wrapped.count(d) > 1:
            raise RuntimeError(f"squeeze: dim {d} appears multiple times in the list of dims")
    out = self
    for d in sorted(wrapped, reverse=True):  # the last first: the others keep their place
        out = _ops.squeeze(out, d)
    return out


T.squeeze = _squeeze
T.contiguous = lambda self: _ops.contiguous(self)
T.clone = lambda self: _ops.contiguous_copy(self)


def _deepcopy(self, memo):
    """copy.deepcopy, as torch's: a leaf of its own data (contiguous), with requires_grad, a copy of
    .grad and of any Python attributes. A tensor computed by differentiable ops is refused: its
    copy would have no graph to backpropagate into. (Two views of one buffer copy apart.)"""
    if not self.is_leaf:
        raise RuntimeError("deepcopy: only leaf tensors can be copied (this one is the result of "
                           "differentiable ops); copy its detach() instead")
    out = self.detach().clone()
    memo[id(self)] = out
    if self.requires_grad:
        out.requires_grad = True
    if self.grad is not None:
        out.grad = copy.deepcopy(self.grad, memo)
    for key, value in self.__dict__.items():
        setattr(out, key, copy.deepcopy(value, memo))
    return out


T.__deepcopy__ = _deepcopy
T.T = property(lambda self: _ops.permute(self, list(range(self.ndim))[::-1]))


def _t(self):
    """The transpose of a tensor of at most 2 dims (as is for 0-d and 1-d), as torch's t()."""
    if self.ndim > 2:
        raise ValueError(f"t() expects a tensor of at most 2 dims, got {self.ndim}; use transpose or mT")
    return _ops.transpose(self, 0, 1) if self.ndim == 2 else self


T.t = _t
T.mT = property(lambda self: _ops.transpose(self, -2, -1))


def _wrap_dim(dim, ndim, op):
    """dim counted from the end when negative; IndexError outside [-ndim, ndim), as the ops say it
    (also functional's dimension checks)."""
    if not -ndim <= dim < ndim:
        raise IndexError(f"{op}: dimension {dim} is out of range for a tensor of {ndim} dimensions")
    return dim % ndim


def _flatten(self, start_dim=0, end_dim=-1):
    """Dimensions start_dim..end_dim merged into one of their product's size (not -1, which a
    zero-size tensor cannot infer); a 0-d tensor flattens to shape (1,)."""
    ndim = builtins.max(self.ndim, 1)
    s, e = _wrap_dim(start_dim, ndim, "flatten"), _wrap_dim(end_dim, ndim, "flatten")
    if s > e:
        raise ValueError(f"flatten: start_dim cannot come after end_dim (start_dim={start_dim}, "
                         f"end_dim={end_dim})")
    if self.ndim == 0:
        return self.reshape(1)
    shape = list(self.shape)
    return self.reshape(shape[:s] + [math.prod(shape[s:e + 1])] + shape[e + 1:])


T.flatten = _flatten


# ---- indexing ----------------------------------------------------------------------------------

def _check_ids(ids, size, dim):
    """IndexError for a host id outside [-size, size), naming it as given (index_select, which
    sees it wrapped, would name another number)."""
    ids = np.asarray(ids).reshape(-1)
    bad = ids[(ids < -size) | (ids >= size)]
    if bad.size:
        raise IndexError(f"index {bad[0]} is out of bounds for dimension {dim} with size {size}")


def _host_index(k, size, dim, like):
    """A list or array index along dim as a tensor on like's device: an empty one is int64,
    negative ids count from the end (checked and wrapped here on the host, for free)."""
    arr = np.asarray(k)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        _check_ids(arr, size, dim)
        arr = np.where(arr < 0, arr + size, arr)
    return as_tensor_like(arr, like)


def _check_mask(self, mask):
    lead = tuple(self.shape[:mask.ndim])
    if tuple(mask.shape) != lead:
        raise IndexError(f"the boolean mask of shape {tuple(mask.shape)} does not match the indexed "
                         f"tensor's leading shape {lead}")


def _host_mask(mask):
    """The mask on the host, flat: its true count sets a result's shape (on a GPU a sync, as
    torch's)."""
    return mask.detach().cpu().numpy().reshape(-1)


def _index(self, key):
    """Basic indexing (ints, slices, None, Ellipsis) gives a view; one integer tensor or list
    index selects along its dimension, a bool mask of the leading shape the elements (rows) where
    it is true (copies, like numpy's advanced indexing)."""
    if isinstance(key, Tensor) and key.dtype == bool_:  # rows of x as (mask.numel(), rest...)
        from . import functional as F
        _check_mask(self, key)
        rows = self.reshape((-1,) + tuple(self.shape[key.ndim:]))
        return F.index_select(rows, 0, tensor(np.flatnonzero(_host_mask(key)), device=self.device))
    out, tensor_index = _basic_index(self, key)
    if tensor_index is not None:
        from . import functional as F
        d, idx = tensor_index
        flat = idx.reshape(-1)
        out = F.index_select(out, d, flat)
        if idx.ndim != 1:
            shape = list(out.shape)
            out = out.reshape(shape[:d] + list(idx.shape) + shape[d + 1:])
    return out


def _basic_index(self, key):
    """The view of the basic part of key (an integer tensor index taken as a whole dimension)
    and the tensor index as (its dimension in that view, ids wrapped to [0, size)), or None."""
    if not isinstance(key, tuple):
        key = (key,)
    n_real = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_real > self.ndim:
        raise IndexError(f"too many indices for tensor of dimension {self.ndim}")
    out, dim, tensor_index = self, 0, None
    for k in key:
        if k is Ellipsis:
            dim += self.ndim - n_real
        elif k is None:
            out = _ops.unsqueeze(out, dim)
            dim += 1
        elif isinstance(k, (numbers.Integral, np.integer)) and not isinstance(k, builtins.bool):
            size = out.shape[dim]
            if not -size <= int(k) < size:
                raise IndexError(f"index {int(k)} is out of bounds for dimension {dim} with size {size}")
            out = _ops.select(out, dim, int(k))
        elif isinstance(k, slice):
            if k.step is not None and k.step <= 0:
                raise ValueError("slice step must be positive")
            size = out.shape[dim]
            # bounds past int64 clamp as any past the size do (they had failed in the binding)
            start = 0 if k.start is None else builtins.max(-size - 1, builtins.min(int(k.start), size))
            stop = size if k.stop is None else builtins.max(-size - 1, builtins.min(int(k.stop), size))
            step = 1 if k.step is None else builtins.min(int(k.step), 2 ** 63 - 1)
            out = _ops.slice(out, dim, start, stop, step)
            dim += 1
        elif isinstance(k, (Tensor, list, np.ndarray)):
            if tensor_index is not None:
                raise NotImplementedError("indexing with more than one tensor index is not supported")
            idx = k if isinstance(k, Tensor) else _host_index(k, out.shape[dim], dim, self)
            if idx.dtype not in (int32, int64, bool_):  # torch reads uint8 as a mask, deprecated
                raise TypeError(f"tensors used as indices must be int32, int64 or bool, got {idx.dtype}")
            if idx.dtype == bool_:
                raise NotImplementedError("a boolean mask is supported as the whole index only (x[mask]); "
                                          "use masked_fill or where")
            if isinstance(k, Tensor) and idx.dtype in (int32, int64):
                # negative ids count from the end, as torch's x[idx] (index_select itself refuses
                # them). One out of range raises IndexError: here on the CPU, naming it as given;
                # on a GPU in index_select, at the next sync, naming it wrapped.
                size = out.shape[dim]
                if not idx.is_cuda:
                    _check_ids(idx.numpy(), size, dim)
                idx = _ops.where(idx < 0, idx + size, idx)
            tensor_index = (dim, idx)
            dim += 1
        else:
            raise TypeError(f"unsupported index type {type(k).__name__}")
    return out, tensor_index


def _setitem(self, key, value):
    """self[key] = value, written through the view self[key]. value's leading size-1 dimensions
    beyond the view's are dropped, as torch's (x[0, 0] = ones(1, 1)); copy_ would refuse them.
    A bool mask of the leading shape as the whole key writes where it is true (_set_masked)."""
    # in self's dtype (0.1 never via float32), a float into an int tensor range-checked as torch
    if isinstance(value, (list, tuple, np.ndarray)) or (
            isinstance(value, float) and not self.dtype.is_floating_point):
        value = tensor(value, dtype=self.dtype, device=self.device)
    value = as_tensor_like(value, self, wrap=False)  # x[0] = 2**40 into int32 is refused, as torch
    if isinstance(key, Tensor) and key.dtype == bool_:
        _set_masked(self, key, value)
        return
    target, tensor_index = _basic_index(self, key)
    if tensor_index is not None:
        _set_indexed(target, tensor_index, value)
        return
    while value.ndim > target.ndim and value.shape[0] == 1:
        value = _ops.squeeze(value, 0)
    _ops.copy_(target, value)


def _set_indexed(base, tensor_index, value):
    """base[..., idx, ...] = value along dimension d of the view base: value broadcast to the
    indexing result's shape, the row of the last of repeated ids winning (as torch on the CPU).
    The ids are read on the host (on a GPU a sync, which torch's index_put_ does not make)."""
    from . import functional as F
    d, idx = tensor_index
    ids = idx.detach().cpu().numpy().reshape(-1)
    shape = tuple(base.shape)
    result = shape[:d] + tuple(idx.shape) + shape[d + 1:]
    value = _as_assigned(value, base, len(result))
    if value.numel() != 1:
        value = _broadcast_value(value, result)
    if ids.size == 0:
        return
    source = np.full(shape[d], -1, dtype=np.int64)
    source[ids] = np.arange(ids.size)  # numpy's assignment: the last of repeated ids wins
    keep = tensor(source >= 0, device=base.device).reshape((-1,) + (1,) * (len(shape) - d - 1))
    if value.numel() == 1:
        value = value.reshape(())
    else:
        rows = value.reshape(shape[:d] + (ids.size,) + shape[d + 1:])
        value = F.index_select(rows, d, tensor(np.maximum(source, 0), device=base.device))
    _ops.copy_(base, _ops.where(keep, value, base))


def _broadcast_value(value, shape):
    try:
        return value.expand(shape)
    except ValueError:
        raise ValueError(f"shape mismatch: value of shape {tuple(value.shape)} cannot be broadcast "
                         f"to the indexing result's shape {shape}") from None


def _as_assigned(value, target, ndim):
    """value in target's dtype (the where that writes it would otherwise promote the whole tensor:
    large int64 elements through float), its leading size-1 dims beyond ndim dropped, as torch's."""
    while value.ndim > ndim and value.shape[0] == 1:
        value = _ops.squeeze(value, 0)
    return value.to(dtype=target.dtype)


def _set_masked(self, mask, value):
    """self[mask] = value: one value for every selected element (row; no host sync), or value
    broadcast to (number selected, rest...), its k-th row into the k-th selected row, as torch's."""
    _check_mask(self, mask)
    rest = tuple(self.shape[mask.ndim:])
    value = _as_assigned(value, self, 1 + len(rest))
    if value.numel() != 1:
        flat = _host_mask(mask)
        picked = int(flat.sum())
        value = _broadcast_value(value, (picked,) + rest)
        if picked == 0:
            return
        from . import functional as F
        rank = np.maximum(np.cumsum(flat) - 1, 0)  # each row's place among the selected ones
        value = F.index_select(value, 0, tensor(rank, device=self.device)).reshape(tuple(self.shape))
    keep = mask.to(device=self.device).reshape(tuple(mask.shape) + (1,) * len(rest))
    _ops.copy_(self, _ops.where(keep, value.reshape(()) if value.numel() == 1 else value, self))


T.__getitem__ = _index
T.__setitem__ = _setitem


def _iter(self):
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return (self[i] for i in range(self.shape[0]))


T.__iter__ = _iter


# ---- conversions -------------------------------------------------------------------------------

def _to(self, *args, dtype=None, device=None, non_blocking=False, copy=False):
    """to(device), to(dtype), to(device, dtype), to(other_tensor), or keywords. non_blocking: a
    copy from pinned memory (pin_memory()) to a CUDA device is queued on the current stream and
    returns at once; other copies complete before returning."""
    for a in args:
        if isinstance(a, _core.DType):
            dtype = a
        elif isinstance(a, (str, _core.Device)):
            device = a
        elif isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        else:
            raise TypeError(f"to(): unexpected argument {a!r}")
    out = self
    if device is not None:
        out = _ops.to_device(out, as_device(device), bool(non_blocking))
    if dtype is not None:
        out = _ops.to_dtype(out, as_dtype(dtype))
    if copy and out._same(self):
        out = out.clone()
    return out


T.to = _to
T.pin_memory = lambda self: _ops.pin_memory(self)
T.pin_memory.__doc__ = ("A copy of this CPU tensor in page-locked memory (the tensor itself when "
                        "already pinned); needs CUDA")
T.is_pinned = lambda self: _ops.is_pinned(self)
T.cpu = lambda self: _to(self, device="cpu")
T.cuda = lambda self, device=0, non_blocking=False: _to(
    self, device=f"cuda:{device}" if isinstance(device, int) else device, non_blocking=non_blocking)
T.float = lambda self: _to(self, dtype=float32)
T.double = lambda self: _to(self, dtype=float64)
T.half = lambda self: _to(self, dtype=float16)
T.bfloat16 = lambda self: _to(self, dtype=bfloat16)
T.long = lambda self: _to(self, dtype=int64)
T.int = lambda self: _to(self, dtype=int32)
T.bool = lambda self: _to(self, dtype=bool_)
T.type_as = lambda self, other: _to(self, dtype=other.dtype)
T.is_floating_point = lambda self: self.dtype.is_floating_point
T.element_size = lambda self: self.dtype.itemsize


def _numpy_host(self):
    """The values as a numpy array on the host (bfloat16 as float32). numpy() of a tensor that
    requires grad raises, as torch's; so does np.asarray of one (__array__), as in torch."""
    t = self.cpu()
    if t.dtype == bfloat16:
        t = t.to(dtype=float32)
    return t.numpy()


T.tolist = lambda self: _numpy_host(self.detach()).tolist()
T.__array__ = lambda self, dtype=None, copy=None: (
    np.asarray(_numpy_host(self), dtype=dtype))
T.__float__ = lambda self: float(self.item())
T.__int__ = lambda self: int(self.item())
T.__index__ = lambda self: int(self.item()) if not self.dtype.is_floating_point else (_ for _ in ()).throw(
    TypeError("only integer tensors can be used as an index"))


def _bool(self):
    if self.numel() != 1:
        raise RuntimeError(f"the truth value of a tensor with {self.numel()} elements is ambiguous")
    return builtins.bool(self.item())


T.__bool__ = _bool


def _dlpack(self, stream=None, max_version=None, dl_device=None, copy=None):
    """Export without a copy (copy=True: of a clone). On CUDA the data is produced on llmscratch's
    current stream; when the consumer's stream is another one (DLPack: None or 1 the legacy
    default stream, 2 the per-thread default stream, else a cudaStream_t; -1 asks for no
    ordering), it is made to wait for the work queued so far, the clone included, without
    blocking the host."""
    out = self.clone() if copy else self
    if self.is_cuda and stream != -1:
        dev = self.device.index
        consumer = 0 if stream is None or stream == 1 else int(stream)
        if consumer != _core.cuda_current_stream(dev):
            from .cuda import Event, current_stream
            done = Event()
            done.record(current_stream(dev))
            _core.cuda_stream_wait_event(dev, consumer, done._handle)
    versioned = max_version is not None and tuple(max_version) >= (1, 0)
    return _core.to_dlpack(out, versioned)


T.__dlpack__ = _dlpack
T.__dlpack_device__ = lambda self: tuple(_core.dlpack_device(self))


# ---- autograd ----------------------------------------------------------------------------------

def _backward(self, gradient=None, retain_graph=None):
    """As torch: the graph's saved tensors are freed as it runs unless retain_graph; a gradient
    of another dtype is converted to the tensor's."""
    _autograd_backward([self], None if gradient is None else [gradient], retain_graph)


T.backward = _backward



# ---- printing ----------------------------------------------------------------------------------

def _repr(self):
    arr = _numpy_host(self.detach())
    body = np.array2string(arr, separator=", ", prefix="tensor(", precision=4,
                           threshold=1000, edgeitems=3, floatmode="maxprec_equal")
    extras = []
    if self.numel() == 0 and self.ndim > 1:  # an empty tensor's shape is not in its body, as torch
        extras.append(f"size={tuple(self.shape)}")
    if self.dtype not in (float32, int64, bool_) or (self.numel() == 0 and self.dtype != float32):
        extras.append(f"dtype={self.dtype}")
    if str(self.device) != "cpu":
        extras.append(f"device='{self.device}'")
    if self.grad_fn is not None:
        extras.append(f"grad_fn=<{self.grad_fn}>")
    elif self.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"


T.__repr__ = _repr
T.__str__ = _repr


# ---- module-level helpers that read like torch -------------------------------------------------

def matmul(a, b):
    return _ops.matmul(a, b)


def where(condition, a, b):
    """a where condition is true, else b. A scalar next to a tensor takes its dtype by the scalar
    rule; two scalars are tensors of their own dtypes (a float one float32) on condition's device,
    as torch's."""
    if not isinstance(a, Tensor):
        a = as_tensor_like(a, b, wrap=False) if isinstance(b, Tensor) else tensor(a, device=condition.device)
    if not isinstance(b, Tensor):
        b = as_tensor_like(b, a, wrap=False)
    return _ops.where(condition, a, b)


def floor_divide(input, other):  # noqa: A002
    """input // other, rounded toward minus infinity; either may be a Python number."""
    return input // other if isinstance(input, Tensor) else other.__rfloordiv__(input)


def remainder(input, other):  # noqa: A002
    """input % other, with other's sign (Python's %); either may be a Python number."""
    return input % other if isinstance(input, Tensor) else other.__rmod__(input)


def cat(tensors, dim=0):
    from . import functional as F
    return F.cat(tensors, dim)


def stack(tensors, dim=0):
    from . import functional as F
    return F.stack(tensors, dim)
