import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from triton_check import CASES, check, rng, rounded, to_ls, to_np, triton_call

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


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("H", [256, 33])
@pytest.mark.parametrize("want", [(True, True), (True, False)])
def test_swiglu_on_halves_of_one_projection(device, dtype, H, want):
    """gate and up as the two halves of one (B, T, 2 H) tensor, read in place by the row kernels:
    the values of the same halves made contiguous (under the interpreter too: the wrapper gives
    views of one allocation one torch storage)."""
    h = rounded(rng().standard_normal((2, 9, 2 * H)) * 2, dtype)
    g = rounded(rng().standard_normal((2, 9, H)), dtype)
    hs, gs = to_ls(h, device, dtype), to_ls(g, device, dtype)
    a, b = hs[..., :H], hs[..., H:]
    flat = [to_ls(np.ascontiguousarray(x), device, dtype) for x in (h[..., :H], h[..., H:])]
    (y,) = triton_call("swiglu", [a, b], {})
    (ref,) = triton_call("swiglu", flat, {})
    np.testing.assert_array_equal(to_np(y), to_np(ref))
    attrs = {"da": want[0], "db": want[1]}
    got = triton_call("swiglu_backward", [gs, a, b], attrs)
    ref = triton_call("swiglu_backward", [gs, *flat], attrs)
    for x, r in zip(got, ref):
        np.testing.assert_array_equal(to_np(x), to_np(r))
    if all(want):
        # both gradients as the same halves of one buffer, views of one llmscratch tensor, which
        # the split's backward takes whole: through autograd no cat runs
        da, db = got
        assert da.stride() == db.stride() == (9 * 2 * H, 2 * H, 1)
        assert db.data_ptr() - da.data_ptr() == H * da.dtype.itemsize
        leaf = hs.detach().requires_grad_()
        with ls.backend("triton"):
            ls.backend_report(reset=True)
            F.swiglu(*F.split(leaf, [H, H], dim=-1)).backward(gs)
            report = ls.backend_report()
        assert report["swiglu_backward"] == "triton" and "cat" not in report, report
        np.testing.assert_array_equal(to_np(leaf.grad), np.concatenate([to_np(r) for r in ref], -1))
