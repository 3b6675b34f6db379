"""CUDA rms_norm (cuda/rms_norm.cu) against the CPU op and torch float64: every float dtype, odd
shapes, with and without weight, forward and the gradients of x and weight; the saved rstd;
bitwise-reproducible weight gradients; rows too long for the shared-memory accumulators.
add_rms_norm (the residual add fused with the norm) the same way, through both outputs h and y,
including a residual whose rows are not 16-byte aligned (the scalar path of the kernels)."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, rel_err, torch
from rows_vs_cpu import DTYPES, REG_ROWS, SHAPES, TOL, check, host, rounded

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + REG_ROWS + [(3, 70000)])
@pytest.mark.parametrize("weight", [True, False])
def test_forward_and_gradients(weight, shape, dtype):
    C = shape[-1]
    if C == 1:
        pytest.skip("C = 1: y = w sign(x), so the exact x gradient is 0 and a relative error of "
                    "rounding noise is meaningless")
    arrays = [randn(*shape, scale=2.0), randn(C) if weight else None]
    check(lambda x, w: F.rms_norm(x, C, w, eps=1e-6),
          lambda x, w: torch.nn.functional.rms_norm(x, (C,), w, eps=1e-6), arrays, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_input(dtype):
    C = 96
    check(lambda x, w: F.rms_norm(x.transpose(0, 1), C, w, eps=1e-6),
          lambda x, w: torch.nn.functional.rms_norm(x.transpose(0, 1), (C,), w, eps=1e-6),
          [randn(C, 37), randn(C)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_saved_rstd(dtype):
    x = rounded(randn(5, 300), dtype)
    y, rstd = core.call("rms_norm", [ls.tensor(x).to(dtype=dtype).cuda(), None], {"eps": 1e-6})
    assert rstd.dtype == (ls.float64 if dtype == ls.float64 else ls.float32)
    tol = 1e-12 if dtype == ls.float64 else 1e-6
    assert rel_err(host(rstd), 1 / np.sqrt((x * x).mean(-1) + 1e-6)) < tol


@pytest.mark.parametrize("dtype", [ls.float32, ls.float16])
def test_weight_gradient_is_reproducible(dtype):
    x, w = (ls.tensor(a).to(dtype=dtype).cuda() for a in (randn(3000, 257), randn(257)))
    g = ls.tensor(randn(3000, 257)).to(dtype=dtype).cuda()
    _, rstd = core.call("rms_norm", [x, w], {"eps": 1e-6})
    runs = [core.call("rms_norm_backward", [g, x, w, rstd], {"dweight": True}) for _ in range(3)]
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert np.array_equal(host(a), host(b))


# ---- add_rms_norm ----

def _torch_add_rms_norm(x, r, w):
    h = x + r
    return torch.stack([h, torch.nn.functional.rms_norm(h, (h.shape[-1],), w, eps=1e-6)])


def _add_rms_norm(x, r, w):
    return F.stack(list(F.add_rms_norm(x, r, w, eps=1e-6)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + REG_ROWS + [(3, 70000)])
@pytest.mark.parametrize("weight", [True, False])
def test_add_rms_norm_forward_and_gradients(weight, shape, dtype):
    # The loss uses h and y, so dx = dh + the norm's gradient, every term non-zero (with C = 1
    # too: dh keeps the x gradient away from 0). r takes x's signs, so h = x + r never cancels:
    # at C = 1 a cancelled h near sqrt(eps) made the norm's gradient large and h's float32
    # rounding showed in it (one draw in the whole suite at 6a7ee5e: 3.8e-5 against the CPU op
    # and torch alike).
    C = shape[-1]
    x = randn(*shape, scale=2.0)
    check(_add_rms_norm, _torch_add_rms_norm,
          [x, np.copysign(randn(*shape), x), randn(C) if weight else None], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_only_y_used(dtype):
    # dh arrives as zeros (filled by autograd): dx is the norm's gradient alone.
    C = 200
    check(lambda x, r, w: F.add_rms_norm(x, r, w, eps=1e-6)[1],
          lambda x, r, w: torch.nn.functional.rms_norm(x + r, (C,), w, eps=1e-6),
          [randn(9, C), randn(9, C), randn(C)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_misaligned_and_non_contiguous(dtype):
    R, C = 37, 96
    check(lambda x, r, w: _add_rms_norm(x.transpose(0, 1), r[1:].view(R, C), w),
          lambda x, r, w: _torch_add_rms_norm(x.transpose(0, 1), r[1:].view(R, C), w),
          [randn(C, R), randn(R * C + 1), randn(C)], dtype)


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_add_rms_norm_statistics_and_backward_op(dtype):
    dev = lambda a: ls.tensor(a).to(dtype=dtype).cuda()
    xa, ra = rounded(randn(3000, 257), dtype), rounded(randn(3000, 257), dtype)
    x, r, w = dev(xa), dev(ra), dev(randn(257))
    dy, dh = dev(randn(3000, 257)), dev(randn(3000, 257))
    h, _, rstd = core.call("add_rms_norm", [x, r, w], {"eps": 1e-6})
    hh = rounded(xa + ra, dtype)  # h is rounded to the input dtype, as a separate add would
    assert rel_err(host(h), hh) < 1e-6
    assert rstd.dtype == ls.float32
    assert rel_err(host(rstd), 1 / np.sqrt((hh ** 2).mean(-1) + 1e-6)) < 1e-6
    runs = [core.call("add_rms_norm_backward", [dy, dh, h, w, rstd], {"dweight": True}) for _ in range(3)]
    for run_ in runs[1:]:
        for a, b in zip(run_, runs[0]):
            assert np.array_equal(host(a), host(b))
    ref = core.call("rms_norm_backward", [dy, h, w, rstd], {"dweight": True})
    assert rel_err(host(runs[0][0]), host(ref[0]) + host(dh)) < TOL[dtype]
    assert rel_err(host(runs[0][1]), host(ref[1])) < TOL[dtype]
