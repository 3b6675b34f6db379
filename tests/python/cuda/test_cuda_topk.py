"""CUDA topk against the CPU op on the same values: every dtype, k <= 8 (warp and block
kernels), 8 < k <= 4096 (radix select: key digits, then position digits for tied keys) and
larger k (the row sort), largest and smallest, ties (lower index first), NaN (the largest
value), signed zeros, rows from 1 to beyond one sort tile, dims other than the last, the
gradient, and k out of range."""
import numpy as np
import pytest

import llmscratch as ls
from cuda_data_ops import FLOATS, INTS, assert_same, backward_both, call, make, normal_values, rng, tie_values

pytestmark = pytest.mark.cuda


def both_topk(a, dtype, k, dim=-1, largest=True):
    g = call("topk", [make(a, dtype, "cuda")], k=k, dim=dim, largest=largest)
    c = call("topk", [make(a, dtype, "cpu")], k=k, dim=dim, largest=largest)
    assert_same(g[0], c[0], "values")
    assert_same(g[1], c[1], "indices")


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("rows,n,k", [(1, 1, 1), (5, 7, 2), (300, 64, 8), (3, 1000, 1), (4, 2049, 3),
                                      (2, 5000, 8), (6, 100, 9), (3, 3000, 50), (2, 9000, 20)])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_cpu(rows, n, k, largest, dtype):
    both_topk(tie_values((rows, n), dtype), dtype, min(k, n), largest=largest)


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("rows,n,k", [(3, 20, 12), (7, 300, 256), (2, 50257, 50), (2, 5000, 2048),
                                      (1, 9000, 4096), (2, 6000, 4097)])
@pytest.mark.parametrize("values", ["ties", "normal"])
def test_topk_large_k_matches_cpu(rows, n, k, values, dtype):
    a = tie_values((rows, n), dtype) if values == "ties" else normal_values((rows, n), dtype)
    if values == "normal" and dtype.is_floating_point:
        a[:, ::7] = 0.0
        a[:, 3::7] = -0.0  # equal to +0.0: ordered by position
    for largest in (True, False):
        both_topk(a, dtype, k, largest=largest)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16, ls.int64])
def test_topk_distinct_values_other_dims(dtype):
    a = rng.standard_normal((4, 37, 3)) * 100
    for dim, k in ((1, 5), (0, 2), (1, 20)):
        both_topk(a, dtype, k, dim=dim)
        both_topk(a, dtype, k, dim=dim, largest=False)
    both_topk(np.array(1.5), dtype, 1, dim=0)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64])
@pytest.mark.parametrize("k", [2, 12])
def test_topk_backward(k, dtype):
    a = rng.standard_normal((5, 40))
    c = make(a, dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    backward_both(call("topk", [c], k=k, dim=1, largest=True)[0],
                  call("topk", [g], k=k, dim=1, largest=True)[0], dtype)
    assert_same(g.grad, c.grad, "grad")


def test_topk_k_out_of_range_and_zero():
    x = ls.zeros(3, 4, device="cuda")
    with pytest.raises(IndexError, match="topk: k = 5 is out of range for dimension 1 of size 4"):
        call("topk", [x], k=5, dim=1, largest=True)
    v, i = call("topk", [x], k=0, dim=1, largest=True)
    assert tuple(v.shape) == (3, 0) and tuple(i.shape) == (3, 0)
