import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch
from op_check import check

SHAPES = [((3, 5), (3, 5)), ((127, 1), (1, 33)), ((2, 1, 7), (7,)), ((1,), (4, 3, 1)), ((), (5,))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_forward_and_grads(op, shapes, dtype):
    check(getattr(ls.functional, op), getattr(torch, op), shapes, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pow(dtype):
    check(lambda a, b: a ** b, lambda a, b: a ** b, [(4, 7), (7,)], dtype, positive=True)


@pytest.mark.parametrize("how", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons(how):
    a = np.round(randn(5, 6))
    b = np.round(randn(6))
    out = getattr(ls.tensor(a), f"__{how}__")(ls.tensor(b))
    assert out.dtype == ls.bool
    np.testing.assert_array_equal(to_np(out), getattr(np, {"eq": "equal", "ne": "not_equal", "lt": "less",
                                                            "le": "less_equal", "gt": "greater",
                                                            "ge": "greater_equal"}[how])(a, b))


def test_integer_arithmetic_and_promotion():
    a = ls.tensor([1, 2, 3])
    assert (a + a).tolist() == [2, 4, 6] and (a + a).dtype == ls.int64
    assert (a * 2).dtype == ls.int64
    assert (a + ls.tensor([0.5, 0.5, 0.5], dtype=ls.float64)).dtype == ls.float64
    assert (ls.tensor([1], dtype=ls.int32) + ls.tensor([1])).dtype == ls.int64
