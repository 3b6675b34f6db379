"""sort / argsort against torch (stable): forward, gradient, float64 and float32, ties, NaN."""
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
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((4, 9, 3), 1), ((4, 9, 3), 0), ((3, 1023), -1), ((1,), 0)])
@pytest.mark.parametrize("descending", [False, True])
def test_sort(dtype, tol, shape, dim, descending):
    a = rng.standard_normal(shape).astype(dtype)
    x, t = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    out = F.sort(x, dim, descending)
    ref = torch.sort(t, dim=dim, descending=descending, stable=True)
    close(out.values, ref.values, 0)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices.numpy())
    np.testing.assert_array_equal(F.argsort(x, dim, descending).numpy(), ref.indices.numpy())
    w = rng.standard_normal(shape).astype(dtype)
    (out.values * ls.tensor(w)).sum().backward()
    (ref.values * torch.tensor(w)).sum().backward()
    close(x.grad, t.grad, tol)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("np_dtype", [np.float64, np.int64, np.int32])
def test_sort_stable_ties_and_nan(descending, np_dtype):
    a = rng.integers(0, 4, (5, 13)).astype(np_dtype)
    if np_dtype == np.float64:
        a[1, [2, 5, 9]] = np.nan
    out = F.sort(ls.tensor(a), 1, descending)
    ref = torch.sort(torch.tensor(a), dim=1, descending=descending, stable=True)
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices.numpy())
    np.testing.assert_array_equal(out.values.numpy(), ref.values.numpy())


def test_sort_method_strided_and_empty():
    a = rng.standard_normal((6, 5))
    x = ls.tensor(a).transpose(0, 1)
    out = x.sort(dim=1)
    ref = torch.sort(torch.tensor(a).transpose(0, 1), 1)
    np.testing.assert_array_equal(out.values.numpy(), ref.values.numpy())
    assert x.argsort().shape == (5, 6)
    assert F.sort(ls.zeros(3, 0)).values.shape == (3, 0)


def test_errors():
    with pytest.raises(IndexError, match="sort: dimension 2 is out of range"):
        F.sort(ls.zeros(3, 4), 2)
    with pytest.raises(TypeError, match="sort: input must be a Tensor"):
        F.sort(np.zeros(3))


def test_sort_float16():
    a = rng.standard_normal((3, 50)).astype(np.float16)  # 16-bit rounding gives ties
    out = F.sort(ls.tensor(a), 1, True)
    ref = torch.sort(torch.tensor(a), dim=1, descending=True, stable=True)
    assert out.values.dtype == ls.float16
    np.testing.assert_array_equal(out.values.numpy(), ref.values.numpy())
    np.testing.assert_array_equal(out.indices.numpy(), ref.indices.numpy())
