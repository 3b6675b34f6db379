"""CUDA sort against the CPU op (stable) on the same values: every dtype, ascending and
descending, ties in original order, NaN (the largest value), -0.0 and +0.0 (equal: kept in
order), rows of the block radix sort (256 < n <= 4096, 32-bit keys), rows that fit one
shared-memory tile and rows that need the global merge passes (8-byte and 16-byte sort items),
dims other than the last, 0-d, and the gradient."""
import numpy as np
import pytest

import llmscratch as ls
from cuda_data_ops import FLOATS, INTS, assert_same, backward_both, call, make, rng, tie_values

pytestmark = pytest.mark.cuda


def both_sort(a, dtype, dim=-1, descending=False):
    g = call("sort", [make(a, dtype, "cuda")], dim=dim, descending=descending)
    c = call("sort", [make(a, dtype, "cpu")], dim=dim, descending=descending)
    assert_same(g[0], c[0], "values")
    assert_same(g[1], c[1], "indices")


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("rows,n", [(1, 1), (3, 2), (7, 3), (5, 127), (4, 257), (4, 300), (2, 1023), (1, 2048),
                                    (2, 2049), (1, 4096), (3, 4097), (1, 10000), (2, 70001)])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_matches_cpu(rows, n, descending, dtype):
    both_sort(tie_values((rows, n), dtype), dtype, descending=descending)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.float16, ls.int32, ls.int64])
def test_sort_distinct_values_other_dims_and_0d(dtype):
    a = rng.standard_normal((6, 33, 5)) * 1000
    for dim in (0, 1, 2):
        for descending in (False, True):
            both_sort(a, dtype, dim=dim, descending=descending)
    both_sort(np.array(2.0), dtype, dim=0)
    b = rng.standard_normal((3, 3000)) * 1000  # the block radix sort's rows (256 < n <= 4096)
    both_sort(b, dtype)
    both_sort(b, dtype, descending=True)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16])
def test_sort_signed_zeros_and_nan_order(dtype):
    a = np.array([[0.0, -0.0, np.nan, 1.0, -0.0, -np.inf, np.nan, 0.0, np.inf, -1.0] * 300])
    for descending in (False, True):
        both_sort(a, dtype, descending=descending)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64])
@pytest.mark.parametrize("shape,dim", [((4, 50), 1), ((30, 3), 0), ((5000,), 0)])
def test_sort_backward(shape, dim, dtype):
    a = rng.standard_normal(shape)
    c = make(a, dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    backward_both(call("sort", [c], dim=dim, descending=False)[0],
                  call("sort", [g], dim=dim, descending=False)[0], dtype)
    assert_same(g.grad, c.grad, "grad")
