"""cumsum against torch: forward, gradient, float64 and float32, integer promotion, odd shapes."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(np.float64, 1e-12), (np.float32, 1e-5)]
rng = np.random.default_rng()


def close(out, ref, tol):
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5, 4), 0), ((3, 5, 4), 1), ((3, 5, 4), -1),
                                       ((2, 3, 300), 1), ((1, 1023), 1), ((1,), 0)])
def test_cumsum(dtype, tol, shape, dim):
    a = rng.standard_normal(shape).astype(dtype)
    x, t = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    out, ref = F.cumsum(x, dim), torch.cumsum(t, dim)
    assert out.dtype == x.dtype
    close(out, ref, tol)
    w = rng.standard_normal(shape).astype(dtype)
    (out * ls.tensor(w)).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    close(x.grad, t.grad, tol)


@pytest.mark.parametrize("np_dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_cumsum_integers_give_int64(np_dtype):
    a = rng.integers(0, 200, (4, 33)).astype(np_dtype)
    out = F.cumsum(ls.tensor(a), 1)
    assert out.dtype == ls.int64
    np.testing.assert_array_equal(out.numpy(), torch.cumsum(torch.tensor(a), 1).numpy())


def test_cumsum_dtype_strided_empty():
    a = rng.integers(0, 9, (3, 4))
    out = F.cumsum(ls.tensor(a), 0, dtype=ls.float64)
    assert out.dtype == ls.float64
    np.testing.assert_array_equal(out.numpy(), np.cumsum(a, 0))
    b = rng.standard_normal((5, 4))
    close(ls.tensor(b).transpose(0, 1).cumsum(1), torch.tensor(b).transpose(0, 1).cumsum(1), 1e-12)
    assert F.cumsum(ls.zeros(3, 0), 1).shape == (3, 0)


def test_errors():
    with pytest.raises(IndexError, match="cumsum: dimension 2 is out of range"):
        F.cumsum(ls.zeros(3, 4), 2)
    with pytest.raises(TypeError, match="cumsum: dim must be an integer"):
        F.cumsum(ls.zeros(3, 4), None)


def test_cumsum_float16():
    a = rng.standard_normal((3, 60)).astype(np.float16)
    x = ls.tensor(a, requires_grad=True)
    out = F.cumsum(x, 1)
    assert out.dtype == ls.float16
    # Each output is the float64 running sum, rounded to float16 through float32 (as the core's
    # dtype conversions do).
    ref = np.cumsum(a.astype(np.float64), 1).astype(np.float32).astype(np.float16)
    np.testing.assert_array_equal(out.detach().numpy(), ref)
    np.testing.assert_allclose(out.detach().numpy(), torch.cumsum(torch.tensor(a), 1).numpy(), rtol=2e-3, atol=2e-3)
