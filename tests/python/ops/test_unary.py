import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch
from op_check import check

OPS = ["exp", "tanh", "sigmoid", "abs", "relu", "sin", "cos", "neg"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (3, 127), (2, 3, 5)])
@pytest.mark.parametrize("op", OPS)
def test_unary(op, shape, dtype):
    check(getattr(ls.functional, op), getattr(torch, op), [shape], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", ["log", "sqrt", "rsqrt"])
def test_unary_positive_domain(op, dtype):
    check(getattr(ls.functional, op), getattr(torch, op), [(7, 9)], dtype, positive=True)


def test_unary_on_strided_input():
    a = randn(6, 8)
    t = ls.tensor(a)[::2, 1::3]
    np.testing.assert_allclose(to_np(t.exp()), np.exp(a[::2, 1::3]))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (None, 0.1), (-0.2, None)])
def test_clamp(lo, hi):
    check(lambda x: x.clamp(lo, hi), lambda x: x.clamp(lo, hi), [(9, 11)])


def test_where_and_masked_fill():
    cond = randn(4, 5) > 0
    c_ls, c_t = ls.tensor(cond), torch.tensor(cond)
    check(lambda a, b: ls.where(c_ls, a, b), lambda a, b: torch.where(c_t, a, b), [(4, 5), (5,)])
    check(lambda a: a.masked_fill(c_ls, -3.0), lambda a: a.masked_fill(c_t, -3.0), [(4, 5)])
    with pytest.raises(TypeError, match="where"):
        ls.where(ls.ones(2), ls.ones(2), ls.ones(2))
