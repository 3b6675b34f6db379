"""CUDA swiglu (cuda/swiglu.cu) against the CPU op and torch float64: forward, both gradients
and each alone, every float dtype, odd sizes."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn, torch
from cuda_vs_cpu import FLOATS, TOL, check, host, rounded

pytestmark = pytest.mark.cuda


def torch_swiglu(a, b):
    return torch.nn.functional.silu(a) * b


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1,), (3,), (127,), (1023,), (2, 7, 33), (3, 4099)])
def test_swiglu_matches_cpu_and_torch(shape, dtype):
    check(F.swiglu, [randn(*shape, scale=2.0), randn(*shape)], dtype, torch_swiglu)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("want", [(True, False), (False, True)])
def test_swiglu_backward_one_gradient(want, dtype):
    g, a, b = (rounded(randn(5, 131), dtype) for _ in range(3))
    attrs = {"da": want[0], "db": want[1]}
    got = _core.call("swiglu_backward", [ls.tensor(t).to(dtype=dtype).cuda() for t in (g, a, b)], attrs)
    ref = _core.call("swiglu_backward", [ls.tensor(t) for t in (g, a, b)], attrs)
    for k in range(2):
        assert tuple(got[k].shape) == tuple(ref[k].shape)
        if want[k]:
            np.testing.assert_allclose(host(got[k]), host(ref[k]), rtol=TOL[dtype] * 4, atol=1e-6)


def test_swiglu_rejects_mismatched_halves():
    with pytest.raises(ValueError, match="differ"):
        _core.call("swiglu", [ls.randn(3, 4, device="cuda"), ls.randn(4, 3, device="cuda")], {})
    with pytest.raises(TypeError, match="one dtype"):
        _core.call("swiglu", [ls.randn(3, device="cuda"), ls.randn(3, device="cuda").to(dtype=ls.bfloat16)], {})


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("H", [256, 33])
def test_halves_of_one_projection(dtype, H):
    # gate and up as the two halves of one (B, T, 2 H) tensor, as a LLaMA MLP splits its fused
    # projection: read in place (16-byte packs for H 256, one element a thread for H 33), the
    # values of the same halves made contiguous; the two gradients come back as the halves of
    # one buffer, and through autograd the projection's gradient has their values (that the
    # split's backward takes such halves whole, without a copy, is ops/test_concat.py's)
    B, T = 2, 9
    h = rounded(randn(B, T, 2 * H, scale=2.0), dtype)
    g = rounded(randn(B, T, H), dtype)
    hg = ls.tensor(h).to(dtype=dtype).cuda()
    gg = ls.tensor(g).to(dtype=dtype).cuda()
    a, b = hg[..., :H], hg[..., H:]
    flat = [ls.tensor(np.ascontiguousarray(x)).to(dtype=dtype).cuda() for x in (h[..., :H], h[..., H:])]
    assert np.array_equal(host(F.swiglu(a, b)), host(F.swiglu(*flat)))
    da, db = _core.call("swiglu_backward", [gg, a, b], {"da": True, "db": True})
    ref = _core.call("swiglu_backward", [gg, *flat], {"da": True, "db": True})
    for got, want in zip((da, db), ref):
        assert np.array_equal(host(got), host(want))
    assert da.stride() == db.stride() == (T * 2 * H, 2 * H, 1)
    assert db.data_ptr() - da.data_ptr() == H * dtype.itemsize
    leaf = hg.detach().requires_grad_()
    (F.swiglu(*F.split(leaf * 1.0, [H, H], dim=-1)) * gg).sum().backward()  # upstream exactly g
    assert np.array_equal(host(leaf.grad), np.concatenate([host(ref[0]), host(ref[1])], -1))
