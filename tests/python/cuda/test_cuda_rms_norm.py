"""CUDA rms_norm (cuda/rms_norm.cu) against the CPU op and torch float64: every float dtype, odd
shapes, with and without weight, forward and the gradients of x and weight; the saved rstd;
bitwise-reproducible weight gradients; rows too long for the shared-memory accumulators."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, rel_err, torch
from rows_vs_cpu import DTYPES, SHAPES, check, host, rounded

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(4096, 64), (3, 70000)])
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
    check(lambda x, w: F.rms_norm(x.transpose(0, 1), C, w),
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
