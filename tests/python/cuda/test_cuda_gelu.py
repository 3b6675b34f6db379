"""CUDA gelu (cuda/gelu.cu) against the CPU op and torch float64: both forms, forward and
gradient, every float dtype, odd sizes and a strided input."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn, torch
from cuda_vs_cpu import FLOATS, TOL, check, host, rounded

pytestmark = pytest.mark.cuda

TINY = {ls.float32: 1e-30, ls.float64: 1e-30, ls.bfloat16: 1e-30, ls.float16: 1e-7}  # fp16 subnormal spacing

SHAPES = [(1,), (3,), (127,), (1023,), (7, 33, 5), (3, 4099)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_cpu_and_torch(approximate, shape, dtype):
    # |x| <= 4: past it a lone tiny output (gelu(-5.4) ~ -1e-8) rounds to a float16 subnormal or
    # carries erfc's tail rounding, and one element's relative error says nothing (a (1,) draw
    # failed so at 1.0 in float16, 2e-4 in float32). The tails are test_gelu_strided_input_and_tails'.
    x = np.clip(randn(*shape, scale=3.0), -4.0, 4.0)
    check(lambda t: F.gelu(t, approximate), [x], dtype, lambda t: torch_gelu(t, approximate))


def torch_gelu(t, approximate):
    """torch's gelu, except the tanh form in the identity 0.5 (1 + tanh u) = sigmoid(2u) that
    llmscratch computes: torch's 1 + tanh(u) cancels for x << 0 (relative error ~1e-9 in float64
    at x = -5), which a float64 comparison at 1e-12 would charge to the kernel under test."""
    if approximate == "none":
        return torch.nn.functional.gelu(t)
    u = 0.7978845608028654 * (t + 0.044715 * t ** 3)
    return t * torch.sigmoid(2 * u)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_strided_input_and_tails(approximate, dtype):
    # a transposed view (made contiguous inside) and large |x| where erfc / exp saturate
    x = rounded(np.concatenate([randn(4 * 37), [-30.0, -12.0, 12.0, 30.0]]).reshape(4, 38), dtype)
    gpu = ls.tensor(x).to(dtype=dtype).cuda().transpose(0, 1)
    cpu = ls.tensor(x).transpose(0, 1)
    ref = host(F.gelu(cpu, approximate))
    got = host(F.gelu(gpu, approximate))
    assert np.all(np.isfinite(got))
    # the reference rounded to dtype: tiny tails underflow in float16 on both sides
    np.testing.assert_allclose(got, rounded(ref, dtype), rtol=TOL[dtype] * 4, atol=TINY[dtype])
    g = rounded(randn(38, 4), dtype)
    attrs = {"approximate": approximate}
    dx = _core.call("gelu_backward", [ls.tensor(g).to(dtype=dtype).cuda(), gpu], attrs)[0]
    dx_ref = _core.call("gelu_backward", [ls.tensor(g), cpu], attrs)[0]
    np.testing.assert_allclose(host(dx), host(dx_ref), rtol=TOL[dtype] * 4, atol=1e-6)


def test_gelu_served_by_cuda_and_rejects_bad_input():
    _core.backend_report(True)
    F.gelu(ls.randn(5, device="cuda"))
    assert _core.backend_report(True)["gelu"] == "cuda"
    with pytest.raises(ValueError, match="approximate"):
        _core.call("gelu", [ls.randn(3, device="cuda")], {"approximate": "erf"})
    with pytest.raises(ValueError, match="does not match"):
        _core.call("gelu_backward", [ls.randn(3, device="cuda"), ls.randn(4, device="cuda")], {})
