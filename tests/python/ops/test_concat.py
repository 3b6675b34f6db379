"""cat, stack, split, chunk, narrow, unbind, movedim, tril and triu against torch: forward, every
gradient, float64 and float32, odd shapes."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(np.float64, 1e-12), (np.float32, 1e-6)]
rng = np.random.default_rng()


def leaves(*shapes, dtype=np.float64):
    """Fresh random llmscratch and torch leaves holding the same values."""
    arrs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return ([ls.tensor(a, requires_grad=True) for a in arrs],
            [torch.tensor(a, requires_grad=True) for a in arrs])


def close(out, ref, tol):
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=tol, atol=tol)


def backward_both(outs, refs):
    """Backward of sum(out * w) with one random weighting per output, in both libraries."""
    loss_l, loss_t = 0, 0
    for o, r in zip(outs, refs):
        w = rng.standard_normal(tuple(r.shape)).astype(r.detach().numpy().dtype)
        loss_l = loss_l + (o * ls.tensor(w)).sum()
        loss_t = loss_t + (r * torch.tensor(w)).sum()
    loss_l.backward()
    loss_t.backward()


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_cat(dtype, tol, dim):
    shapes = []
    for n in (1, 4, 3):
        s = [3, 5, 7]
        s[dim] = n
        shapes.append(s)
    xs, ts = leaves(*shapes, dtype=dtype)
    out, ref = F.cat(xs, dim), torch.cat(ts, dim)
    close(out, ref, tol)
    backward_both([out], [ref])
    for x, t in zip(xs, ts):
        close(x.grad, t.grad, tol)


def test_cat_strided_and_legacy_empty():
    (a, b), (ta, tb) = leaves((4, 3), (3, 2))
    xs = [a.transpose(0, 1), ls.tensor(np.zeros(0)), b]
    out = F.cat(xs, 1)
    ref = torch.cat([ta.transpose(0, 1), torch.zeros(0, dtype=torch.float64), tb], 1)
    close(out, ref, 0)
    backward_both([out], [ref])
    close(a.grad, ta.grad, 1e-12)
    close(b.grad, tb.grad, 1e-12)
    assert ls.cat([ls.zeros(0, 4), ls.zeros(2, 4)]).shape == (2, 4)


def test_cat_integer_dtypes():
    a = rng.integers(-5, 5, (2, 3))
    b = rng.integers(-5, 5, (2, 4))
    out = F.cat([ls.tensor(a), ls.tensor(b)], -1)
    assert out.dtype == ls.int64
    np.testing.assert_array_equal(out.numpy(), np.concatenate([a, b], -1))


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2, -3])
def test_stack(dtype, tol, dim):
    xs, ts = leaves((3, 5), (3, 5), (3, 5), dtype=dtype)
    out, ref = F.stack(xs, dim), torch.stack(ts, dim)
    assert out.shape == tuple(ref.shape)
    close(out, ref, tol)
    backward_both([out], [ref])
    for x, t in zip(xs, ts):
        close(x.grad, t.grad, tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("arg,dim", [(2, 1), (3, 1), (7, 1), (1, 0), ([1, 0, 4, 2], 1), ([3], 0), ([2, 1], -1)])
def test_split(dtype, tol, arg, dim):
    (x,), (t,) = leaves((3, 7, 3), dtype=dtype)
    outs, refs = F.split(x, arg, dim), torch.split(t, arg, dim)
    assert isinstance(outs, tuple) and len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == tuple(r.shape)
        close(o, r, tol)
    # Only some pieces used: the others contribute zero gradient.
    backward_both(outs[::2], refs[::2])
    close(x.grad, t.grad, tol)


def test_split_is_a_view():
    x = ls.tensor(np.arange(10.0))
    a, b = x.split([4, 6])
    x[5] = 100.0
    assert b.numpy()[1] == 100.0


class _Pieces(ls.autograd.Function):
    """sum(a) + sum(b) whose backward hands back the given gradients of a and b as they are."""

    grads = None

    @staticmethod
    def forward(ctx, a, b):
        return (a * 1.0).sum() + (b * 1.0).sum()

    @staticmethod
    def backward(ctx, g):
        return _Pieces.grads


@pytest.mark.parametrize("dim", [0, 1])
def test_split_backward_takes_pieces_that_tile_one_buffer(dim):
    """Gradients of the pieces that lie side by side in one buffer (as the CUDA attention backward
    writes a fused qkv projection's) are that buffer, a view; pieces in separate tensors, or out
    of order, are concatenated."""
    buf = ls.tensor(rng.standard_normal((6, 4)))
    sizes = [2, 4] if dim == 0 else [1, 3]
    full = buf if dim == 0 else buf[:, :4]
    def piece(start, n):  # full[start : start + n] along dim, a view
        return full[start:start + n] if dim == 0 else full[:, start:start + n]
    for grads, shared in (((piece(0, sizes[0]), piece(sizes[0], sizes[1])), True),
                          ((piece(0, sizes[0]) * 1.0, piece(sizes[0], sizes[1])), False),
                          ((piece(sizes[1], sizes[0]), piece(0, sizes[1])), False)):
        x = ls.tensor(rng.standard_normal(tuple(full.shape)), requires_grad=True)
        y = x * 1.0
        seen = []  # the gradient reaching y as the split's backward made it
        y.register_hook(lambda g: seen.append((g.data_ptr(), g.numpy().copy())))
        _Pieces.grads = grads
        _Pieces.apply(*F.split(y, sizes, dim)).backward()
        (ptr, gy), = seen
        np.testing.assert_array_equal(gy, np.concatenate([g.numpy() for g in grads], dim))
        assert (ptr == buf.data_ptr()) == shared
        np.testing.assert_array_equal(x.grad.numpy(), gy)


def test_split_pieces_gradients_of_the_wrong_shape_are_refused_before_the_split():
    """Pieces whose sizes do not join to the input's shape (adjacent in one buffer or not) never
    reach the split's backward, where they could make a view past the buffer: the tape refuses
    a hook's or a Function's gradient of another shape than its tensor's."""
    buf = ls.tensor(rng.standard_normal((3, 3)))
    x = ls.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    for pieces in ((buf[0:2], buf[2:3]), (buf[0:2] * 1.0, buf[2:3] * 1.0)):
        a, b = F.split(x, [2, 2], 0)
        a.register_hook(lambda g, p=pieces[0]: p)
        b.register_hook(lambda g, p=pieces[1]: p)
        with pytest.raises(RuntimeError, match=r"hook returned .* shape \(1, 3\) .* shape \(2, 3\)"):
            ((a * 1.0).sum() + (b * 1.0).sum()).backward()
        assert x.grad is None
    _Pieces.grads = (buf[0:2], buf[2:3])
    with pytest.raises(RuntimeError, match=r"returned a gradient of shape \(1, 3\) for argument 1"):
        _Pieces.apply(*F.split(x * 1.0, [2, 2], 0)).backward()


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("n,chunks", [(5, 3), (6, 4), (7, 1), (2, 5), (127, 8), (0, 3)])
def test_chunk(dtype, tol, n, chunks):
    (x,), (t,) = leaves((2, n), dtype=dtype)
    outs, refs = F.chunk(x, chunks, 1), torch.chunk(t, chunks, 1)
    assert [o.shape for o in outs] == [tuple(r.shape) for r in refs]
    for o, r in zip(outs, refs):
        close(o, r, tol)
    if n:
        backward_both(outs, refs)
        close(x.grad, t.grad, tol)


def test_errors():
    a, b = ls.zeros(2, 3), ls.zeros(3, 3)
    with pytest.raises(ValueError, match=r"cat: sizes of tensors must match.*\(3, 3\)"):
        F.cat([a, b], 1)
    with pytest.raises(ValueError, match="cat: expected a non-empty list"):
        F.cat([], 0)
    with pytest.raises(TypeError, match="cat: expected all tensors to have dtype float32, got float64"):
        F.cat([a, ls.zeros(2, 3, dtype=ls.float64)], 0)
    with pytest.raises(ValueError, match="cat: tensors must have the same number of dimensions"):
        F.cat([a, ls.zeros(2)], 0)
    with pytest.raises(ValueError, match="zero-dimensional"):
        F.cat([ls.tensor(1.0), ls.tensor(2.0)])
    with pytest.raises(IndexError, match="cat: dimension 2 is out of range"):
        F.cat([a, a], 2)
    with pytest.raises(TypeError, match="cat: expected a sequence of tensors"):
        F.cat(a, 0)
    with pytest.raises(ValueError, match="stack: expects each tensor to be equal size"):
        F.stack([a, b])
    with pytest.raises(ValueError, match="stack: expected a non-empty list"):
        F.stack([])
    with pytest.raises(ValueError, match=r"split: sizes \(2, 2\) must sum exactly to 3"):
        F.split(a, [2, 2], 1)
    with pytest.raises(ValueError, match="split: split_size must be positive"):
        F.split(a, 0, 1)
    with pytest.raises(ValueError, match="split: sizes must be non-negative"):
        F.split(a, [4, -1], 1)
    with pytest.raises(IndexError, match="split: dimension 2 is out of range"):
        F.split(a, 1, 2)
    with pytest.raises(ValueError, match="chunk: chunks must be greater than 0, got 0"):
        F.chunk(a, 0)
    with pytest.raises(ValueError, match="chunk: cannot chunk a zero-dimensional tensor"):
        F.chunk(ls.tensor(1.0), 2)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("dim,start,length", [(0, 1, 2), (1, -3, 3), (-1, 0, 5), (2, 4, 0), (0, 3, 0)])
def test_narrow(dtype, tol, dim, start, length):
    (a,), (ta,) = leaves((3, 4, 5), dtype=dtype)
    out, ref = F.narrow(a, dim, start, length), torch.narrow(ta, dim, start, length)
    assert out.shape == tuple(ref.shape)
    close(out, ref, tol)
    backward_both([out], [ref])
    close(a.grad, ta.grad, tol)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unbind_gives_views_without_the_dim(dim):
    (a,), (ta,) = leaves((2, 3, 4))
    outs, refs = a.unbind(dim), ta.unbind(dim)
    assert [o.shape for o in outs] == [tuple(r.shape) for r in refs]
    for o, r in zip(outs, refs):
        close(o, r, 0)
    backward_both(list(outs), list(refs))
    close(a.grad, ta.grad, 1e-12)
    assert F.unbind(ls.zeros(0, 3)) == ()


@pytest.mark.parametrize("source,destination", [(0, 2), (-1, 0), ([0, 1], [2, 0]), ((2,), (1,)), ([], [])])
def test_movedim(source, destination):
    (a,), (ta,) = leaves((2, 3, 4))
    out, ref = a.movedim(source, destination), ta.movedim(source, destination)
    assert out.shape == tuple(ref.shape)
    close(out, ref, 0)
    backward_both([out], [ref])
    close(a.grad, ta.grad, 1e-12)


def test_narrow_and_movedim_refuse_what_torch_refuses():
    x = ls.zeros(3, 4)
    with pytest.raises(ValueError, match="exceeds dimension 0 of size 3"):
        F.narrow(x, 0, 2, 2)
    with pytest.raises(IndexError, match="start 4 is out of range"):
        F.narrow(x, 0, 4, 0)
    with pytest.raises(ValueError, match="repeated dim in source"):
        x.movedim([0, 0], [0, 1])
    with pytest.raises(ValueError, match="same number of dims"):
        x.movedim([0, 1], [1])
    with pytest.raises(TypeError, match="both be ints or both sequences"):
        x.movedim(0, [1])


@pytest.mark.parametrize("name", ["tril", "triu"])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (5, 2)])
@pytest.mark.parametrize("diagonal", [-6, -1, 0, 2, 7])
def test_triangles(name, shape, diagonal):
    (a,), (ta,) = leaves(shape)
    out, ref = getattr(F, name)(a, diagonal), getattr(torch, name)(ta, diagonal)
    close(out, ref, 0)
    backward_both([out], [ref])
    close(a.grad, ta.grad, 1e-12)


def test_triangles_of_bools_ints_and_nan():
    assert ls.ones(3, 3, dtype=ls.bool).tril().numpy().tolist() == torch.ones(3, 3, dtype=torch.bool).tril().tolist()
    assert ls.ones(2, 3, dtype=ls.int64).triu(1).numpy().tolist() == torch.ones(2, 3, dtype=torch.int64).triu(1).tolist()
    nan = ls.full((2, 2), float("nan")).tril()
    assert np.isnan(nan.numpy()[1, 0]) and nan.numpy()[0, 1] == 0
    with pytest.raises(ValueError, match="at least 2 dims"):
        F.tril(ls.ones(3))
