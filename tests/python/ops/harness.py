"""Compare an llmscratch function with its torch twin on the same random inputs: forward and
the gradient of every floating input, in float64 and float32."""
import numpy as np

import llmscratch as ls
from conftest import TOL, randn, rel_err, torch


def check(ls_fn, torch_fn, shapes, dtype=np.float64, grad=True, positive=False, tol=None, make=None):
    """shapes: one shape per input. make(shape, dtype) overrides the random input maker."""
    arrays = []
    for s in shapes:
        a = make(s, dtype) if make else randn(*s, dtype=dtype)
        if positive:
            a = np.abs(a) + 0.5
        arrays.append(a.astype(dtype))
    ours = [ls.tensor(a, requires_grad=grad) for a in arrays]
    refs = [torch.tensor(a, requires_grad=grad) for a in arrays]
    out, ref = ls_fn(*ours), torch_fn(*refs)
    tol = tol or TOL[dtype]
    err = rel_err(out, ref)
    assert err < tol, f"forward relative error {err:.3e}"
    if grad:
        w = randn(*ref.shape, dtype=dtype)
        (out * ls.tensor(w)).sum().backward()
        (ref * torch.tensor(w)).sum().backward()
        for i, (o, r) in enumerate(zip(ours, refs)):
            assert o.grad is not None, f"input {i} got no gradient"
            err = rel_err(o.grad, r.grad)
            assert err < tol * 10, f"gradient of input {i}: relative error {err:.3e}"
    return out
