"""silu against torch, float64 and float32, gradients, extreme inputs."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (127,), (2, 3, 129)])
def test_matches_torch(shape, dtype):
    against_torch(F.silu, torch.nn.functional.silu, [randn(*shape, scale=4.0)], dtype)


def test_extremes_match_torch():
    x = np.array([-np.inf, np.inf, -200.0, 200.0, -90.0, 0.0], np.float32)
    y = F.silu(ls.tensor(x)).numpy()
    ref = torch.nn.functional.silu(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-37)
    assert np.isnan(y[0]) == np.isnan(ref[0])


def test_bad_inputs():
    with pytest.raises(TypeError, match="silu"):
        F.silu(ls.tensor([1, 2]))
    with pytest.raises(TypeError, match="silu"):
        F.silu([1.0, 2.0])
    assert tuple(F.silu(ls.zeros(2, 0)).shape) == (2, 0)
