import numpy as np
import pytest

from triton_check import CASES, check, rng

# x (..., T, NH, HS): no leading dim, one, two; odd T and NH; HS = 2 and a non-power of two.
SHAPES = [(3, 1, 2), (2, 5, 3, 6), (2, 1, 7, 2, 16), (3, 37, 5, 128)]  # the last: several forward programs


def _cos_sin(T, half):
    theta = 10000.0 ** (-np.arange(half) / max(half, 1))
    ang = np.arange(T)[:, None] * theta[None, :]
    return np.cos(ang), np.sin(ang)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("interleaved,inverse", [(False, False), (True, True)])
def test_rope(device, dtype, shape, interleaved, inverse):
    r = rng()
    x, g = r.standard_normal(shape), r.standard_normal(shape)
    cos, sin = _cos_sin(shape[-3], shape[-1] // 2)
    attrs = {"interleaved": interleaved, "inverse": inverse}
    check("rope", [x, cos, sin], attrs, device, dtype)
    check("rope_cos_sin_backward", [g, x], attrs, device, dtype, tol_scale=2)
