"""topk against torch: forward, gradient, float64 and float32, ties, NaN, bad k."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(np.float64, 1e-12), (np.float32, 1e-6)]
rng = np.random.default_rng()


def close(out, ref, tol):
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((4, 9, 3), 1), ((4, 9, 3), 0), ((5, 127), -1), ((3, 1), 1)])
@pytest.mark.parametrize("largest", [True, False])
def test_topk(dtype, tol, shape, dim, largest):
    a = rng.standard_normal(shape).astype(dtype)
    x, t = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    for k in sorted({0, 1, min(3, shape[dim]), shape[dim]}):
        out = F.topk(x, k, dim, largest)
        ref = torch.topk(t, k, dim, largest)
        assert out.indices.dtype == ls.int64
        close(out.values, ref.values, 0)
        np.testing.assert_array_equal(out.indices.numpy(), ref.indices.numpy())
    out, ref = x.topk(min(3, shape[dim]), dim, largest), torch.topk(t, min(3, shape[dim]), dim, largest)
    w = rng.standard_normal(tuple(ref.values.shape)).astype(dtype)
    (out.values * ls.tensor(w)).sum().backward()
    (ref.values * torch.tensor(w)).sum().backward()
    close(x.grad, t.grad, tol)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_ties_lower_index_first(largest):
    # torch.topk leaves the order of ties unspecified; a stable sort defines the expected one.
    a = rng.integers(0, 4, (6, 11)).astype(np.float64)
    a[0, 3] = a[0, 7] = np.nan
    out = F.topk(ls.tensor(a), 5, 1, largest)
    ref = torch.sort(torch.tensor(a), dim=1, descending=largest, stable=True)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices[:, :5].numpy())
    np.testing.assert_array_equal(out.values.numpy(), ref.values[:, :5].numpy())


def test_topk_nan_is_largest():
    a = np.array([1.0, np.nan, 3.0, np.nan])
    out = F.topk(ls.tensor(a), 3)
    np.testing.assert_array_equal(out.indices.numpy(), [1, 3, 2])
    out = F.topk(ls.tensor(a), 3, largest=False)
    np.testing.assert_array_equal(out.indices.numpy(), [0, 2, 1])


def test_topk_integers_and_empty():
    a = rng.integers(-50, 50, (4, 8)).astype(np.int32)
    out = F.topk(ls.tensor(a), 3)
    assert out.values.dtype == ls.int32
    np.testing.assert_array_equal(out.values.numpy(), -np.sort(-a, 1)[:, :3])
    assert F.topk(ls.zeros(0, 5), 2).values.shape == (0, 2)


def test_errors():
    x = ls.zeros(3, 4)
    with pytest.raises(IndexError, match=r"topk: k = 5 is out of range for dimension 1 of size 4"):
        F.topk(x, 5)
    with pytest.raises(IndexError, match=r"topk: k = -1 is out of range"):
        F.topk(x, -1)
    with pytest.raises(IndexError, match="topk: dimension 2 is out of range"):
        F.topk(x, 1, dim=2)
    with pytest.raises(TypeError, match="topk: k must be an integer"):
        F.topk(x, 1.5)


def test_topk_float16():
    a = rng.standard_normal((3, 50)).astype(np.float16)
    out = F.topk(ls.tensor(a), 7, 1)
    ref = torch.sort(torch.tensor(a), dim=1, descending=True, stable=True)
    assert out.values.dtype == ls.float16
    np.testing.assert_array_equal(out.values.numpy(), ref.values[:, :7].numpy())
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices[:, :7].numpy())
