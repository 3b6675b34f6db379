"""gelu (erf and tanh forms) against torch, float64 and float32, gradients, extreme inputs."""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch


def torch_gelu_accurate(x, approximate):
    """gelu in torch ops without the cancellation of 1 + erf / 1 + tanh for x << 0, which costs
    torch's own float64 gelu up to ~1e-4 relative error on single elements out there."""
    if approximate == "tanh":
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))
    return 0.5 * x * torch.erfc(-x / math.sqrt(2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (127,), (2, 3, 129)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_matches_torch(shape, approximate, dtype):
    against_torch(lambda x: F.gelu(x, approximate=approximate),
                  lambda x: torch_gelu_accurate(x, approximate),
                  [randn(*shape, scale=3.0)], dtype)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_matches_torch_gelu_where_it_is_accurate(approximate):
    against_torch(lambda x: F.gelu(x, approximate=approximate),
                  lambda x: torch.nn.functional.gelu(x, approximate=approximate),
                  [np.clip(randn(40, 30), -3, 3)], np.float64)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_float32_tail_and_limits(approximate):
    # Relative accuracy where y is tiny (x << 0). The reference avoids the cancellation in
    # 1 + erf / 1 + tanh that even torch's float64 gelu suffers from there.
    x = np.linspace(-9, 9, 2001).astype(np.float32)
    y = F.gelu(ls.tensor(x), approximate=approximate).numpy().astype(np.float64)
    xd = x.astype(np.float64)
    if approximate == "none":
        ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xd])
    else:
        ref = xd / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    big = np.abs(ref) > 1e-30
    assert np.max(np.abs(y - ref)[big] / np.abs(ref)[big]) < 2e-5
    # At the infinities: -inf * Phi(-inf) = -inf * 0 is NaN in IEEE arithmetic, +inf stays +inf
    # (torch's CPU kernels disagree with each other across versions here, so IEEE is the reference).
    lim = F.gelu(ls.tensor([-np.inf, np.inf, 0.0]), approximate=approximate).numpy()
    assert np.isnan(lim[0]) and lim[1] == np.inf and lim[2] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="gelu: approximate"):
        F.gelu(ls.zeros(3), approximate="sigmoid")
    with pytest.raises(TypeError, match="gelu"):
        F.gelu(ls.tensor([1, 2]))
    assert tuple(F.gelu(ls.zeros(0, 3)).shape) == (0, 3)
