"""CUDA silu (cuda/silu.cu) against the CPU op and torch float64: forward and gradient, every
float dtype, odd sizes, saturated inputs."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn, torch
from cuda_vs_cpu import FLOATS, TOL, check, host, rounded

pytestmark = pytest.mark.cuda

TINY = {ls.float32: 1e-30, ls.float64: 1e-30, ls.bfloat16: 1e-30, ls.float16: 1e-7}  # fp16 subnormal spacing


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1,), (3,), (127,), (1023,), (7, 33, 5), (3, 4099)])
def test_silu_matches_cpu_and_torch(shape, dtype):
    check(F.silu, [randn(*shape, scale=3.0)], dtype, torch.nn.functional.silu)


@pytest.mark.parametrize("dtype", FLOATS)
def test_silu_saturates_and_strided(dtype):
    x = rounded(np.concatenate([randn(60), [-100.0, -90.0, 90.0, 100.0, 0.0]]).reshape(5, 13), dtype)
    got = host(F.silu(ls.tensor(x).to(dtype=dtype).cuda().transpose(0, 1)))
    ref = host(F.silu(ls.tensor(x).transpose(0, 1)))
    assert np.all(np.isfinite(got))
    # the reference rounded to dtype: tiny tails underflow in float16 on both sides
    np.testing.assert_allclose(got, rounded(ref, dtype), rtol=TOL[dtype] * 4, atol=TINY[dtype])


def test_silu_served_by_cuda():
    _core.backend_report(True)
    x = ls.randn(9, device="cuda").requires_grad_()
    F.silu(x).sum().backward()
    report = _core.backend_report(True)
    assert report["silu"] == "cuda" and report["silu_backward"] == "cuda"
