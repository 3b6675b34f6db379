import numpy as np
import pytest

from triton_check import CASES, as64, compare, cpu_call, rng, rounded, to_ls, to_np, triton_call

SHAPES = [(1, 1), (3, 7), (2, 5, 127), (4, 1023)]


def _floor(rstd, w):
    """compare()'s floor for dx, on the scale of its terms (g w rstd): over one channel dx cancels
    to almost 0, and a row whose x is near 0 has a large rstd, so a fixed floor of 0.1 turned
    float32 rounding of those terms into a 'relative error' above the tolerance now and then."""
    scale = float(np.max(to_np(rstd))) * (float(np.max(np.abs(w))) if w is not None else 1.0)
    return 0.1 * max(1.0, scale)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_forward_backward(device, dtype, shape, weighted):
    r = rng()
    x = rounded(r.standard_normal(shape) + 0.3, dtype)
    w = rounded(r.standard_normal(shape[-1]), dtype) if weighted else None
    g = rounded(r.standard_normal(shape), dtype)
    xs, ws, gs = (to_ls(a, device, dtype) for a in (x, w, g))
    x64, w64, g64 = as64([x, w, g])

    fwd = triton_call("rms_norm", [xs, ws], {"eps": 1e-6})
    ref = cpu_call("rms_norm", [x64, w64], {"eps": 1e-6})
    compare("rms_norm", fwd, ref, dtype)
    attrs = {"dweight": weighted}
    bwd = triton_call("rms_norm_backward", [gs, xs, ws, fwd[1]], attrs)
    ref_bwd = cpu_call("rms_norm_backward", [g64, x64, w64, ref[1]], attrs)
    compare("rms_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, floor=_floor(ref[1], w))
    if not weighted:
        assert tuple(bwd[1].shape) == (0,)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_add_rms_norm_forward_backward(device, dtype, shape, weighted):
    # h = x + r then rms_norm(h) in one kernel; the backward adds dh into dx.
    r = rng()
    x = rounded(r.standard_normal(shape) + 0.3, dtype)
    res = rounded(r.standard_normal(shape), dtype)
    w = rounded(r.standard_normal(shape[-1]), dtype) if weighted else None
    dy, dh = (rounded(r.standard_normal(shape), dtype) for _ in range(2))
    xs, rs, ws, dys, dhs = (to_ls(a, device, dtype) for a in (x, res, w, dy, dh))
    x64, r64, w64, dy64, dh64 = as64([x, res, w, dy, dh])

    fwd = triton_call("add_rms_norm", [xs, rs, ws], {"eps": 1e-6})
    ref = cpu_call("add_rms_norm", [x64, r64, w64], {"eps": 1e-6})
    compare("add_rms_norm", fwd, ref, dtype)
    attrs = {"dweight": weighted}
    bwd = triton_call("add_rms_norm_backward", [dys, dhs, fwd[0], ws, fwd[2]], attrs)
    ref_bwd = cpu_call("add_rms_norm_backward", [dy64, dh64, ref[0], w64, ref[2]], attrs)
    compare("add_rms_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, floor=_floor(ref[2], w))
    if not weighted:
        assert tuple(bwd[1].shape) == (0,)
