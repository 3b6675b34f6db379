"""dropout through the triton backend draws the same Philox mask as the CPU op, bit for bit."""
import numpy as np
import pytest

from triton_check import CASES, check, rng, rounded, to_ls, to_np, triton_call


@pytest.mark.parametrize("device,dtype", CASES)
# (2, 8197): full blocks, which run unmasked (4096 float32 or 8192 16-bit elements), and a tail.
@pytest.mark.parametrize("shape", [(1,), (3, 7), (5, 127), (2, 1031), (2, 8197)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_dropout_matches_cpu_mask(device, dtype, shape, p):
    r = rng()
    x = rounded(r.standard_normal(shape) + 3.0, dtype)  # never 0: a dropped element is visible
    attrs = {"p": p, "seed": int(r.integers(0, 2**62)), "offset": int(r.integers(0, 2**40))}
    (y,), (y64,) = check("dropout", [x], attrs, device, dtype)
    assert np.array_equal(to_np(y) == 0, np.asarray(y64) == 0)


@pytest.mark.parametrize("device,dtype", CASES)
def test_dropout_statistics_and_determinism(device, dtype):
    x = to_ls(np.ones(8192), device, dtype)
    attrs = {"p": 0.3, "seed": 1234, "offset": 17}
    a = to_np(triton_call("dropout", [x], attrs)[0])
    b = to_np(triton_call("dropout", [x], attrs)[0])
    assert np.array_equal(a, b)
    kept = (a != 0).mean()
    assert abs(kept - 0.7) < 0.03, kept  # about 6 standard deviations at n = 8192
    assert np.allclose(a[a != 0], 1 / 0.7, rtol=2e-3)
    c = to_np(triton_call("dropout", [x], dict(attrs, offset=attrs["offset"] + 2048))[0])
    assert not np.array_equal(a != 0, c != 0)
