"""CUDA rope (cuda/rope.cu) against the CPU op and torch float64: both pair layouts, forward and
the gradients of x, cos and sin (rope_cos_sin_backward), the inverse rotation, every float
dtype, odd shapes (no leading dims, odd T and NH, HS = 2), head sizes that take the packed path."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn, torch
from cuda_vs_cpu import FLOATS, TOL, check, host, ref_dtype, rounded

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1, 2), (3, 5, 6), (2, 7, 3, 64), (1, 17, 4, 128), (2, 3, 33, 2, 16), (4, 129, 12, 64)]


def torch_rope(x, cos, sin, interleaved):
    h = x.shape[-1] // 2
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :h], x[..., h:])
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, HS/2) against (..., T, NH, HS/2)
    oa, ob = a * c - b * s, a * s + b * c
    return torch.stack([oa, ob], -1).flatten(-2) if interleaved else torch.cat([oa, ob], -1)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_matches_cpu_and_torch(interleaved, shape, dtype):
    T, HS = shape[-3], shape[-1]
    x, cos, sin = randn(*shape), randn(T, HS // 2), randn(T, HS // 2)
    # cos/sin sums run over the leading dims and heads: allow for their length in 16 bits
    tol = TOL[dtype] * (2 if dtype in (ls.bfloat16, ls.float16) else 1)
    check(lambda a, c, s: F.rope(a, c, s, interleaved), [x, cos, sin], dtype,
          lambda a, c, s: torch_rope(a, c, s, interleaved), tol=tol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("interleaved", [False, True])
def test_inverse_undoes_the_rotation(interleaved, dtype):
    T, HS = 9, 64
    x = rounded(randn(2, T, 3, HS), dtype)
    cos, sin = F.rope_cache(T, HS, dtype=dtype, device="cuda")
    attrs = {"interleaved": interleaved}
    xt = ls.tensor(x).to(dtype=dtype).cuda()
    y = _core.call("rope", [xt, cos, sin], attrs)[0]
    back = _core.call("rope", [y, cos, sin], {**attrs, "inverse": True})[0]
    ref = _core.call("rope", [ls.tensor(x).to(dtype=ref_dtype(dtype)), cos.cpu().to(dtype=ref_dtype(dtype)),
                              sin.cpu().to(dtype=ref_dtype(dtype))], attrs)[0]
    assert np.abs(host(y) - host(ref)).max() <= 4 * TOL[dtype] * np.abs(x).max()
    assert np.abs(host(back) - x).max() <= 8 * TOL[dtype] * np.abs(x).max()


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_cos_sin_backward_direct(inverse, interleaved):
    g, x = randn(3, 11, 5, 6), randn(3, 11, 5, 6)
    attrs = {"interleaved": interleaved, "inverse": inverse}
    got = _core.call("rope_cos_sin_backward", [ls.tensor(g).cuda(), ls.tensor(x).cuda()], attrs)
    ref = _core.call("rope_cos_sin_backward", [ls.tensor(g), ls.tensor(x)], attrs)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(host(a), host(b), rtol=1e-12, atol=1e-12)


def test_strided_x_and_bad_shapes():
    x = randn(2, 6, 4, 8)
    cos, sin = randn(6, 4), randn(6, 4)
    view = lambda t: t.transpose(0, 1).transpose(0, 1)[:, :, 1:]  # (2, 6, 3, 8), not contiguous
    gpu = F.rope(view(ls.tensor(x).cuda()), ls.tensor(cos).cuda(), ls.tensor(sin).cuda())
    cpu = F.rope(view(ls.tensor(x)), ls.tensor(cos), ls.tensor(sin))
    np.testing.assert_allclose(host(gpu), host(cpu), rtol=1e-13)
    with pytest.raises(ValueError, match="HS/2"):
        F.rope(ls.tensor(x).cuda(), ls.tensor(cos[:5]).cuda(), ls.tensor(sin[:5]).cuda())
    with pytest.raises(TypeError, match="dtype"):
        F.rope(ls.tensor(x).cuda(), ls.tensor(cos).cuda().to(dtype=ls.float32), ls.tensor(sin).cuda())


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("HS", [64, 6])
@pytest.mark.parametrize("interleaved", [False, True])
def test_fused_qkv_slices_read_in_place(dtype, HS, interleaved):
    # q and k as head slices of one (B, T, NH + 2 NKV, HS) projection (a LLaMA-style block's),
    # read at its row stride (packed for HS 64, one pair a thread for HS 6): the values of the
    # same slices made contiguous, bit for bit; out contiguous
    B, T, NH, NKV = 2, 9, 4, 2
    fused = rounded(randn(B, T, NH + 2 * NKV, HS), dtype)
    cos, sin = (ls.tensor(a).to(dtype=dtype).cuda() for a in (randn(T, HS // 2), randn(T, HS // 2)))
    g = ls.tensor(fused).to(dtype=dtype).cuda()
    for lo, n in ((0, NH), (NH, NKV)):
        got = F.rope(g[:, :, lo:lo + n], cos, sin, interleaved=interleaved)
        ref = F.rope(ls.tensor(np.ascontiguousarray(fused[:, :, lo:lo + n])).to(dtype=dtype).cuda(), cos, sin,
                     interleaved=interleaved)
        assert got.is_contiguous()
        assert np.array_equal(host(got), host(ref))
