import pytest

from triton_check import CASES, check, rng

SHAPES = [(1,), (3, 7), (2, 5, 127), (1500,)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_silu(device, dtype, shape):
    r = rng()
    x, g = r.standard_normal(shape) * 3, r.standard_normal(shape)
    check("silu", [x], {}, device, dtype)
    check("silu_backward", [g, x], {}, device, dtype)
