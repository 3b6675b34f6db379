"""layer_norm against torch: with/without weight and bias, several normalized dims, float64 and
float32, every gradient."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (7,)])
@pytest.mark.parametrize("affine", ["wb", "w", "b", ""])
def test_matches_torch(shape, affine, dtype):
    C = shape[-1]
    w = randn(C) if "w" in affine else None
    b = randn(C) if "b" in affine else None
    x = randn(*shape, scale=2.0) + 1.5
    against_torch(lambda x, w, b: F.layer_norm(x, (C,), w, b, eps=1e-5),
                  lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), w, b, eps=1e-5),
                  [x, w, b], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_normalized_dims(dtype):
    against_torch(lambda x, w, b: F.layer_norm(x, (3, 5), w, b),
                  lambda x, w, b: torch.nn.functional.layer_norm(x, (3, 5), w, b),
                  [randn(4, 3, 5), randn(3, 5), randn(3, 5)], dtype)


def test_single_feature():
    # C = 1: x - mean is exactly 0, so y = bias and no gradient reaches x or the weight
    # (a relative comparison would only measure rounding noise around 0).
    x = ls.tensor(randn(5, 1), requires_grad=True)
    w, b = (ls.tensor(randn(1), requires_grad=True) for _ in range(2))
    y = F.layer_norm(x, (1,), w, b)
    np.testing.assert_array_equal(y.numpy(), np.broadcast_to(b.numpy(), (5, 1)))
    g = randn(5, 1)
    (y * ls.tensor(g)).sum().backward()
    assert np.abs(x.grad.numpy()).max() < 1e-12 and np.abs(w.grad.numpy()).max() == 0
    np.testing.assert_allclose(b.grad.numpy(), g.sum(0), rtol=1e-12)


def test_int_normalized_shape_and_eps():
    x = randn(4, 6)
    y = F.layer_norm(ls.tensor(x), 6, eps=0.5)
    np.testing.assert_allclose(y.numpy(), torch.nn.functional.layer_norm(torch.tensor(x), (6,), eps=0.5).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_empty_and_non_contiguous():
    assert tuple(F.layer_norm(ls.zeros(0, 8), (8,)).shape) == (0, 8)
    x = randn(8, 5)
    y = F.layer_norm(ls.tensor(x).transpose(0, 1), (8,))
    np.testing.assert_allclose(y.numpy(), torch.nn.functional.layer_norm(torch.tensor(x).T, (8,)).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="layer_norm"):
        F.layer_norm(x, (4,))
    with pytest.raises(ValueError, match="layer_norm: weight"):
        F.layer_norm(x, (3,), ls.zeros(4))
    with pytest.raises(ValueError, match="layer_norm: bias"):
        F.layer_norm(x, (3,), None, ls.zeros(2))
    with pytest.raises(TypeError, match="layer_norm"):
        F.layer_norm(x, (3,), ls.zeros(3, dtype=ls.float64))
    with pytest.raises(TypeError, match="layer_norm"):
        F.layer_norm(ls.tensor([[1, 2, 3]]), (3,))
    with pytest.raises(ValueError, match="layer_norm: eps"):
        F.layer_norm(x, (3,), eps=-1.0)
