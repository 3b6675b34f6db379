import pytest

from triton_check import CASES, check, rng

SHAPES = [(1,), (3, 7), (2, 5, 127), (1500,)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(device, dtype, shape, approximate):
    r = rng()
    x, g = r.standard_normal(shape) * 3, r.standard_normal(shape)
    attrs = {"approximate": approximate}
    check("gelu", [x], attrs, device, dtype)
    check("gelu_backward", [g, x], attrs, device, dtype)
