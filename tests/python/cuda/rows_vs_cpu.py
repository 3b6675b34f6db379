"""Helpers of the CUDA row-op tests (softmax, layer_norm, rms_norm, cross_entropy): one op runs on
the GPU in the dtype under test, on the CPU (the reference implementation, in float32, or float64
for float64) and in torch float64, all on the same dtype-rounded values; forward and every
gradient are compared with per-dtype tolerances.

Before every GPU step the caching allocator is stocked with blocks of 0xFF bytes (NaN in every
float dtype), so an output element a kernel forgets to write reads as NaN, and NaN never passes
(rel_err asserts on it)."""
import numpy as np

import llmscratch as ls
from conftest import rel_err
from cuda_vs_cpu import FLOATS as DTYPES  # noqa: F401 (re-exported to the row tests)
from cuda_vs_cpu import TOL, host, ref_dtype, rounded, torch_run, upstream_weights
# Odd shapes: one element, rows shorter and longer than a warp, a vocabulary row that is not a
# multiple of the vector width, and batch dims.
SHAPES = [(1, 1), (3, 127), (7, 1023), (5, 50257), (2, 3, 129)]
# Vectorised norm rows that norm.cuh's register backward holds: several rows per block (R above
# the grid), and a row that fills every thread's vectors (float32, C = 4096).
REG_ROWS = [(4096, 64), (600, 2048), (257, 4096)]

_rng = np.random.default_rng()  # fresh inputs on every run


def poison_cache():
    """Leaves 0xFF-filled blocks of every size class up to 16 MiB in the CUDA caching allocator."""
    blocks = [ls.full((1 << k,), 255, dtype=ls.uint8, device="cuda") for k in range(9, 25) for _ in range(3)]
    del blocks


def run(fn, arrays, dtype, device, w=None):
    """fn(*tensors): floating arrays become dtype tensors on device (requiring grad when w is
    given), integer arrays integer tensors, None stays None. Returns (out, grads) as float64
    arrays; grads are those of sum(out * w) for the floating inputs."""
    ts = []
    for a in arrays:
        if a is None:
            ts.append(None)
            continue
        t = ls.tensor(np.ascontiguousarray(a))
        if a.dtype.kind == "f":
            t = t.to(dtype=dtype)
        t = t.to(device=device)
        if a.dtype.kind == "f" and w is not None:
            t.requires_grad_()
        ts.append(t)
    if device != "cpu":
        poison_cache()
    out = fn(*ts)
    grads = []
    if w is not None:
        wt = ls.tensor(np.ascontiguousarray(w)).to(dtype=out.dtype).to(device=device)
        loss = (out * wt).sum()
        if device != "cpu":
            poison_cache()
        loss.backward()
        grads = [None if t.grad is None else host(t.grad)
                 for t, a in zip(ts, arrays) if a is not None and a.dtype.kind == "f"]
    return host(out), grads


def check(fn, torch_fn, arrays, dtype, tol=None, grad=True):
    """The GPU op in dtype against the CPU op and torch float64 on the same dtype-rounded inputs,
    forward and every gradient. The bound adapts to the conditioning of the problem: the GPU
    result may be off by max(tol, 4 x the CPU reference's own error against torch float64)."""
    tol = tol or TOL[dtype]
    arrays = [None if a is None else rounded(a, dtype) if a.dtype.kind == "f" else a for a in arrays]
    shape = run(fn, arrays, ref_dtype(dtype), "cpu")[0].shape
    w = upstream_weights(shape, dtype, _rng) if grad else None
    cpu_out, cpu_grads = run(fn, arrays, ref_dtype(dtype), "cpu", w)
    gpu_out, gpu_grads = run(fn, arrays, dtype, "cuda", w)
    t_out, t_grads = torch_run(torch_fn, arrays, w)
    assert gpu_out.shape == cpu_out.shape == t_out.shape, (gpu_out.shape, cpu_out.shape, t_out.shape)
    results = [("output", gpu_out, cpu_out, t_out)]
    results += [(f"gradient of input {i}", g, c, t)
                for i, (g, c, t) in enumerate(zip(gpu_grads, cpu_grads, t_grads))]
    for what, g, c, t in results:
        assert g is not None and c is not None, f"{what}: missing"
        limit = max(tol, 4 * rel_err(c, t))
        e_cpu, e_torch = rel_err(g, c), rel_err(g, t)
        assert e_cpu <= limit and e_torch <= limit, \
            f"{what}: relative error {e_cpu:.2e} against the CPU op, {e_torch:.2e} against torch (limit {limit:.1e})"
