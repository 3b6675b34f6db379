"""CUDA dropout (cuda/dropout.cu): the same Philox mask as the CPU op for the same seed and
offset, bit for bit (float32/float64 values too; 16-bit values equal the CPU float32 result
rounded), odd sizes and offsets, the backward through autograd, and the generator state."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn
from cuda_vs_cpu import FLOATS, host, ref_dtype, rounded

pytestmark = pytest.mark.cuda


def both(x, dtype, p, seed, offset):
    """dropout of the dtype-rounded x on the GPU (dtype) and on the CPU (reference dtype)."""
    x = rounded(x, dtype)
    attrs = {"p": p, "seed": seed, "offset": offset}
    gpu = _core.call("dropout", [ls.tensor(x).to(dtype=dtype).cuda()], attrs)[0]
    cpu = _core.call("dropout", [ls.tensor(x).to(dtype=ref_dtype(dtype))], attrs)[0]
    return host(gpu), host(cpu)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 127, 1023, 4096 + 7, 300_001])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_and_values_match_cpu_bitwise(n, p, dtype):
    x = randn(n) + 5.0  # no zeros: a zero output marks a dropped element
    seed, offset = 0x1234_5678_9ABC, 17
    gpu, cpu = both(x, dtype, p, seed, offset)
    np.testing.assert_array_equal(gpu != 0, cpu != 0)
    np.testing.assert_array_equal(gpu, rounded(cpu, dtype))
    if n > 1000:  # the mask is a fair coin at rate p
        assert abs((gpu == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("seed,offset", [(0, 0), (-1, 1), (-(1 << 63), (1 << 40) + 3), (12345, 999_999_999)])
def test_extreme_seeds_and_offsets(seed, offset):
    gpu, cpu = both(randn(4, 1001) + 5.0, ls.float32, 0.3, seed, offset)
    np.testing.assert_array_equal(gpu, cpu)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_p_zero_and_one(p):
    gpu, cpu = both(randn(77) + 5.0, ls.float32, p, 7, 0)
    np.testing.assert_array_equal(gpu, cpu)
    assert (gpu == 0).all() if p == 1.0 else (gpu != 0).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_functional_dropout_and_backward_match_cpu(dtype):
    x = rounded(randn(6, 129) + 5.0, dtype)
    w = rounded(randn(6, 129), dtype)
    results = []
    for device, dt in (("cuda", dtype), ("cpu", ref_dtype(dtype))):
        ls.manual_seed(2024)
        t = ls.tensor(x).to(dtype=dt).to(device=device).requires_grad_()
        y = F.dropout(t, 0.25)
        (y * ls.tensor(w).to(dtype=dt).to(device=device)).sum().backward()
        results.append((host(y), host(t.grad), ls.get_rng_state()))
    (yg, gg, sg), (yc, gc, sc) = results
    assert sg == sc  # both reserved the same counters
    np.testing.assert_array_equal(yg, rounded(yc, dtype))
    np.testing.assert_array_equal(gg != 0, yg != 0)  # the gradient uses the forward's mask
    np.testing.assert_array_equal(gg, rounded(gc, dtype))


def test_strided_input():
    x = randn(9, 31) + 5.0
    attrs = {"p": 0.4, "seed": 99, "offset": 5}
    gpu = _core.call("dropout", [ls.tensor(x).cuda().transpose(0, 1)], attrs)[0]
    cpu = _core.call("dropout", [ls.tensor(x).transpose(0, 1)], attrs)[0]
    np.testing.assert_array_equal(host(gpu), host(cpu))
