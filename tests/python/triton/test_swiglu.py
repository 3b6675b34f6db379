import pytest

from triton_check import CASES, check, rng

SHAPES = [(1,), (3, 7), (2, 5, 127), (1500,)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("want", [(True, True), (True, False), (False, True)])
def test_swiglu(device, dtype, shape, want):
    r = rng()
    a, b, g = (r.standard_normal(shape) * 2 for _ in range(3))
    check("swiglu", [a, b], {}, device, dtype)
    attrs = {"da": want[0], "db": want[1]}
    got, _ = check("swiglu_backward", [g, a, b], attrs, device, dtype,
                   outputs=[i for i in (0, 1) if want[i]])
    for i in (0, 1):
        if not want[i]:
            assert tuple(got[i].shape) == (0,)
