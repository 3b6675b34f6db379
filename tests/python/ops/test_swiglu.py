"""swiglu = silu(a) * b against torch (composed there), float64 and float32, both gradients."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch


def torch_swiglu(a, b):
    return torch.nn.functional.silu(a) * b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 3, 127), (64, 129)])
def test_matches_torch(shape, dtype):
    against_torch(F.swiglu, torch_swiglu, [randn(*shape, scale=3.0), randn(*shape)], dtype)


def test_one_side_requires_grad():
    a, b = randn(3, 4), randn(3, 4)
    la, lb = ls.tensor(a), ls.tensor(b, requires_grad=True)
    F.swiglu(la, lb).sum().backward()
    assert la.grad is None
    np.testing.assert_allclose(lb.grad.numpy(), torch.nn.functional.silu(torch.tensor(a)).numpy(), rtol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="swiglu: shapes"):
        F.swiglu(ls.zeros(2, 3), ls.zeros(3, 2))
    with pytest.raises(TypeError, match="swiglu"):
        F.swiglu(ls.zeros(2), ls.zeros(2, dtype=ls.float64))
    with pytest.raises(TypeError, match="swiglu"):
        F.swiglu(ls.tensor([1, 2]), ls.tensor([1, 2]))
