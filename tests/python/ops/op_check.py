"""Comparison of one llmscratch op against torch, forward and every gradient: llmscratch runs in
the dtype under test, torch in float64 on the same (rounded) inputs."""
import numpy as np

import llmscratch as ls
from conftest import TOL, assert_close, torch


def against_torch(ls_fn, torch_fn, arrays, dtype, tol=None, grad=True):
    """arrays: numpy arrays (floating ones are cast to dtype and get gradients; integer ones,
    e.g. targets, pass through) or None. ls_fn / torch_fn take the tensors in that order."""
    arrays = [a.astype(dtype) if a is not None and a.dtype.kind == "f" else a for a in arrays]
    floating = [a is not None and a.dtype.kind == "f" for a in arrays]
    ls_in = [None if a is None else ls.tensor(np.ascontiguousarray(a), requires_grad=f and grad)
             for a, f in zip(arrays, floating)]
    t_in = [None if a is None else
            torch.tensor(a.astype(np.float64) if f else a, requires_grad=f and grad)
            for a, f in zip(arrays, floating)]
    out, ref = ls_fn(*ls_in), torch_fn(*t_in)
    assert out.dtype == (ls.float32 if dtype == np.float32 else ls.float64)
    assert tuple(out.shape) == tuple(ref.shape), f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    tol = tol or TOL[dtype]
    assert_close(out, ref, dtype, tol)
    if not grad:
        return
    w = np.random.default_rng().standard_normal(tuple(ref.shape))
    (out * ls.tensor(w.astype(dtype))).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    for i, (a, b) in enumerate(zip(ls_in, t_in)):
        if a is not None and floating[i]:
            assert a.grad is not None, f"no gradient for input {i}"
            assert_close(a.grad, b.grad, dtype, tol)
