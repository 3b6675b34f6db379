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


def test_var_of_a_large_mean_keeps_float32_precision():
    # the float32 mean is rounded by up to 1e-3 here, a tenth of the spread: the corrected
    # two-pass sum takes its error out, as torch's float64 accumulation does
    x = (3e4 + 1e-2 * np.random.default_rng(0).standard_normal((4, 1024))).astype(np.float32)
    ref = x.astype(np.float64).var(1, ddof=1)
    np.testing.assert_allclose(to_np(ls.tensor(x).var(1)), ref, rtol=1e-5)
    assert to_np(ls.full((2, 7), 7.3).std(1)).tolist() == [0.0, 0.0]  # never the sqrt of a negative
    assert ls.tensor([1e38, -1e38, 1e38]).var().item() == float("inf")  # as torch: not inf - inf


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_argmax(dim):
    a = randn(6, 9)
    check(lambda x: x.max(dim)[0], lambda x: x.max(dim)[0], [(6, 9)])
    np.testing.assert_array_equal(to_np(ls.tensor(a).argmax(dim)), a.argmax(dim))
    assert ls.tensor(a).max().item() == a.max()
    np.testing.assert_array_equal(to_np(ls.tensor(a).min(dim)[0]), a.min(dim))


@pytest.mark.parametrize("unbiased", [False, True])
def test_std(unbiased):
    check(lambda x: x.std(1, unbiased=unbiased), lambda x: x.std(1, unbiased=unbiased), [(5, 33)])
    check(lambda x: x.std(0, 0, True), lambda x: x.std(0, correction=0, keepdim=True), [(4, 6)])


def test_std_gradient_is_zero_on_a_constant_slice_like_torch():
    a = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    y, ty = x.std(1), tx.std(1)
    (y * ls.tensor([1.0, 2.0], dtype=ls.float64)).sum().backward()  # sqrt's own backward: NaN
    (ty * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum().backward()
    np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
    np.testing.assert_allclose(to_np(x.grad), tx.grad.numpy(), rtol=1e-12)
    assert to_np(x.grad)[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape,dim,keepdim", [((4, 5, 6), 1, False), ((4, 5, 6), (0, 2), True),
                                               ((4, 5, 6), -1, True), ((3,), 0, False), ((), 0, False)])
def test_amax_amin_over_dims_split_ties_like_torch(shape, dim, keepdim):
    rng = np.random.default_rng()
    a = rng.integers(0, 3, shape).astype(np.float64)  # many ties
    for name in ("amax", "amin"):
        x, t = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
        y, ty = getattr(x, name)(dim, keepdim), getattr(t, name)(dim, keepdim)
        assert tuple(y.shape) == tuple(ty.shape)
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        w = rng.standard_normal(tuple(y.shape))
        (y * ls.tensor(w)).sum().backward()
        (ty * torch.tensor(w)).sum().backward()
        np.testing.assert_allclose(to_np(x.grad), t.grad.numpy(), rtol=1e-12)
    # integers; a NaN slice splits its gradient over its NaNs (as max() does; torch's amax(dim)
    # gives that slice NaN gradients)
    assert ls.tensor([[1, 5, 5], [2, 2, 0]]).amin(1).tolist() == [1, 0]
    x = ls.tensor([[1.0, np.nan, np.nan], [3.0, 3.0, 0.0]], requires_grad=True)
    x.amax(1).sum().backward()
    assert x.grad.tolist() == [[0.0, 0.5, 0.5], [0.5, 0.5, 0.0]]


def test_amax_with_no_slices_is_empty_and_over_an_empty_dim_raises_like_torch():
    x, t = ls.zeros(2, 0, 3), torch.zeros(2, 0, 3)
    for dim, keepdim in ((0, False), ((0, 2), True), (2, False)):
        for name in ("amax", "amin"):
            assert tuple(getattr(x, name)(dim, keepdim).shape) == tuple(getattr(t, name)(dim, keepdim).shape)
    for call in (lambda: x.amax(1), lambda: x.amax(), lambda: x.amin((0, 1))):
        with pytest.raises(ValueError, match="over its dim 1 of size 0"):
            call()


def test_max_and_min_along_a_dim_are_named_tuples_like_torch():
    t = ls.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    for ours, ref in ((t.max(1), torch.tensor(t.tolist()).max(1)),
                      (t.min(0, keepdim=True), torch.tensor(t.tolist()).min(0, keepdim=True))):
        values, indices = ours
        assert values is ours.values and indices is ours.indices
        assert ours.values.tolist() == ref.values.tolist() and ours.indices.tolist() == ref.indices.tolist()


@pytest.mark.parametrize("shape", [(2, 3), (4,), (2, 1, 3), ()])
def test_argmax_argmin_keepdim_without_dim_keep_every_dim_like_torch(shape):
    a = randn(*shape)
    for op in ("argmax", "argmin"):
        ours = getattr(ls.tensor(a), op)(keepdim=True)
        ref = getattr(torch.tensor(a), op)(keepdim=True)
        assert ours.shape == tuple(ref.shape) and ours.tolist() == ref.tolist()


def test_max_first_index_on_ties():
    t = ls.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    assert t.argmax(1).tolist() == [1, 0]


def test_integer_sum_is_int64():
    assert ls.tensor([[1, 2], [3, 4]], dtype=ls.int32).sum(0).tolist() == [4, 6]
    assert ls.tensor([True, True, False]).sum().item() == 2


def test_max_min_of_all_elements_split_the_gradient_over_ties_like_torch():
    # max() and min() without a dim (and amax()) send g / count to each tied element, as torch;
    # max(dim) keeps sending it to the returned index.
    a = np.array([[5.0, 1.0, 5.0], [2.0, 5.0, -3.0]])
    for name in ("max", "min", "amax"):
        x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
        sign = -1.0 if name == "min" else 1.0
        (getattr(x * sign, name)() * 3.0).backward()
        (getattr(tx * sign, name)() * 3.0).backward()
        np.testing.assert_array_equal(to_np(x.grad), tx.grad.numpy())
        assert to_np(x.grad)[[0, 0, 1], [0, 2, 1]].tolist() == [sign, sign, sign]
    x, tx = ls.tensor([5.0, 5.0, 1.0], requires_grad=True), torch.tensor([5.0, 5.0, 1.0], requires_grad=True)
    x.max(0)[0].backward()
    tx.max(0)[0].backward()
    assert x.grad.tolist() == tx.grad.tolist() == [1.0, 0.0, 0.0]


def test_max_of_all_elements_with_nan_splits_over_the_nans_like_torch():
    v = [5.0, float("nan"), 1.0, float("nan")]
    for name in ("max", "min"):
        x, tx = ls.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)
        y, ty = getattr(x, name)(), getattr(tx, name)()
        assert np.isnan(y.item()) and np.isnan(ty.item())
        y.backward()
        ty.backward()
        np.testing.assert_array_equal(to_np(x.grad), tx.grad.numpy())
    assert ls.tensor([3, 7, 7]).max().item() == 7 and ls.tensor([3, 7, 7]).min().item() == 3
    with pytest.raises(ValueError, match="empty"):
        ls.zeros(0).max()
