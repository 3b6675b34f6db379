import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
from conftest import randn, to_np, torch
from op_check import check


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sa,sb", [((1, 1), (1, 1)), ((3, 5), (5, 7)), ((127, 33), (33, 65)),
                                   ((5,), (5, 3)), ((4, 5), (5,)), ((6,), (6,)),
                                   ((2, 3, 4, 5), (3, 5, 6)), ((2, 17, 9), (9, 13)), ((1, 4, 6), (5, 6, 2))])
def test_matmul(sa, sb, dtype):
    check(lambda a, b: a @ b, lambda a, b: a @ b, [sa, sb], dtype, tol=1e-5 if dtype == np.float32 else None)


@pytest.mark.parametrize("sa,sb", [((3, 0), (0, 4)), ((3, 4), (4, 0)), ((0, 4), (4, 5)),
                                   ((2, 3, 0), (0, 4)), ((2, 0, 4), (4, 5))])
def test_gradients_of_empty_products(sa, sb):
    """Products with an empty dim: zero gradients of the inputs' shapes (the weight gradient folds
    the rows, which a -1 in the reshape could not when K or N is 0)."""
    a = ls.tensor(randn(*sa), requires_grad=True)
    b = ls.tensor(randn(*sb), requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    assert not to_np(a.grad).any() and not to_np(b.grad).any()


def test_transposed_operands_are_not_copied_and_correct():
    a, b = randn(40, 30), randn(50, 40)
    out = ls.tensor(a).T @ ls.tensor(b).T
    np.testing.assert_allclose(to_np(out), a.T @ b.T, rtol=1e-12)


def test_large_float32_against_numpy():
    a, b = randn(300, 257, dtype=np.float32), randn(257, 199, dtype=np.float32)
    out = to_np(ls.tensor(a) @ ls.tensor(b))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6


def test_linear_matches_torch():
    check(lambda x, w, b: ls.functional.linear(x, w, b), torch.nn.functional.linear, [(2, 5, 7), (3, 7), (3,)])
    # a 1-d weight is one output feature, its dim dropped (torch's)
    check(lambda x, w: ls.functional.linear(x, w), torch.nn.functional.linear, [(2, 5, 7), (7,)])


def test_linear_bad_arguments_name_the_op():
    w = ls.tensor(randn(3, 4))
    with pytest.raises(TypeError, match="linear: input must be a Tensor, got list"):
        ls.functional.linear([1.0, 2.0], w)
    with pytest.raises(ValueError, match=r"linear: input must have at least 1 dim and weight 2 \(out, in\), or 1 without a bias"):
        ls.functional.linear(ls.tensor(1.0), w)
    with pytest.raises(ValueError, match="linear: input has 5 features"):
        ls.functional.linear(ls.tensor(randn(2, 5)), w)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sa,sb", [((3, 5), (5, 7)), ((2, 17, 9), (9, 13)), ((2, 3, 4, 5), (3, 5, 6)),
                                   ((1, 1), (1, 1))])
def test_matmul_with_bias(sa, sb, dtype):
    # the op's optional bias (N,), added to every row; its gradient is the row sum of g
    N = sb[-1]
    check(lambda a, b, c: _core.ops.matmul(a, b, c), lambda a, b, c: a @ b + c, [sa, sb, (N,)], dtype,
          tol=1e-5 if dtype == np.float32 else None)


def test_matmul_bias_errors_name_the_op():
    a, b = ls.tensor(randn(3, 5)), ls.tensor(randn(5, 7))
    with pytest.raises(ValueError, match=r"matmul: the bias must be \(N,\) = \(7,\)"):
        _core.ops.matmul(a, b, ls.tensor(randn(5)))
    with pytest.raises(TypeError, match="matmul: dtypes differ"):
        _core.ops.matmul(a, b, ls.tensor(randn(7)).to(dtype=ls.float32))
    with pytest.raises(ValueError, match="a bias needs operands of at least 2 dims"):
        _core.ops.matmul(ls.tensor(randn(5)), b, ls.tensor(randn(7)))


def test_linear_with_a_bias_of_another_dtype_or_shape_still_broadcasts():
    # only a (N,) bias in x's dtype goes into the matmul op; anything else is added after, with
    # the add's promotion and broadcasting (as torch.nn.functional.linear)
    x, w = randn(2, 3, 5), randn(4, 5)
    y = ls.functional.linear(ls.tensor(x), ls.tensor(w), ls.tensor(randn(4)).to(dtype=ls.float32))
    assert y.dtype == ls.float64
    b = randn(1, 4)
    y = ls.functional.linear(ls.tensor(x), ls.tensor(w), ls.tensor(b))
    np.testing.assert_allclose(to_np(y), x @ w.T + b, rtol=1e-12)


def test_the_registry_op_checks_its_bias():
    with pytest.raises(ValueError, match=r"matmul: the bias must be \(N,\) = \(7,\)"):
        _core.call("matmul", [ls.tensor(randn(3, 5)), ls.tensor(randn(5, 7)), ls.tensor(randn(6))], {})
