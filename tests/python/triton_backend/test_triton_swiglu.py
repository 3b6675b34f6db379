import pytest

from triton_check import CASES, check, rng

# floor: an output near 0 (subnormal in float16 for inputs below about -10) is compared
# against 0.1 per element instead of its own size. (2, 8197): full blocks, which run unmasked
# (4096 float32 or 8192 16-bit elements), and a masked tail.
SHAPES = [(1,), (3, 7), (2, 5, 127), (1500,), (2, 8197)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("want", [(True, True), (True, False), (False, True)])
def test_swiglu(device, dtype, shape, want):
    r = rng()
    a, b, g = (r.standard_normal(shape) * 2 for _ in range(3))
    check("swiglu", [a, b], {}, device, dtype, floor=0.1)
    attrs = {"da": want[0], "db": want[1]}
    got, _ = check("swiglu_backward", [g, a, b], attrs, device, dtype,
                   outputs=[i for i in (0, 1) if want[i]], floor=0.1)
    for i in (0, 1):
        if not want[i]:
            assert tuple(got[i].shape) == (0,)
