import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch
from op_check import check


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,dim", [((7,), None), ((3, 127), 1), ((3, 127), 0), ((2, 3, 5), (0, 2)),
                                       ((4, 5, 6), -1), ((1, 9), None)])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_sum_mean(op, shape, dim, keepdim, dtype):
    if dim is None and keepdim:
        pytest.skip("torch has no keepdim without dim")
    tdim = dim if dim is not None else tuple(range(len(shape)))
    check(lambda x: getattr(x, op)(dim, keepdim), lambda x: getattr(x, op)(tdim, keepdim), [shape], dtype)


@pytest.mark.parametrize("correction", [0, 1])
def test_var(correction):
    check(lambda x: x.var(1, correction, True), lambda x: x.var(1, correction=correction, keepdim=True), [(5, 33)])
    check(lambda x: x.var(None, correction), lambda x: x.var(correction=correction), [(4, 6)])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_argmax(dim):
    a = randn(6, 9)
    check(lambda x: x.max(dim)[0], lambda x: x.max(dim)[0], [(6, 9)])
    np.testing.assert_array_equal(to_np(ls.tensor(a).argmax(dim)), a.argmax(dim))
    assert ls.tensor(a).max().item() == a.max()
    np.testing.assert_array_equal(to_np(ls.tensor(a).min(dim)[0]), a.min(dim))


def test_max_first_index_on_ties():
    t = ls.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    assert t.argmax(1).tolist() == [1, 0]


def test_integer_sum_is_int64():
    assert ls.tensor([[1, 2], [3, 4]], dtype=ls.int32).sum(0).tolist() == [4, 6]
    assert ls.tensor([True, True, False]).sum().item() == 2
