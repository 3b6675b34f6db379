"""cross_entropy against torch: reductions, ignore_index, label smoothing, int32/int64 targets,
float64 and float32 logits, the logits gradient; bad inputs. The in-place gradient path
(inplace_backward=True) against the plain one and torch, its guards and its registry ops."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, rel_err, torch
from op_check import against_torch

_rng = np.random.default_rng()


def targets(N, V, ignore_every=0, dtype=np.int64):
    t = _rng.integers(0, V, N)
    if ignore_every:
        t[::ignore_every] = -100
    return t.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,V", [(1, 1), (3, 5), (7, 127), (300, 33), (2, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_torch(N, V, reduction, label_smoothing, dtype):
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    t = targets(N, V, ignore_every=3 if N > 3 else 0)
    against_torch(lambda x, t: F.cross_entropy(x, t, **kw),
                  lambda x, t: torch.nn.functional.cross_entropy(x, t, **kw),
                  [randn(N, V, scale=2.0), t], dtype)


@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_custom_ignore_index_and_int32_targets(tdtype):
    t = targets(20, 9).astype(tdtype)
    t[::4] = 3
    against_torch(lambda x, t: F.cross_entropy(x, t, ignore_index=3),
                  lambda x, t: torch.nn.functional.cross_entropy(x, t.long(), ignore_index=3),
                  [randn(20, 9), t], np.float64)


def test_all_ignored_matches_torch():
    x = randn(4, 6)
    t = np.full(4, -100)
    lx, tx = ls.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    loss, ref = F.cross_entropy(lx, ls.tensor(t)), torch.nn.functional.cross_entropy(tx, torch.tensor(t))
    assert np.isnan(loss.item()) and np.isnan(ref.item())
    loss.backward()
    ref.backward()
    np.testing.assert_array_equal(lx.grad.numpy(), np.nan_to_num(tx.grad.numpy()))
    assert F.cross_entropy(lx, ls.tensor(t), reduction="sum").item() == 0.0


def test_single_sample():
    x, t = randn(7), np.array(4)
    for reduction in ["mean", "none"]:
        y = F.cross_entropy(ls.tensor(x), ls.tensor(t), reduction=reduction)
        ref = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), reduction=reduction)
        assert tuple(y.shape) == tuple(ref.shape)
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-12)


def test_empty_batch():
    x, t = ls.zeros(0, 5), ls.tensor(np.zeros(0, np.int64))
    assert np.isnan(F.cross_entropy(x, t).item())
    assert tuple(F.cross_entropy(x, t, reduction="none").shape) == (0,)


def test_bad_inputs():
    x = ls.tensor(randn(2, 5))
    with pytest.raises(IndexError, match="cross_entropy: target 5 .* 5 classes"):
        F.cross_entropy(x, ls.tensor([1, 5]))
    with pytest.raises(IndexError, match="cross_entropy: target -1"):
        F.cross_entropy(x, ls.tensor([-1, 0]))
    with pytest.raises(ValueError, match="cross_entropy: expected logits"):
        F.cross_entropy(x, ls.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="cross_entropy: expected logits"):
        F.cross_entropy(ls.zeros(2, 3, 5), ls.tensor([[1, 2, 3], [0, 0, 0]]))
    with pytest.raises(TypeError, match="cross_entropy: targets"):
        F.cross_entropy(x, ls.zeros(2))
    with pytest.raises(TypeError, match="cross_entropy: logits"):
        F.cross_entropy(ls.tensor([[1, 2]]), ls.tensor([0]))
    with pytest.raises(ValueError, match="cross_entropy: reduction"):
        F.cross_entropy(x, ls.tensor([1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="cross_entropy: label_smoothing"):
        F.cross_entropy(x, ls.tensor([1, 2]), label_smoothing=1.5)
    with pytest.raises(NotImplementedError, match="cross_entropy: per-class weight"):
        F.cross_entropy(x, ls.tensor([1, 2]), ls.ones(x.shape[-1]))  # torch's positional weight


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("inplace", [False, True])
def test_large_logits_keep_every_bit_of_log_sum_exp(dtype, label_smoothing, inplace):
    # lse - x as log s - (x - m): lse = m + log s rounded lost the low bits of log s next to a
    # large m (1e4: an error of 5e-4 in the loss; 1e30: the whole log 2). The in-place gradient
    # (p = exp((x - m) - log s)) likewise; the plain backward has only the saved lse.
    x = np.array([[1e4, 1e4 + 0.5, 1e4 - 2], [-1e4, -1e4 + 0.25, -1e4 - 3], [1e30, 1e30, -1e30]], dtype)
    t = np.array([1, 2, 0])
    kw = dict(reduction="none", label_smoothing=label_smoothing)
    loss, dlogits, _ = _inplace_run(x, t, np.ones(3, dtype), inplace, **kw)
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tx, torch.tensor(t), **kw)
    ref.sum().backward()
    tol = 1e-13 if dtype == np.float64 else 1e-6  # smoothing's row mean of 1e4s: ~1e-14
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=tol)
    if inplace:
        np.testing.assert_allclose(dlogits, tx.grad.numpy(), rtol=tol, atol=tol)


# ---- inplace_backward: the logits gradient written over the logits in the forward ----

def _inplace_run(x, t, g, inplace, **kw):
    """Loss and the gradient reaching the logits (N, V) for an upstream gradient g, with the
    logits a non-leaf of their own, as a model's are."""
    base = ls.tensor(x, requires_grad=True)
    logits = base * 1.0
    logits.retain_grad()
    loss = F.cross_entropy(logits, ls.tensor(t), inplace_backward=inplace, **kw)
    loss.backward(ls.tensor(g))
    return loss.detach().numpy(), logits.grad.numpy(), base.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,V", [(1, 1), (5, 3), (7, 127), (300, 33), (4, 50257)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("upstream", ["one", "random"])
def test_inplace_matches_plain_and_torch(N, V, reduction, label_smoothing, dtype, upstream):
    if V == 1 and label_smoothing:
        pytest.skip("one class with smoothing: the exact gradient is 0 and each side's rounding "
                    "noise makes a relative error meaningless")
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    x = randn(N, V, scale=2.0).astype(dtype)
    t = targets(N, V, ignore_every=3 if N > 3 else 0)
    shape = (N,) if reduction == "none" else ()
    g = np.ones(shape, dtype) if upstream == "one" else randn(*shape).astype(dtype)
    loss, dlogits, dbase = _inplace_run(x, t, g, True, **kw)
    ploss, pdlogits, _ = _inplace_run(x, t, g, False, **kw)
    np.testing.assert_array_equal(loss, ploss)
    # the backward's formula (at g = 1, where the scaling is skipped, up to the compiler's
    # contraction of a * b - c); else g (k p) versus (g k) p: a rounding apart, which the
    # smoothed target's subtraction can magnify where it nearly cancels p (in float32 1.9e-6 at
    # worst over 400 draws of the 5 x 3 case; 1e-6 failed about one in 400)
    assert rel_err(dlogits, pdlogits) < (1e-14 if dtype == np.float64 else 4e-6)
    np.testing.assert_array_equal(dbase, dlogits)
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tx, torch.tensor(t), **kw)
    ref.backward(torch.tensor(g.astype(np.float64)))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel_err(loss, ref.detach().numpy()) < tol
    assert rel_err(dlogits, tx.grad.numpy()) < tol


def test_inplace_writes_the_gradient_into_the_logits():
    x, t = randn(6, 11), targets(6, 11)
    t[2] = 4
    base = ls.tensor(x, requires_grad=True)
    logits = base * 1.0
    loss = F.cross_entropy(logits, ls.tensor(t), ignore_index=4, label_smoothing=0.2,
                           inplace_backward=True)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(tx, torch.tensor(t), ignore_index=4, label_smoothing=0.2).backward()
    # before any backward the logits tensor already holds d(loss)/d(logits); row 2 is ignored
    assert rel_err(logits.detach().numpy(), tx.grad.numpy()) < 1e-12
    assert not logits.detach().numpy()[2].any()
    loss.backward()
    assert rel_err(base.grad, tx.grad) < 1e-12


@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_inplace_all_ignored_and_single_sample(tdtype):
    x = randn(4, 6)
    logits = ls.tensor(x, requires_grad=True) * 1.0
    logits.retain_grad()
    loss = F.cross_entropy(logits, ls.tensor(np.full(4, -100, tdtype)), inplace_backward=True)
    assert np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(logits.grad.numpy(), np.zeros((4, 6)))
    v = randn(7)
    base = ls.tensor(v, requires_grad=True)
    loss = F.cross_entropy(base * 1.0, ls.tensor(np.array(3, tdtype)), reduction="none",
                           inplace_backward=True)
    tv = torch.tensor(v, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tv, torch.tensor(3), reduction="none")
    assert tuple(loss.shape) == () and abs(loss.item() - ref.item()) < 1e-12
    (loss * 3.0).backward()
    (ref * 3.0).backward()
    assert rel_err(base.grad, tv.grad) < 1e-12


def test_inplace_without_gradients_keeps_the_logits():
    x, t = randn(5, 9), ls.tensor(targets(5, 9))
    ref = F.cross_entropy(ls.tensor(x), t).item()
    plain = ls.tensor(x)  # requires no grad: nothing to differentiate, the plain path runs
    assert F.cross_entropy(plain, t, inplace_backward=True).item() == ref
    np.testing.assert_array_equal(plain.numpy(), x)
    logits = ls.tensor(x, requires_grad=True) * 1.0
    with ls.no_grad():
        assert F.cross_entropy(logits, t, inplace_backward=True).item() == ref
    np.testing.assert_array_equal(logits.detach().numpy(), x)


def test_inplace_misuse_raises():
    x, t = randn(4, 6), ls.tensor(targets(4, 6))
    leaf = ls.tensor(x, requires_grad=True)
    with pytest.raises(ValueError, match="cross_entropy: inplace_backward=True would overwrite a leaf"):
        F.cross_entropy(leaf, t, inplace_backward=True)
    with pytest.raises(ValueError, match="overwrite a leaf"):  # also as a single sample
        F.cross_entropy(ls.tensor(x[0], requires_grad=True), t[0], inplace_backward=True)
    flat = ls.tensor(x.reshape(-1), requires_grad=True)
    for view in (flat.view(4, 6), flat.view(2, 12)[0:2].reshape(4, 6)):  # a parameter's views too
        with pytest.raises(ValueError, match="or a view of one"):
            F.cross_entropy(view, t, inplace_backward=True)
    np.testing.assert_array_equal(flat.detach().numpy(), x.reshape(-1))
    np.testing.assert_array_equal(leaf.detach().numpy(), x)

    class Identity(ls.autograd.Function):  # hands out its input's memory under its own node
        @staticmethod
        def forward(ctx, a):
            return a

        @staticmethod
        def backward(ctx, g):
            return g
    for through in (Identity.apply(leaf), ls.autograd.checkpoint(lambda a: a.view(4, 6), leaf)):
        with pytest.raises(ValueError, match="or a view of one"):
            F.cross_entropy(through, t, inplace_backward=True)
    np.testing.assert_array_equal(leaf.detach().numpy(), x)
    view = (ls.tensor(x.T.copy(), requires_grad=True) * 1.0).transpose(0, 1)
    with pytest.raises(ValueError, match="cross_entropy_inplace: logits must have contiguous rows"):
        F.cross_entropy(view, t, inplace_backward=True)
    with pytest.raises(IndexError, match="cross_entropy_inplace: target 6 at position 1"):
        F.cross_entropy(leaf * 1.0, ls.tensor([0, 6, 1, 2]), inplace_backward=True)
    # the gradient serves one backward, even with the graph retained; a write into the buffer
    # before it is caught
    loss = F.cross_entropy(leaf * 1.0, t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already handed to an earlier backward"):
        loss.backward()
    loss = F.cross_entropy(leaf * 1.0, t, inplace_backward=True)
    loss.backward()
    with pytest.raises(RuntimeError, match="already run backward.*retain_graph=True"):
        loss.backward()
    logits = leaf * 1.0
    loss = F.cross_entropy(logits, t, inplace_backward=True)
    with ls.no_grad():
        logits.mul_(2.0)
    with pytest.raises(RuntimeError, match="were written before the backward"):
        loss.backward()
    # logits an earlier op saved are overwritten by the forward: that op's backward refuses them
    logits = (leaf * 1.0).exp()  # exp saves its output
    version = logits._version
    loss = F.cross_entropy(logits, t, inplace_backward=True)
    assert logits._version == version + 1
    with pytest.raises(RuntimeError, match="backward of 'exp' needs was modified by an in-place"):
        loss.backward()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_inplace_on_rows_at_a_stride(reduction):
    """Logits whose rows are contiguous at a longer stride (the row-padded output of a GPU matmul)
    are used in place: the same loss and gradient as contiguous logits, the padding untouched."""
    N, V, ld = 5, 7, 12
    x, t = randn(N, V), ls.tensor(targets(N, V, ignore_every=3))
    attrs = {"ignore_index": -100, "reduction": reduction, "label_smoothing": 0.1}
    wide = np.full((N, ld), 7.5)
    wide[:, :V] = x
    buf = ls.tensor(wide)
    view = buf[:, :V]
    assert view.stride() == (ld, 1)
    flat = ls.tensor(x)
    g = ls.tensor(randn(N) if reduction == "none" else np.array(0.25))
    loss = core.call("cross_entropy_inplace", [view, t], attrs)[0]
    ref = core.call("cross_entropy_inplace", [flat, t], attrs)[0]
    np.testing.assert_array_equal(loss.numpy(), ref.numpy())
    (grad,) = core.call("cross_entropy_inplace_backward", [g, view], {"reduction": reduction})
    (ref_grad,) = core.call("cross_entropy_inplace_backward", [g, flat], {"reduction": reduction})
    assert grad.stride() == (ld, 1)
    np.testing.assert_array_equal(grad.numpy(), ref_grad.numpy())
    np.testing.assert_array_equal(buf.numpy()[:, V:], 7.5)


def test_inplace_registry_ops():
    """The pair called directly: the forward returns {loss} only; the backward scales the buffer
    in place (per row for 'none') and checks its gradient's shape."""
    x, t = randn(3, 5), ls.tensor(targets(3, 5))
    attrs = {"ignore_index": -100, "reduction": "none", "label_smoothing": 0.0}
    buf = ls.tensor(x)
    out = core.call("cross_entropy_inplace", [buf, t], attrs)
    assert len(out) == 1 and tuple(out[0].shape) == (3,)
    grad1 = buf.numpy().copy()
    g = np.array([2.0, 1.0, -0.5])
    (res,) = core.call("cross_entropy_inplace_backward", [ls.tensor(g), buf], {"reduction": "none"})
    np.testing.assert_array_equal(res.numpy(), grad1 * g[:, None])
    np.testing.assert_array_equal(buf.numpy(), res.numpy())  # the same memory
    with pytest.raises(ValueError, match="cross_entropy_inplace_backward: loss gradient of shape"):
        core.call("cross_entropy_inplace_backward", [ls.tensor(1.0), buf], {"reduction": "none"})
