import numpy as np
import pytest

from triton_check import CASES, check, rng, rounded, to_ls, to_np, triton_call

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


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("HS", [64, 6])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_on_fused_qkv_slices(device, dtype, HS, interleaved):
    """q and k as head slices of one (B, T, NH + 2 NKV, HS) projection, read in place at its row
    stride: the values of the same slices made contiguous; out contiguous."""
    B, T, NH, NKV = 2, 9, 4, 2
    fused = rounded(rng().standard_normal((B, T, NH + 2 * NKV, HS)), dtype)
    cos, sin = (to_ls(a, device, dtype) for a in _cos_sin(T, HS // 2))
    xs = to_ls(fused, device, dtype)
    attrs = {"interleaved": interleaved, "inverse": False}
    for lo, n in ((0, NH), (NH, NKV)):
        (got,) = triton_call("rope", [xs[:, :, lo:lo + n], cos, sin], attrs)
        (ref,) = triton_call("rope", [to_ls(fused[:, :, lo:lo + n], device, dtype), cos, sin], attrs)
        assert got.is_contiguous()
        np.testing.assert_array_equal(to_np(got), to_np(ref))
