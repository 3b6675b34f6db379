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


def test_sign_stays_in_the_graph_with_a_zero_gradient_like_torch():
    x = ls.tensor([-2.0, 0.0, 3.0, float("inf")], requires_grad=True)
    y = x.sign()
    assert y.requires_grad
    (y * ls.tensor([1.0, float("nan"), 2.0, 3.0])).sum().backward()  # zeros, whatever the gradient
    assert to_np(x.grad).tolist() == [0.0, 0.0, 0.0, 0.0]


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


def test_where_with_scalars_takes_torchs_dtypes():
    cond = [True, False]
    c_ls, c_t = ls.tensor(cond), torch.tensor(cond)
    t64 = ([1.5, 2.5], ls.float64, torch.float64)
    i64 = ([1, 2], ls.int64, torch.int64)
    for a, b in ((1.0, 0.0), (1, 0), (1, 0.5), (True, 0), (2.5, 7), (t64, 0.5), (i64, 0.5), (0.5, i64), (3, t64)):
        args_ls = [ls.tensor(v[0], dtype=v[1]) if isinstance(v, tuple) else v for v in (a, b)]
        args_t = [torch.tensor(v[0], dtype=v[2]) if isinstance(v, tuple) else v for v in (a, b)]
        ours, ref = ls.where(c_ls, *args_ls), torch.where(c_t, *args_t)
        assert str(ours.dtype).split(".")[-1] == str(ref.dtype).split(".")[-1], (a, b)
        assert ours.tolist() == ref.tolist(), (a, b)


def test_relu_propagates_nan_like_torch():
    # relu(NaN) is NaN, and its gradient passes there (torch's threshold_backward zeroes only
    # where the output is <= 0)
    for dtype, tdtype in ((ls.float32, torch.float32), (ls.float64, torch.float64)):
        v = [float("nan"), -1.0, 0.0, -0.0, 2.0, float("-inf"), float("inf")]
        x, tx = ls.tensor(v, dtype=dtype, requires_grad=True), torch.tensor(v, dtype=tdtype, requires_grad=True)
        y, ty = x.relu(), torch.relu(tx)
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        y.sum().backward()
        ty.sum().backward()
        np.testing.assert_array_equal(to_np(x.grad), tx.grad.numpy())
    assert ls.tensor([-3, 0, 4]).relu().tolist() == [0, 0, 4]


@pytest.mark.parametrize("lo,hi", [(2.0, 1.0), (float("nan"), None), (None, float("nan")), (float("nan"), 1.0),
                                   (1.0, 2.0), (-1.0, -1.0)])
def test_clamp_bounds_and_nan_like_torch(lo, hi):
    # min(max(x, lo), hi): lo > hi gives hi everywhere; a NaN bound gives NaN everywhere; a NaN
    # input stays NaN. The gradient: g where lo <= x <= hi (none of these where a bound is NaN).
    # torch's own CPU kernels disagree on a lone NaN bound (ignored on some machines), so those
    # cases check the rule itself.
    v = [0.0, 1.0, 1.5, 2.0, 5.0, float("nan"), float("-inf"), float("inf")]
    nan_bound = any(b is not None and np.isnan(b) for b in (lo, hi))
    for dtype, tdtype in ((ls.float32, torch.float32), (ls.float64, torch.float64)):
        x, tx = ls.tensor(v, dtype=dtype, requires_grad=True), torch.tensor(v, dtype=tdtype, requires_grad=True)
        y, ty = x.clamp(lo, hi), tx.clamp(lo, hi)
        y.sum().backward()
        if nan_bound:
            assert np.isnan(to_np(y)).all() and (to_np(x.grad) == 0).all()
            continue
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        ty.sum().backward()
        np.testing.assert_array_equal(to_np(x.grad), tx.grad.numpy())


def test_clamp_with_min_above_max_gives_max():
    assert ls.tensor([0.0, 5.0]).clamp(2.0, 1.0).tolist() == [1.0, 1.0]


def test_clamp_backward_gives_zero_for_a_nan_or_inf_gradient_at_a_clamped_position():
    # torch: where(lo <= x <= hi, g, 0), so a non-finite g where x was clamped does not leak through
    x, tx = ls.tensor([-2.0, 0.5, 3.0, 0.25], requires_grad=True), torch.tensor([-2.0, 0.5, 3.0, 0.25], requires_grad=True)
    g = [float("nan"), 1.0, float("inf"), float("nan")]
    x.clamp(0.0, 1.0).backward(ls.tensor(g))
    tx.clamp(0.0, 1.0).backward(torch.tensor(g))
    np.testing.assert_array_equal(to_np(x.grad), tx.grad.numpy())
    assert to_np(x.grad)[0] == 0 and np.isnan(to_np(x.grad)[3])
