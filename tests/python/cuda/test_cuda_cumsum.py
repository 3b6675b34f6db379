"""CUDA cumsum against the CPU op on the same values: every dtype (integers and bool give int64),
each dim, reverse, odd shapes across the warp and block kernels and many tiles, strided input,
0-d, and the gradient (the reverse cumsum). Both sides accumulate floats in float64 in different
orders, so floats match to the last bit of the output dtype; integers exactly."""
import numpy as np
import pytest

import llmscratch as ls
from cuda_data_ops import FLOATS, INTS, assert_same, backward_both, call, host, make, normal_values, rng

pytestmark = pytest.mark.cuda

TOL = {ls.float32: 1e-6, ls.float64: 5e-11, ls.bfloat16: 8e-3, ls.float16: 1e-3}
# float64: a block scan adds in another order than the CPU loop (rows of 50k elements)


def check(g, c, dtype):
    assert g.dtype == c.dtype and tuple(g.shape) == tuple(c.shape)
    if dtype.is_floating_point:
        gh, ch = host(g), host(c)
        assert not np.isnan(gh).any()
        scale = np.maximum(np.abs(ch), 1.0)  # running sums can cancel: bound by magnitude
        assert np.max(np.abs(gh - ch) / scale) <= TOL[dtype]
    else:
        assert_same(g, c, "cumsum")


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("shape,dim", [((1,), 0), ((127,), 0), ((129,), 0), ((3, 1023), 1), ((3, 1023), 0),
                                       ((5, 4097), -1), ((2, 3, 5), 1), ((300, 7), 1),
                                       ((2, 50001), 1), ((100003,), 0)])  # the last two: rows cut into pieces
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_matches_cpu(shape, dim, reverse, dtype):
    a = normal_values(shape, dtype)
    g = call("cumsum", [make(a, dtype, "cuda")], dim=dim, reverse=reverse)[0]
    c = call("cumsum", [make(a, dtype, "cpu")], dim=dim, reverse=reverse)[0]
    check(g, c, dtype)


def test_cumsum_strided_0d_and_functional():
    a = rng.standard_normal((40, 9))
    g = make(a, ls.float32, "cuda").transpose(0, 1)[::2]
    c = make(a, ls.float32, "cpu").transpose(0, 1)[::2]
    for d in (0, 1):
        check(call("cumsum", [g], dim=d)[0], call("cumsum", [c], dim=d)[0], ls.float32)
    z = call("cumsum", [make(np.array(3.0), ls.float64, "cuda")], dim=0)[0]
    assert tuple(z.shape) == () and host(z) == 3.0
    i = make(np.arange(10), ls.int32, "cuda").cumsum(0)
    assert i.dtype == ls.int64 and host(i).tolist() == np.cumsum(np.arange(10)).tolist()


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64])
@pytest.mark.parametrize("shape,dim", [((6, 300), 1), ((6, 300), 0), ((50,), 0)])
def test_cumsum_backward(shape, dim, dtype):
    a = rng.standard_normal(shape)
    c = make(a, dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    backward_both(call("cumsum", [c], dim=dim)[0], call("cumsum", [g], dim=dim)[0], dtype)
    check(g.grad, c.grad, dtype)
