"""Factories: tensor(), zeros/ones/full/empty/arange, the Philox random draws, and the numpy /
DLPack bridges."""
import builtins
import math
import numbers

import numpy as np

import llmscratch_core as _core

from ._dtype import as_device, as_dtype, bool_, float16, float32, float64, int32, int64, uint8

Tensor = _core.Tensor


def _shape(args) -> list:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    shape = []
    for s in args:
        if not isinstance(s, numbers.Integral) or isinstance(s, builtins.bool):
            raise TypeError(f"shape entries must be integers, got {args!r}")
        if s < 0:
            raise ValueError(f"negative dimension in shape {tuple(args)}")
        shape.append(int(s))
    return shape


def _finish(t, requires_grad):
    if requires_grad:
        t.requires_grad = True
    return t


def _infer_dtype(arr: np.ndarray):
    if arr.dtype == np.bool_:
        return bool_
    if np.issubdtype(arr.dtype, np.integer):
        return int64
    return float32


# The integers a Python number may become in an integer dtype, as torch: a float within the range
# (NaN and 255.5 for uint8 refused), an int too, and for uint8 a negative int down to -255, which
# wraps (fill_number's rule). Past them the conversion would wrap silently (300 into uint8: 44).
_INT_RANGES = {int32: (-2 ** 31, 2 ** 31 - 1), int64: (-2 ** 63, 2 ** 63 - 1), uint8: (-255, 255)}


def _check_int_range(arr, dtype):
    lo, hi = _INT_RANGES[dtype]
    if arr.dtype.kind == "f":  # NaN fails both comparisons
        lo = 0 if dtype == uint8 else lo
        ok = (arr >= lo) & (arr < 2.0 ** 63 if dtype == int64 else arr <= hi)  # 2^63 - 1 is 2^63 as a double
    elif arr.dtype.kind in "iu":
        ok = (arr >= lo) & (arr <= hi)
    else:
        return
    if not ok.all():
        raise RuntimeError(f"tensor(): value {arr[~ok].flat[0].item()!r} cannot be converted to {dtype.name} "
                           "without overflow")


def _first_number(data):
    while isinstance(data, (list, tuple)) and len(data):
        data = data[0]
    return data


# The numpy dtypes tensor() keeps as they are, and what they become; other integer widths become
# int64 (_kept_numpy_dtype).
_KEPT_NUMPY = {np.dtype(np.bool_): bool_, np.dtype(np.uint8): uint8, np.dtype(np.int32): int32,
               np.dtype(np.int64): int64, np.dtype(np.float16): float16, np.dtype(np.float32): float32,
               np.dtype(np.float64): float64}


def _kept_numpy_dtype(np_dtype):
    return np.dtype(np.int64) if np_dtype.kind in "iu" and np_dtype not in _KEPT_NUMPY else np_dtype


def _sequence_dtype(data):
    """torch.tensor's dtype for nested sequences holding tensors or numpy scalars: each leaf's own
    (a tensor's or numpy scalar's dtype; a Python bool bool, int int64, float float32), combined
    by promote_types, so tensor([tensor(1), tensor(2.5)]) is float32 and two bf16 scalars stay
    bf16 (numpy's promotion made them float64 and float32). None for a leaf of another kind."""
    out, stack = None, [data]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
            continue
        if isinstance(v, Tensor):
            d = v.dtype
        elif isinstance(v, (np.generic, np.ndarray)):
            d = _KEPT_NUMPY.get(_kept_numpy_dtype(v.dtype), float64)
        elif isinstance(v, builtins.bool):
            d = bool_
        elif isinstance(v, numbers.Integral):
            d = int64
        elif isinstance(v, numbers.Real):
            d = float32
        else:
            return None
        out = d if out is None else _core.promote_types(out, d)
    return out


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of ``data`` (nested lists, scalars, numpy arrays, tensors).
    Python floats become float32, ints int64, bools bool; numpy arrays, numpy scalars and 0-d
    tensors keep their dtype, and a list led by one takes torch's promotion of its items' dtypes
    (_sequence_dtype). Python numbers into an integer dtype must fit it."""
    dtype = as_dtype(dtype)
    if isinstance(data, Tensor):
        t = data.detach().to(dtype=dtype or data.dtype).clone()
    else:
        from_numpy_array = isinstance(data, (np.ndarray, np.generic)) or isinstance(
            _first_number(data), (np.generic, Tensor))
        if dtype is None and from_numpy_array and isinstance(data, (list, tuple)):
            dtype = _sequence_dtype(data)
        try:
            arr = np.asarray(data)
        except RuntimeError:  # a tensor inside requires grad (numpy() refuses it): its values
            arr = np.asarray(_detached(data))  # walked only then: a Python walk of every element
        if arr.dtype == object:
            raise TypeError("tensor(): data must be numbers or nested sequences of numbers of equal length")
        if arr.dtype.kind == "c":
            raise TypeError("tensor(): complex numbers are not supported (the imaginary part would be lost)")
        if not arr.dtype.isnative:  # a big-endian array's bytes, read as they are, would be other numbers
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype == np.uint64 and (arr > np.iinfo(np.int64).max).any():  # numpy's too: no uint64 here
            raise OverflowError("tensor(): an integer does not fit in int64")
        if not from_numpy_array or arr.dtype.kind not in "fiub" or arr.dtype == np.uint64:
            # Python floats: float32 by default, as torch; a requested dtype is reached from
            # float64 so that float64 data never passes through float32
            as_float = np.float32 if dtype is None else np.float64
            arr = arr.astype({bool_: np.bool_, int64: np.int64}.get(_infer_dtype(arr), as_float))
        if dtype in _INT_RANGES and not from_numpy_array and arr.size:
            _check_int_range(arr, dtype)
        arr = arr.astype(_kept_numpy_dtype(arr.dtype), copy=False)
        t = _core.from_numpy(arr, dtype)
    t = t.to(device=as_device(device))
    return _finish(t, requires_grad)


def _detached(data):
    """Nested lists with their tensors detached: numpy reads each through numpy(), which refuses
    a tensor that requires grad (tensor([loss_a, loss_b]) copies values, as torch's does)."""
    if isinstance(data, Tensor):
        return data.detach()
    if isinstance(data, (list, tuple)):
        return [_detached(d) for d in data]
    return data


def from_numpy(arr: np.ndarray):
    """A tensor sharing ``arr``'s memory (through DLPack); read-only arrays are copied."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(arr).__name__}")
    if not arr.dtype.isnative:
        raise ValueError(f"from_numpy: the array's byte order ({arr.dtype.str}) is not this machine's; "
                         f"convert it (arr.astype(arr.dtype.newbyteorder('='))) or use tensor()")
    try:
        return from_dlpack(arr)
    except (BufferError, TypeError):
        return _core.from_numpy(arr)


def from_dlpack(obj):
    """A tensor sharing the memory of any DLPack producer (numpy, torch, ...), no copy."""
    if isinstance(obj, Tensor):
        return obj
    if hasattr(obj, "__dlpack__"):
        kind, index = obj.__dlpack_device__()[:2]
        kwargs = {}
        if kind == 2:  # CUDA: the producer orders its pending work before our current stream
            ours = _core.cuda_current_stream(index) if _core.cuda_available() else 0
            # on the default stream, where torch also works by default, nothing needs ordering
            kwargs = {"stream": ours if ours else None}
        try:  # DLPack 1.0 capsules carry a read-only flag; ask for them first
            capsule = obj.__dlpack__(max_version=(1, 0), **kwargs)
        except TypeError:
            capsule = obj.__dlpack__(**kwargs)
    else:
        capsule = obj  # already a capsule
    return _core.from_dlpack_capsule(capsule)


# The creation ops take their numbers as double attributes, and integers past 2^53 are not all
# doubles: int64 values beyond it are made by numpy on the host and copied instead (rare: ids,
# positions and counts stay far below).
_DOUBLE_EXACT = 2 ** 53


def past_double(dtype, *values) -> bool:
    """Whether int64 values would lose digits as doubles (every value an int, one past 2^53)."""
    if dtype != int64:  # on every scalar operand's path: one comparison for the other dtypes
        return False
    ints = builtins.all(isinstance(v, numbers.Integral) and not isinstance(v, builtins.bool)
                        for v in values)
    return ints and builtins.any(abs(int(v)) > _DOUBLE_EXACT for v in values)


def fill_number(value, dtype):
    """A number to write into a tensor of dtype, as torch reads it: a negative integer into uint8
    wraps (-1 is 255, down to -255); anything else goes to the op's range check as it is."""
    if (dtype == uint8 and isinstance(value, numbers.Integral) and not isinstance(value, builtins.bool)
            and _INT_RANGES[uint8][0] <= value < 0):
        return int(value) + 256
    return value


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    if dtype is None:
        dtype = bool_ if isinstance(fill_value, builtins.bool) else (
            int64 if isinstance(fill_value, numbers.Integral) else float32)
    fill_value = fill_number(fill_value, as_dtype(dtype))
    if past_double(as_dtype(dtype), fill_value):
        lo, hi = _INT_RANGES[int64]
        if not lo <= int(fill_value) <= hi:  # as the op refuses a double out of range
            raise RuntimeError(f"full: value {fill_value} cannot be converted to int64 without overflow")
        t = tensor(np.full(_shape([shape]), int(fill_value), np.int64), device=device)
    else:
        t = _core.ops.full(_shape([shape]), float(fill_value), as_dtype(dtype), as_device(device))
    return _finish(t, requires_grad)


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return full(_shape(shape), 0.0, dtype or float32, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return full(_shape(shape), 1.0, dtype or float32, device, requires_grad)


def empty(*shape, dtype=None, device=None, requires_grad=False):
    # Filled with NaN-free zeros: uninitialised memory would make results depend on the allocator.
    return zeros(*shape, dtype=dtype, device=device, requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    # 0-d tensors as bounds count as their numbers (an int64 one: an integer range, as torch)
    start, end, step = (v.item() if isinstance(v, Tensor) and v.ndim == 0 else v for v in (start, end, step))
    if end is None:
        start, end = 0, start
    if step == 0 or not all(isinstance(v, numbers.Integral) or math.isfinite(v) for v in (start, end, step)):
        raise ValueError(f"arange: start, end and step must be finite, and step must be nonzero; got {start}, {end}, {step}")
    if (end - start) * step < 0:
        raise ValueError(f"arange: the range from {start} to {end} runs against the step's sign ({step})")
    if dtype is None:
        ints = builtins.all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = int64 if ints else float32
    if past_double(as_dtype(dtype), start, end, step) and step != 0:
        t = tensor(np.arange(int(start), int(end), int(step), dtype=np.int64), device=device)
    else:
        t = _core.ops.arange(float(start), float(end), float(step), as_dtype(dtype), as_device(device))
    return _finish(t, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    """steps values from start to end, as torch (cpp/ops/linspace.h): step = (end - start) /
    (steps - 1), value i = start + i step for i < steps // 2, else end - (steps - 1 - i) step."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, builtins.bool):
        raise TypeError(f"linspace: steps must be an integer, got {type(steps).__name__}")
    t = _core.ops.linspace(float(start), float(end), int(steps), as_dtype(dtype, float32), as_device(device))
    return _finish(t, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Uniform [0, 1) from the Philox stream (see core/philox.h)."""
    t = _core.ops.rand(_shape(shape), as_dtype(dtype, float32), as_device(device))
    return _finish(t, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Standard normal from the Philox stream (Box-Muller, see core/philox.h)."""
    t = _core.ops.randn(_shape(shape), as_dtype(dtype, float32), as_device(device))
    return _finish(t, requires_grad)


def randint(low, high=None, size=(), dtype=None, device=None):
    """Integers in [low, high); randint(high, size) as torch's."""
    if isinstance(high, (tuple, list)) and size == ():
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    return _core.ops.randint(int(low), int(high), _shape([size]), as_dtype(dtype, int64),
                             as_device(device))


def _like(fn, t, dtype, device, requires_grad, *extra):
    return fn(t.shape, *extra, dtype=dtype or t.dtype, device=device or t.device,
              requires_grad=requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _like(zeros, t, dtype, device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _like(ones, t, dtype, device, requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _like(empty, t, dtype, device, requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return full(t.shape, fill_value, dtype or t.dtype, device or t.device, requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return _like(rand, t, dtype, device, requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return _like(randn, t, dtype, device, requires_grad)
