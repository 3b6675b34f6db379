"""softmax / log_softmax against torch: every dim, odd shapes, float64 and float32, gradients."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch

DTYPES = [np.float64, np.float32]
SHAPES = [(1,), (3, 5), (127, 33), (2, 7, 130), (4, 1, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_matches_torch_every_dim(name, shape, dtype):
    for dim in range(-len(shape), len(shape)):
        against_torch(lambda x: getattr(F, name)(x, dim), lambda x: getattr(torch, name)(x, dim),
                      [randn(*shape, scale=3.0)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_and_masked_logits(dtype):
    x = randn(6, 40, scale=50.0)
    x[:, ::3] = -np.inf  # a masked attention row
    ls_x, t_x = ls.tensor(x.astype(dtype)), torch.tensor(x)
    np.testing.assert_allclose(F.softmax(ls_x, -1).numpy(), torch.softmax(t_x, -1).numpy(),
                               rtol=1e-5, atol=1e-7)
    assert (F.softmax(ls_x, -1).numpy()[:, ::3] == 0).all()


def test_non_contiguous_and_empty():
    x = randn(9, 13)
    xt = ls.tensor(x).transpose(0, 1)
    np.testing.assert_allclose(F.softmax(xt, 0).numpy(), torch.softmax(torch.tensor(x).T, 0).numpy(),
                               rtol=1e-12)
    assert tuple(F.log_softmax(ls.zeros(0, 4), 1).shape) == (0, 4)
    assert tuple(F.softmax(ls.zeros(3, 0), 1).shape) == (3, 0)


def test_dtype_argument():
    x = ls.tensor(randn(3, 4).astype(np.float32))
    assert F.softmax(x, -1, dtype=ls.float64).dtype == ls.float64


def test_bad_inputs():
    with pytest.raises(IndexError, match="softmax"):
        F.softmax(ls.zeros(2, 3), 2)
    with pytest.raises(IndexError, match="log_softmax"):
        F.log_softmax(ls.zeros(2, 3), -3)
    with pytest.raises(TypeError, match="softmax"):
        F.softmax(ls.tensor([1, 2, 3]), 0)
    with pytest.raises(TypeError, match="softmax: dim"):
        F.softmax(ls.zeros(2, 3), None)
    with pytest.raises(TypeError, match="log_softmax"):
        F.log_softmax(np.zeros(3), 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 0])  # the row kernel and the column kernel
def test_log_softmax_of_large_logits_subtracts_the_max_first(dtype, dim):
    # (x - m) - log s, not x - (m + log s): the rounded sum m + log s lost the low bits of log s
    # (1e4: an error of 5e-4; 1e30: all of log 2)
    rows = np.array([[1e4, 1e4 + 0.5, 1e4 - 2], [-1e4, -1e4 + 0.25, -1e4 - 3], [1e30, 1e30, -1e30]])
    x = rows if dim == 1 else rows.T.copy()
    ours = F.log_softmax(ls.tensor(x.astype(dtype)), dim).numpy()
    ref = torch.log_softmax(torch.tensor(x.astype(dtype).astype(np.float64)), dim).numpy()
    tol = 1e-15 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)
    assert np.allclose(F.log_softmax(ls.tensor(np.array([[1e30, 1e30]], dtype)), 1).numpy(), -np.log(2))
