"""Helpers of the CUDA tests of the data-movement ops (max, cat, index ops, cumsum, topk, sort):
the same values on the CPU (the reference implementation) and on the GPU, registry calls with
the ops' exact signatures, exact comparisons (these ops move or select values, so most results
must match bit for bit, NaN included)."""
import numpy as np

import llmscratch as ls
import llmscratch_core as core

rng = np.random.default_rng()  # fresh inputs on every run

FLOATS = [ls.float32, ls.float64, ls.bfloat16, ls.float16]
INTS = [ls.int32, ls.int64, ls.uint8, ls.bool_]


def make(a, dtype, device, requires_grad=False):
    """Array a as a dtype tensor on device (a leaf that requires grad when asked)."""
    t = ls.tensor(np.array(a, order="C")).to(dtype=dtype).to(device=device)  # keeps 0-d arrays 0-d
    if requires_grad:
        t.requires_grad_()
    return t


def both(a, dtype, requires_grad=False):
    """The same dtype-rounded values on the CPU and on the GPU."""
    return make(a, dtype, "cpu", requires_grad), make(a, dtype, "cuda", requires_grad)


def host(t):
    """A tensor's values on the host: float64 for floating dtypes, int64 otherwise."""
    t = t.detach().cpu()
    return np.asarray(t.to(dtype=ls.float64 if t.dtype.is_floating_point else ls.int64))


# Block sizes (float32 elements) handed back to the caching allocator full of NaN before each GPU
# call: 512 B .. 16 MiB, four of each. The allocator serves a request from the smallest cached
# block at least as large, so outputs come from NaN-filled memory and an element a kernel fails
# to write cannot pass (NaN bytes are also an absurd value for integer outputs).
_POISON_SIZES = [128 << i for i in range(16)] * 4


def poison_free_memory():
    blocks = [ls.full((n,), float("nan"), dtype=ls.float32, device="cuda") for n in _POISON_SIZES]
    del blocks


def call(op, inputs, **attrs):
    """The registry op with its exact signature; GPU calls run on NaN-filled free memory."""
    inputs = list(inputs)
    if any("cuda" in str(t.device) for t in inputs):
        poison_free_memory()
    return core.call(op, inputs, attrs)


def assert_same(gpu, cpu, what=""):
    """Equal values and shapes (NaN equal to NaN), dtype too."""
    assert "cuda" in str(gpu.device), f"{what}: result on {gpu.device}"
    assert gpu.dtype == cpu.dtype, f"{what}: dtype {gpu.dtype} vs {cpu.dtype}"
    assert tuple(gpu.shape) == tuple(cpu.shape), f"{what}: shape {tuple(gpu.shape)} vs {tuple(cpu.shape)}"
    np.testing.assert_array_equal(host(gpu), host(cpu), err_msg=what)


def weights(shape):
    """Random gradient weights (never zeros) for sum(out * w).backward()."""
    return rng.standard_normal(shape) + 0.1


def backward_both(cpu_out, gpu_out, dtype):
    w = weights(tuple(cpu_out.shape))
    (cpu_out * make(w, dtype, "cpu")).sum().backward()
    (gpu_out * make(w, dtype, "cuda")).sum().backward()


def tie_values(shape, dtype, nan=True):
    """Small integers (many ties, exact in every dtype), with a few NaNs in floating dtypes."""
    lo = 0 if dtype in (ls.uint8, ls.bool_) else -3
    hi = 2 if dtype == ls.bool_ else 4
    a = rng.integers(lo, hi, shape).astype(np.float64)
    if nan and dtype.is_floating_point and a.size > 2:
        flat = a.reshape(-1)
        flat[rng.choice(a.size, max(1, a.size // 50), replace=False)] = np.nan
    return a


def normal_values(shape, dtype):
    if dtype.is_floating_point:
        return rng.standard_normal(shape)
    lo, hi = (0, 2) if dtype == ls.bool_ else (0, 256) if dtype == ls.uint8 else (-1000, 1000)
    return rng.integers(lo, hi, shape).astype(np.float64)
