"""index_select, gather, scatter_add, one_hot against torch: forward, every gradient, float64 and
float32, odd shapes, repeated indices, bad indices."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(np.float64, 1e-12), (np.float32, 1e-5)]
rng = np.random.default_rng()


def leaf(shape, dtype=np.float64):
    a = rng.standard_normal(shape).astype(dtype)
    return ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def index(shape, n, dtype=np.int64):
    a = rng.integers(0, n, shape).astype(dtype)
    return ls.tensor(a), torch.tensor(a.astype(np.int64))


def close(out, ref, tol):
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)


def backward_both(out, ref):
    w = rng.standard_normal(tuple(ref.shape)).astype(ref.detach().numpy().dtype)
    (out * ls.tensor(w)).sum().backward()
    (ref * torch.tensor(w)).sum().backward()


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_index_select(dtype, tol, dim, idx_dtype):
    shape = (4, 5, 3)
    x, t = leaf(shape, dtype)
    i, ti = index((9,), shape[dim], idx_dtype)  # 9 > size: repeats accumulate in the gradient
    out, ref = F.index_select(x, dim, i), torch.index_select(t, dim, ti)
    close(out, ref, 0)
    backward_both(out, ref)
    close(x.grad, t.grad, tol)


def test_index_select_wide_rows_and_strided():
    x, t = leaf((3, 600))  # more than one column block in the backward
    i, ti = index((5,), 3)
    out, ref = F.index_select(x, 0, i), torch.index_select(t, 0, ti)
    close(out, ref, 0)
    backward_both(out, ref)
    close(x.grad, t.grad, 1e-12)
    x, t = leaf((5, 4))
    close(F.index_select(x.transpose(0, 1), 1, i), torch.index_select(t.transpose(0, 1), 1, ti), 0)


def test_index_select_integer_data_and_empty():
    a = rng.integers(-9, 9, (3, 4))
    out = F.index_select(ls.tensor(a), 1, ls.tensor([3, 0, 3]))
    np.testing.assert_array_equal(out.numpy(), a[:, [3, 0, 3]])
    assert F.index_select(ls.zeros(3, 4), 1, ls.tensor(np.zeros(0, np.int64))).shape == (3, 0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2, -2])
def test_gather(dtype, tol, dim):
    xshape, ishape = [4, 5, 3], [3, 4, 2]
    ishape[dim] = 7
    x, t = leaf(tuple(xshape), dtype)
    i, ti = index(tuple(ishape), xshape[dim])
    out, ref = F.gather(x, dim, i), torch.gather(t, dim, ti)
    close(out, ref, 0)
    backward_both(out, ref)
    close(x.grad, t.grad, tol)


def test_gather_strided_int32_index():
    x, t = leaf((6, 5))
    i, ti = index((4, 3), 5, np.int32)
    out = F.gather(x.transpose(0, 1), 0, i.transpose(0, 1))
    close(out, torch.gather(t.transpose(0, 1), 0, ti.transpose(0, 1)), 0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_scatter_add(dtype, tol, dim):
    xshape, ishape = [4, 5, 3], [3, 4, 2]
    ishape[dim] = 9  # many collisions
    x, t = leaf(tuple(xshape), dtype)
    s, ts = leaf(tuple(ishape), dtype)
    i, ti = index(tuple(ishape), xshape[dim])
    out, ref = F.scatter_add(x, dim, i, s), torch.scatter_add(t, dim, ti, ts)
    close(out, ref, tol)
    backward_both(out, ref)
    close(x.grad, t.grad, tol)
    close(s.grad, ts.grad, tol)


def test_scatter_add_src_larger_than_index():
    # torch's backward cannot handle this case; the gradient of the unused src part is zero.
    x, t = leaf((4, 3))
    s, ts = leaf((3, 3))
    i, ti = index((2, 2), 4)
    out, ref = F.scatter_add(x, 0, i, s), torch.scatter_add(t, 0, ti, ts)
    close(out, ref, 1e-12)
    w = rng.standard_normal((4, 3))
    (out * ls.tensor(w)).sum().backward()
    expect = np.zeros((3, 3))
    expect[:2, :2] = np.take_along_axis(w[:, :2], ti.numpy(), 0)
    np.testing.assert_allclose(s.grad.numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), w, rtol=1e-12)


def test_scatter_add_integers():
    x = rng.integers(-5, 5, (3, 4))
    src = rng.integers(-5, 5, (3, 4))
    i = rng.integers(0, 4, (3, 4))
    out = F.scatter_add(ls.tensor(x), 1, ls.tensor(i), ls.tensor(src))
    ref = torch.scatter_add(torch.tensor(x), 1, torch.tensor(i), torch.tensor(src))
    np.testing.assert_array_equal(out.numpy(), ref.numpy())


def test_scatter_add_float16():
    x = rng.standard_normal((3, 4)).astype(np.float16)
    src = rng.standard_normal((3, 9)).astype(np.float16)
    i = rng.integers(0, 4, (3, 9))
    out = F.scatter_add(ls.tensor(x), 1, ls.tensor(i), ls.tensor(src))
    assert out.dtype == ls.float16
    # Sums in float32, rounded once.
    ref = torch.scatter_add(torch.tensor(x).float(), 1, torch.tensor(i), torch.tensor(src).float()).half()
    np.testing.assert_array_equal(out.numpy(), ref.numpy())


@pytest.mark.parametrize("num_classes", [-1, 7])
def test_one_hot(num_classes):
    a = rng.integers(0, 6, (3, 5))
    out = F.one_hot(ls.tensor(a), num_classes)
    ref = torch.nn.functional.one_hot(torch.tensor(a), num_classes)
    assert out.dtype == ls.int64
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert F.one_hot(ls.tensor(np.zeros(0, np.int64)), 3).shape == (0, 3)


def test_errors():
    x = ls.zeros(3, 4)
    with pytest.raises(IndexError, match="index_select: index 4 is out of range for dimension 1 of size 4"):
        F.index_select(x, 1, ls.tensor([0, 4]))
    with pytest.raises(IndexError, match="index_select: index -1 is out of range"):
        F.index_select(x, 1, ls.tensor([-1]))
    with pytest.raises(TypeError, match="index_select: index must be int32 or int64, got float32"):
        F.index_select(x, 1, ls.tensor([0.0]))
    with pytest.raises(ValueError, match="index_select: index must be 0-d or 1-D"):
        F.index_select(x, 1, ls.tensor([[0]]))
    with pytest.raises(IndexError, match="index_select: dimension 2 is out of range"):
        F.index_select(x, 2, ls.tensor([0]))
    with pytest.raises(TypeError, match="index_select: index must be a Tensor"):
        F.index_select(x, 0, [0])
    with pytest.raises(IndexError, match="gather: index 7 is out of range for dimension 0 of size 3"):
        F.gather(x, 0, ls.tensor([[7]]))
    with pytest.raises(ValueError, match="gather: index of shape .* must be no larger than the input"):
        F.gather(x, 1, ls.tensor(np.zeros((4, 1), np.int64)))
    with pytest.raises(ValueError, match="gather: index must have as many dimensions"):
        F.gather(x, 1, ls.tensor([0]))
    with pytest.raises(IndexError, match="scatter_add: index 5 is out of range for dimension 1 of size 4"):
        F.scatter_add(x, 1, ls.tensor([[5]]), ls.zeros(1, 1))
    with pytest.raises(ValueError, match="scatter_add: index of shape .* must be no larger than src"):
        F.scatter_add(x, 1, ls.tensor(np.zeros((2, 3), np.int64)), ls.zeros(2, 2))
    with pytest.raises(TypeError, match="scatter_add: src dtype float64 does not match the input dtype float32"):
        F.scatter_add(x, 1, ls.tensor([[0]]), ls.zeros(1, 1, dtype=ls.float64))
    with pytest.raises(IndexError, match="one_hot: index 3 is out of range .* of size 3"):
        F.one_hot(ls.tensor([0, 3]), 3)
    with pytest.raises(IndexError, match="one_hot: index -2 is out of range"):
        F.one_hot(ls.tensor([-2]), 3)
    with pytest.raises(ValueError, match="one_hot: cannot infer num_classes from an empty index"):
        F.one_hot(ls.tensor(np.zeros(0, np.int64)))
    with pytest.raises(TypeError, match="one_hot: index must be int32 or int64"):
        F.one_hot(ls.tensor([1.0]), 3)


@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_index_check_raises_each_kinds_message_for_the_first_bad_value(idx_dtype):
    """The op "index_check" (for kernels that cannot raise themselves, the Triton ones) raises
    the message of the op it names for the first value outside [0, size); kind "target" lets
    ignore_index pass."""
    import llmscratch_core as core
    idx = ls.tensor(np.array([1, -100, 7, -1], dtype=idx_dtype))
    cases = [({"kind": "index", "dim": 2}, "gather: index -100 is out of range for dimension 2 of size 5"),
             ({"kind": "id"}, r"gather: id -100 at position 1 is out of range for 5 embeddings \(valid ids are 0..4\)"),
             ({"kind": "target", "ignore_index": -100},
              r"gather: target 7 at position 2 is out of range for 5 classes \(ignore_index is -100\)")]
    for attrs, msg in cases:
        with pytest.raises(IndexError, match=msg):
            core.call("index_check", [idx], {"op": "gather", "size": 5, **attrs})
    assert core.call("index_check", [idx[:1]], {"op": "gather", "size": 2}) == []
    assert core.call("index_check", [ls.tensor(np.zeros(0, idx_dtype))], {"op": "gather", "size": 0}) == []
    with pytest.raises(ValueError, match="index_check: kind must be index, id or target, got row"):
        core.call("index_check", [idx], {"kind": "row", "size": 5})
    with pytest.raises(ValueError, match="index_check: size must be >= 0"):
        core.call("index_check", [idx], {"size": -1})
