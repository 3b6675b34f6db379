import pytest

import llmscratch as ls
import llmscratch.functional as F
from triton_check import CASES, as64, compare, cpu_call, rng, rounded, to_ls, triton_call

SHAPES = [(1, 1), (3, 7), (2, 5, 127), (4, 1023)]


def dx_floor(C):
    """The floor of the input gradient's relative error. Over one channel the exact dx is 0 and
    what a kernel returns is the rounding of g w (an FMA may keep it unrounded on one side of
    dxhat - mean(dxhat)) times rstd = 1 / sqrt(eps), about 316: the floor scales with it."""
    return 0.1 / 1e-5 ** 0.5 if C == 1 else 0.1


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_forward_backward(device, dtype, shape, affine):
    r = rng()
    C = shape[-1]
    x = rounded(r.standard_normal(shape) * 2 + 0.5, dtype)
    w = rounded(r.standard_normal(C), dtype) if affine else None
    b = rounded(r.standard_normal(C), dtype) if affine else None
    g = rounded(r.standard_normal(shape), dtype)
    xs, ws, bs, gs = (to_ls(a, device, dtype) for a in (x, w, b, g))
    x64, w64, b64, g64 = as64([x, w, b, g])

    fwd = triton_call("layer_norm", [xs, ws, bs], {"eps": 1e-5})
    ref = cpu_call("layer_norm", [x64, w64, b64], {"eps": 1e-5})
    compare("layer_norm", fwd, ref, dtype)
    attrs = {"dweight": affine, "dbias": affine}
    bwd = triton_call("layer_norm_backward", [gs, xs, ws, fwd[1], fwd[2]], attrs)
    ref_bwd = cpu_call("layer_norm_backward", [g64, x64, w64, ref[1], ref[2]], attrs)
    compare("layer_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, outputs=[0], floor=dx_floor(C))
    compare("layer_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, outputs=[1, 2], floor=0.1)
    if not affine:
        assert tuple(bwd[1].shape) == (0,) and tuple(bwd[2].shape) == (0,)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_add_layer_norm_forward_backward(device, dtype, shape, affine):
    # h = x + r then layer_norm(h) in one kernel; the backward adds dh into dx.
    r = rng()
    C = shape[-1]
    x = rounded(r.standard_normal(shape) * 2 + 0.5, dtype)
    res = rounded(r.standard_normal(shape), dtype)
    w = rounded(r.standard_normal(C), dtype) if affine else None
    b = rounded(r.standard_normal(C), dtype) if affine else None
    dy, dh = (rounded(r.standard_normal(shape), dtype) for _ in range(2))
    xs, rs, ws, bs, dys, dhs = (to_ls(a, device, dtype) for a in (x, res, w, b, dy, dh))
    # The op rounds h = x + r to dtype before normalising it, so the reference normalises that
    # rounded h (h64 + 0): from the exact sum, the mean of a short row near zero (C = 7) differs
    # by more than dtype's tolerance in relative terms.
    h64, zero64, w64, b64, dy64, dh64 = as64([rounded(x + res, dtype), 0 * res, w, b, dy, dh])

    fwd = triton_call("add_layer_norm", [xs, rs, ws, bs], {"eps": 1e-5})
    ref = cpu_call("add_layer_norm", [h64, zero64, w64, b64], {"eps": 1e-5})
    compare("add_layer_norm", fwd, ref, dtype)
    attrs = {"dweight": affine, "dbias": affine}
    bwd = triton_call("add_layer_norm_backward", [dys, dhs, fwd[0], ws, fwd[2], fwd[3]], attrs)
    ref_bwd = cpu_call("add_layer_norm_backward", [dy64, dh64, ref[0], w64, ref[2], ref[3]], attrs)
    # dx = dh + the norm's dx, whose rounding noise at C = 1 dx_floor describes
    compare("add_layer_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, outputs=[0], floor=dx_floor(C))
    compare("add_layer_norm_backward", bwd, ref_bwd, dtype, tol_scale=4, outputs=[1, 2], floor=0.1)
    if not affine:
        assert tuple(bwd[1].shape) == (0,) and tuple(bwd[2].shape) == (0,)


@pytest.mark.parametrize("device,dtype", CASES)
def test_weight_and_bias_gradients_become_grads_without_a_copy(device, dtype):
    """The backward returns dw and db as two rows of one buffer. Handed back one by one (not as
    views of one tensor, see ONE_BUFFER_OUTPUTS in triton_kernels/__init__.py), each is a leaf's
    .grad as it is: no "contiguous" copy runs in the backward."""
    r = rng()
    xs = to_ls(rounded(r.standard_normal((3, 40)), dtype), device, dtype)
    w, b = (to_ls(rounded(r.standard_normal(40), dtype), device, dtype).requires_grad_() for _ in range(2))
    gs = to_ls(rounded(r.standard_normal((3, 40)), dtype), device, dtype)
    with ls.backend("triton"):
        y = F.layer_norm(xs, (40,), w, b)
        ls.backend_report(reset=True)
        y.backward(gs)
        served = ls.backend_report()
    assert served["layer_norm_backward"] == "triton" and "contiguous" not in served, served
    assert w.grad is not None and b.grad is not None
