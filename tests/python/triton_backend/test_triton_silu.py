import pytest

from triton_check import CASES, check, rng

# floor: an output near 0 (subnormal in float16 for inputs below about -10) is compared
# against 0.1 per element instead of its own size.
SHAPES = [(1,), (3, 7), (2, 5, 127), (1500,)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_silu(device, dtype, shape):
    r = rng()
    x, g = r.standard_normal(shape) * 3, r.standard_normal(shape)
    check("silu", [x], {}, device, dtype, floor=0.1)
    check("silu_backward", [g, x], {}, device, dtype, floor=0.1)
