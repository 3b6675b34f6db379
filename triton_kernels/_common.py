"""Helpers shared by the kernel modules: launch sizes, the float32 statistics dtype, and `launch`,
which starts a kernel without triton's per-call JIT work once a specialisation is compiled."""
import collections
import functools
import inspect

import llmscratch_core as _core
import torch
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from . import interpreted


def row_block(n: int, cap: int = 4096) -> int:
    """Power-of-two block for a row of n elements: the whole row up to `cap`, else `cap`-wide
    chunks that a loop walks (cap keeps register pressure bounded for long rows)."""
    return min(triton.next_power_of_2(max(n, 1)), cap)


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as the native kernels name it in errors: "float32", not "torch.float32"."""
    return str(dtype).removeprefix("torch.")


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics (mean, rstd, lse) of 16-bit inputs are kept in float32: a bfloat16 lse of
    about 10 would carry an error of 0.06, i.e. 6% in every probability of the backward."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def lru_get(cache, key):
    """cache[key] (an OrderedDict) marked most recently used, or None."""
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
    return hit


def lru_put(cache, key, value, limit):
    """cache[key] = value, dropping the least recently used entry past `limit` entries (the
    compiled-kernel and table caches: a caller that varies shapes endlessly would otherwise grow
    them without end)."""
    cache[key] = value
    if len(cache) > limit:
        cache.popitem(last=False)
    return value


def fold_stride(shape, strides):
    """One stride that walks the dims (shape, strides) in row-major order, or None."""
    stride, count = 0, 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n == 1:
            continue
        if count == 1:
            stride = s
        elif s != stride * count:
            return None
        count *= n
    return stride


def row_stride(t):
    """t (..., C) (at least 1-D) as rows of C contiguous elements: the stride between its rows
    (the leading dims folded; C for a single row, whose stride is never stepped), or None when its
    layout has no such description. The rule of llmscratch_core's ops::contiguous_rows."""
    if t.dim() == 0 or (t.shape[-1] > 1 and t.stride(-1) != 1):
        return None
    ld = fold_stride(list(t.shape[:-1]), t.stride()[:-1])
    if ld is not None and t.shape[:-1].numel() <= 1:
        ld = t.shape[-1]
    return ld


@functools.lru_cache(maxsize=256)
def _matmul_row_stride(n: int, itemsize: int) -> int:
    return _core.ops.matmul_row_stride(n, itemsize)


def matmul_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised tensor of `shape` whose rows are padded as the CUDA backend pads a matmul
    output (llmscratch_core.ops.matmul_row_stride: GPT-2's 50257-wide logits get rows of 50304),
    so that the output layer's GEMMs read it, or a gradient of its layout, where it is: the copy
    engine wants 16-byte row strides (an unaligned operand is copied into padded rows first)."""
    n = shape[-1]
    ld = _matmul_row_stride(n, dtype.itemsize)
    if ld == n:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty((*shape[:-1], ld), dtype=dtype, device=device)[..., :n]


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    """The GPU's SM count (asked once per device: the property lookup costs microseconds a call)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def sm90_or_later(device_index: int) -> bool:
    """Compute capability 9.0 or later (Hopper on): TMA descriptors, programmatic dependent
    launch."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def cuda_index(device: torch.device) -> int:
    """The index of a CUDA device, the current one for a device named without an index."""
    return device.index if device.index is not None else torch.cuda.current_device()


def num_programs(device: torch.device, rows: int, per_sm: int = 4) -> int:
    """Programs for the kernels that stride over rows and keep per-program partial sums (norm
    weight gradients): `per_sm` per SM on a GPU, a handful in the interpreter."""
    if interpreted() or device.type != "cuda":
        return max(1, min(rows, 4))
    return max(1, min(rows, per_sm * num_sms(cuda_index(device))))


def row_warps(block: int) -> int:
    """Warps for a program that holds `block` elements of one row in registers."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


MAX_ROW = 65536  # longest row the one-block row kernels (norms) hold in registers


def check_row(op: str, C: int) -> None:
    if C > MAX_ROW:
        raise ValueError(f"{op} (triton): rows of {C} elements exceed the {MAX_ROW} this kernel "
                         "holds in registers; use the cuda or cpu backend")


ELEMENTWISE_BLOCK = 1024  # elements per program of the elementwise kernels (4 warps, 8 per thread)


def flat_grid(n: int):
    return (triton.cdiv(n, ELEMENTWISE_BLOCK),)


POINTWISE_WARPS = 8


def pointwise_block(dtype: torch.dtype) -> int:
    """Elements per program of the streaming pointwise kernels (swiglu, dropout) at
    POINTWISE_WARPS: four 16-byte vectors per thread and tensor (8192 elements for 16-bit types,
    4096 for float32), for more loads in flight than the earlier 1024 elements of 4 warps (one
    vector per thread for 16-bit types; bench/notes_triton_tuning.md)."""
    return POINTWISE_WARPS * 32 * 4 * 16 // dtype.itemsize


# launch: the direct path to a compiled kernel.
#
# `kernel[grid](*args, **meta)` makes triton's JIT bind the arguments, work out their
# specialisation (each tensor's dtype and 16-byte alignment, each integer's width, divisibility by
# 16 and being 1), build a cache key from it and look the compiled kernel up; an autotuned kernel
# adds its own lookup. Those steps cost tens of microseconds of host time a call, as long as a
# small kernel runs, and a training step makes hundreds of calls (bench/notes_triton_tuning.md).
# `launch` keys its own cache on the same facts, computed more cheaply, and launches the compiled
# kernel directly when it has seen them; the first call of each key goes through the JIT (and the
# autotuner), which compiles the kernel and returns it. The key is at least as fine as triton's,
# so the kernel it finds is the one the JIT would have chosen.
#
# Conventions for the callers: tensors, integers, floats, bools and None go positionally; every
# constexpr and launch option (num_warps) goes by keyword. An autotuned kernel's tuning keys
# (passed positionally) are keyed by value, as the autotuner does; a config with a pre-hook (the
# TMA kernels' descriptor boxes) is not cached, so such kernels take the JIT path every call.

class _Uncached(Exception):
    """An argument `launch` does not key (a tensor descriptor, say): the JIT path serves the call."""


def _spec(a):
    """What triton specialises a positional argument on (or finer)."""
    t = type(a)
    if t is torch.Tensor or isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if a is None or t is bool:
        return a
    if t is int:
        return a == 1, a % 16 == 0, -2**31 <= a < 2**31, a < 2**63
    if t is float:
        return float
    raise _Uncached


class _Plan:
    """Per kernel: its parameter names, the positions of its autotuning keys, and whether it is
    autotuned. Keys of the compiled-kernel cache hold the plan, not the kernel: a JITFunction
    hashes by its cache key, a property read under a lock on every hash."""

    def __init__(self, kernel):
        self.kernel = kernel  # (keeps id(kernel), the plans' key, from being reused)
        self.tuned = isinstance(kernel, Autotuner)
        jit = kernel.fn if self.tuned else kernel
        # a heuristic (triton.heuristics) may read any argument's value: such kernels stay on the
        # JIT path
        self.direct = isinstance(jit, JITFunction)
        if self.direct:
            self.names = list(jit.arg_names)
            self.params = {p.name: p for p in jit.params}
            self.tune_pos = tuple(self.names.index(k) for k in kernel.keys) if self.tuned else ()


_plans = {}  # id(kernel) -> _Plan
# (plan, device, specialisation, tuning keys, meta) -> (compiled kernel, trailing args), least
# recently used first (autotuned kernels key on shapes)
_compiled = collections.OrderedDict()
_COMPILED_MAX = 4096


def _check_keywords(kernel, nargs):
    """A constexpr given positionally would be keyed by its specialisation, not its value."""
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn  # through the autotuner, heuristics and JIT wrappers to the Python function
    params = list(inspect.signature(fn).parameters.values())[:nargs]
    late = [p.name for p in params if "constexpr" in str(p.annotation)]
    if late:
        raise TypeError(f"launch: pass the constexprs {late} of {fn.__name__} by keyword")


def _grid3(grid):
    return (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)


# The current device and its current stream, as triton's launcher asks torch for them (torch's
# private bindings: the public torch.cuda.current_device and current_stream cost microseconds
# more a call, and the launcher would ask again without the stream).
# (absent from a CPU-only torch, where nothing launches on a GPU)
_current_device = getattr(torch._C, "_cuda_getDevice", None)
_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def launch(kernel, grid, *args, **meta):
    """kernel[grid](*args, **meta), through the compiled kernel once its specialisation has been
    seen (see above); under the interpreter always through triton."""
    if interpreted():
        _check_keywords(kernel, len(args))
        kernel[grid](*args, **meta)
        return
    plan = _plans.get(id(kernel))
    if plan is None:
        plan = _plans[id(kernel)] = _Plan(kernel)
    if not plan.direct:
        kernel[grid](*args, **meta)
        return
    try:
        spec = tuple(map(_spec, args))
    except _Uncached:
        kernel[grid](*args, **meta)
        return
    tuned = tuple(args[i] for i in plan.tune_pos if i < len(args)) if plan.tuned else ()
    device = _current_device()
    key = (plan, device, spec, tuned, tuple(meta.items()))
    try:
        hit = lru_get(_compiled, key)
    except TypeError:  # an unhashable constexpr
        kernel[grid](*args, **meta)
        return
    if hit is not None:
        compiled, tail = hit
        full = args + tail
        if callable(grid):
            grid = grid(dict(zip(plan.names, full)))
        compiled[_grid3(grid)](*full, stream=_current_stream(device))
        return
    _check_keywords(kernel, len(args))
    compiled = kernel[grid](*args, **meta)
    config = kernel.best_config if plan.tuned else None
    if compiled is None or (config is not None and config.pre_hook is not None):
        return
    given = {**meta, **(config.kwargs if config is not None else {})}
    tail = []
    for name in plan.names[len(args):]:
        if name in given:
            tail.append(given[name])
        elif plan.params[name].has_default:
            tail.append(plan.params[name].default)
        else:
            return  # an argument this plan cannot supply: keep the JIT path
    lru_put(_compiled, key, (compiled, tuple(tail)), _COMPILED_MAX)
