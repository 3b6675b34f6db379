"""rms_norm against torch: with/without weight, several normalized dims, float64 and float32,
every gradient."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (9,)])
@pytest.mark.parametrize("has_weight", [True, False])
def test_matches_torch(shape, has_weight, dtype):
    C = shape[-1]
    w = randn(C) if has_weight else None
    against_torch(lambda x, w: F.rms_norm(x, (C,), w, eps=1e-6),
                  lambda x, w: torch.nn.functional.rms_norm(x, (C,), w, eps=1e-6),
                  [randn(*shape), w], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_normalized_dims(dtype):
    against_torch(lambda x, w: F.rms_norm(x, (3, 5), w),
                  lambda x, w: torch.nn.functional.rms_norm(x, (3, 5), w, eps=1e-6),
                  [randn(4, 3, 5), randn(3, 5)], dtype)


def test_default_eps_none_is_machine_epsilon():
    x = randn(4, 6) * 1e-5
    for dt, tdt in [(ls.float32, torch.float32), (ls.float64, torch.float64)]:
        y = F.rms_norm(ls.tensor(x, dtype=dt), (6,), eps=None)
        ref = torch.nn.functional.rms_norm(torch.tensor(x, dtype=tdt), (6,))
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5)


def test_empty_and_zero_rows():
    assert tuple(F.rms_norm(ls.zeros(0, 3), (3,)).shape) == (0, 3)
    assert (F.rms_norm(ls.zeros(2, 3), (3,)).numpy() == 0).all()


def test_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="rms_norm"):
        F.rms_norm(x, (2,))
    with pytest.raises(ValueError, match="rms_norm: weight"):
        F.rms_norm(x, (3,), ls.zeros(4))
    with pytest.raises(TypeError, match="rms_norm"):
        F.rms_norm(x, (3,), ls.zeros(3, dtype=ls.float64))
    with pytest.raises(TypeError, match="rms_norm"):
        F.rms_norm(ls.tensor([[1, 2, 3]]), (3,))
    with pytest.raises(TypeError, match="rms_norm: normalized_shape"):
        F.rms_norm(x, "3")
