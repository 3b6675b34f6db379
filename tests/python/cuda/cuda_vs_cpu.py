"""Helpers of the CUDA op tests: run one op on the GPU in the dtype under test and on the CPU
(the reference implementation, float32 or float64) on the same rounded values, forward and
gradients, and compare with per-dtype tolerances; torch float64 as a second reference."""
import numpy as np

import llmscratch as ls
from conftest import rel_err, to_np, torch

FLOATS = [ls.float32, ls.float64, ls.bfloat16, ls.float16]
TOL = {ls.float32: 1e-5, ls.float64: 1e-12, ls.bfloat16: 1e-2, ls.float16: 2e-3}


def ref_dtype(dtype):
    """The CPU reference dtype for a GPU dtype (the CPU ops are float32/float64)."""
    return ls.float64 if dtype == ls.float64 else ls.float32


def host(t):
    """A tensor's values as a float64 numpy array on the host."""
    return to_np(t.detach().cpu().to(dtype=ls.float64))


def rounded(a, dtype):
    """The float64 array a rounded to dtype (and back to float64)."""
    return host(ls.tensor(np.ascontiguousarray(a, dtype=np.float64)).to(dtype=dtype))


ITEMSIZE = {ls.float32: 4, ls.float64: 8, ls.bfloat16: 2, ls.float16: 2}


def poison_next_allocation(nbytes):
    """Leave one cached GPU block of nbytes filled with all-ones bits (NaN as float32, float64,
    bfloat16 and float16) as the only free block, so the caching allocator hands it to the next
    output of that size: an element the kernel fails to write then reads as NaN."""
    ls.cuda.empty_cache()
    block = ls.full(max(nbytes // 4, 1), -1, dtype=ls.int32, device="cuda")
    del block


def run(fn, arrays, dtype, device, w=None, out_bytes=0):
    """fn(*tensors): floating arrays become dtype tensors on device (requiring grad when w is
    given), integer arrays int tensors. Returns (out, grads) as float64 arrays; with w, grads are
    those of sum(out * w) for the floating inputs (None where no gradient flowed). On the GPU
    with out_bytes, the output's memory is poisoned first (poison_next_allocation)."""
    ts = []
    for a in arrays:
        t = ls.tensor(np.ascontiguousarray(a))
        if a.dtype.kind == "f":
            t = t.to(dtype=dtype)
        t = t.to(device=device)
        if a.dtype.kind == "f" and w is not None:
            t.requires_grad_()
        ts.append(t)
    if device == "cuda" and out_bytes:
        poison_next_allocation(out_bytes)
    out = fn(*ts)
    grads = []
    if w is not None:
        (out * ls.tensor(w).to(dtype=dtype).to(device=device)).sum().backward()
        grads = [None if t.grad is None else host(t.grad) for t, a in zip(ts, arrays) if a.dtype.kind == "f"]
    return host(out), grads


def check(fn, arrays, dtype, torch_fn=None, tol=None, grad=True):
    """The GPU op in dtype against the CPU op (and torch_fn in float64 when given) on the same
    dtype-rounded inputs, forward and every gradient."""
    tol = tol or TOL[dtype]
    arrays = [rounded(a, dtype) if a.dtype.kind == "f" else a for a in arrays]
    out0, _ = run(fn, arrays, ref_dtype(dtype), "cpu")  # only for the output shape
    w = upstream_weights(out0.shape, dtype) if grad else None
    gpu = run(fn, arrays, dtype, "cuda", w, out_bytes=out0.size * ITEMSIZE[dtype])
    cpu = run(fn, arrays, ref_dtype(dtype), "cpu", w)
    refs = [("cpu", cpu)]
    if torch_fn is not None:
        refs.append(("torch float64", torch_run(torch_fn, arrays, w)))
    for name, (out, grads) in refs:
        err = rel_err(gpu[0], out)
        assert err <= tol, f"forward vs {name}: relative error {err:.2e} > {tol:.0e}"
        for k, (g, r) in enumerate(zip(gpu[1], grads)):
            assert (g is None) == (r is None), f"gradient {k}: flows on one side only"
            if g is not None:
                err = rel_err(g, r)
                assert err <= tol, f"gradient {k} vs {name}: relative error {err:.2e} > {tol:.0e}"
    return gpu


def upstream_weights(shape, dtype, rng=None):
    """Weights w of the loss sum(out * w) whose gradients the tests compare, rounded to dtype and
    at least 0.25 from 0: a scalar output (a mean loss) drawn near 0 scaled its whole float16
    gradient into the subnormals (once 6e-3 off at 2e-3 allowed)."""
    w = (rng or np.random.default_rng()).standard_normal(shape)
    return rounded(w + np.where(w >= 0, 0.25, -0.25), dtype)


def torch_run(torch_fn, arrays, w=None):
    """torch_fn on float64 torch tensors of the arrays (integer arrays as they are, None stays
    None): (out, grads of sum(out * w) for the floating inputs) as numpy arrays."""
    ts = [None if a is None else
          torch.tensor(a, dtype=torch.float64, requires_grad=w is not None) if a.dtype.kind == "f" else
          torch.tensor(a)
          for a in arrays]
    out = torch_fn(*ts)
    grads = []
    if w is not None:
        (out * torch.tensor(w, dtype=torch.float64)).sum().backward()
        grads = [None if t.grad is None else t.grad.numpy()
                 for t, a in zip(ts, arrays) if a is not None and a.dtype.kind == "f"]
    return out.detach().numpy(), grads
