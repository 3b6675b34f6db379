"""CUDA cross_entropy (cuda/cross_entropy.cu) against the CPU op and torch float64: logits in
every float dtype, int32/int64 targets, odd and vocabulary-sized rows, reductions, ignore_index
and label smoothing, the logits gradient; the lse output; out-of-range targets raise IndexError
from the forward and the backward at the next synchronisation, never before (no host wait), and
give a NaN loss; all-ignored and empty batches. The in-place gradient path
(inplace_backward=True) the same way, against the plain path on the GPU, and its memory: no
(N, V) tensor besides the logits during loss and backward."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import raises_at_sync, randn, rel_err, torch
from rows_vs_cpu import DTYPES, check, host, rounded

pytestmark = pytest.mark.cuda

_rng = np.random.default_rng()


def targets(N, V, ignore_every=0, ignore_index=-100, dtype=np.int64):
    t = _rng.integers(0, V, N)
    if ignore_every:
        t[::ignore_every] = ignore_index
    return t.astype(dtype)


def _own(fn):
    """fn on logits that are a non-leaf of their own (x * 1.0, exact), as a model's are: the
    in-place gradient path (inplace_backward=True) needs logits it may overwrite."""
    return lambda x, t: fn(x * 1.0, t)


def _ours(inplace, **kw):
    """F.cross_entropy with kw; with inplace, the gradient written over the logits (the
    upstream gradient of check() is a random weighting, so the backward's scaling runs)."""
    if inplace:
        return _own(lambda x, t: F.cross_entropy(x, t, inplace_backward=True, **kw))
    return lambda x, t: F.cross_entropy(x, t, **kw)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(1, 1), (4, 3), (3, 127), (7, 1023), (5, 50257), (64, 2048), (2, 131072)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_cpu_and_torch(N, V, reduction, label_smoothing, dtype, inplace):
    if V == 1 and label_smoothing:
        pytest.skip("one class with smoothing: the exact gradient is 0 and each side's rounding "
                    "noise (1e-17) makes a relative error meaningless")
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    t = targets(N, V, ignore_every=3 if N > 3 else 0)
    check(_ours(inplace, **kw), lambda x, t: torch.nn.functional.cross_entropy(x, t, **kw),
          [randn(N, V, scale=2.0), t], dtype)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_custom_ignore_index_and_int32_targets(tdtype, dtype, inplace):
    t = targets(200, 509, ignore_every=4, ignore_index=3, dtype=tdtype)
    check(_ours(inplace, ignore_index=3, label_smoothing=0.05),
          lambda x, t: torch.nn.functional.cross_entropy(x, t.long(), ignore_index=3, label_smoothing=0.05),
          [randn(200, 509), t], dtype)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [ls.float32, ls.float64])
def test_large_logits(dtype, inplace):
    # The loss as log s - (x[t] - m) and the in-place gradient from exp((x - m) - log s): the
    # rounded lse = m + log s lost up to 4e-3 at logits near 1e5 in float32. The plain backward
    # recomputes p from the saved lse and keeps that rounding (as the CPU's): forward only there.
    # No label smoothing: its mean of the raw logits is a float32 sum of 1e5s, off by as much.
    kw = dict(reduction="none")
    check(_ours(inplace, **kw), lambda x, t: torch.nn.functional.cross_entropy(x, t, **kw),
          [1e5 + randn(6, 5003), targets(6, 5003, ignore_every=4)], dtype, grad=inplace)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_output(dtype):
    x = rounded(randn(6, 1000, scale=3.0), dtype)
    loss, lse = core.call("cross_entropy", [ls.tensor(x).to(dtype=dtype).cuda(), ls.tensor(targets(6, 1000)).cuda()],
                          {"ignore_index": -100, "reduction": "none", "label_smoothing": 0.0})
    assert lse.dtype == (ls.float64 if dtype == ls.float64 else ls.float32)
    assert loss.dtype == lse.dtype and tuple(loss.shape) == (6,)
    ref = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    assert rel_err(host(lse), ref) < (1e-12 if dtype == ls.float64 else 1e-6)


@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_out_of_range_targets_raise(tdtype):
    x = ls.tensor(randn(4, 5)).to(dtype=ls.float32).cuda()
    for bad, pos in (([1, 5, 0, 2], 1), ([0, 1, 2, -1], 3)):
        t = ls.tensor(np.array(bad, dtype=tdtype)).cuda()
        with raises_at_sync(f"cross_entropy: target {bad[pos]} at position {pos} .* 5 classes "
                            r"\(ignore_index is -100\)"):
            loss = F.cross_entropy(x, t, reduction="none")
        rows = host(loss)  # after the raise the values are readable: NaN at the bad target only
        assert np.isnan(rows[pos]) and np.isfinite(np.delete(rows, pos)).all()
        attrs = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
        g, lse, g_lse = ls.ones(device="cuda"), ls.zeros(4, device="cuda"), ls.zeros(4, device="cuda")
        with raises_at_sync(f"cross_entropy_backward: target {bad[pos]}"):
            core.call("cross_entropy_backward", [g, x, t, lse, g_lse], attrs)
    # the device is still usable afterwards
    ok = F.cross_entropy(x, ls.tensor(np.array([1, 4, 0, 2], dtype=tdtype)).cuda())
    assert np.isfinite(ok.item())


def test_all_ignored():
    x = ls.tensor(randn(4, 6)).cuda().requires_grad_()
    t = ls.tensor(np.full(4, -100)).cuda()
    loss = F.cross_entropy(x, t)
    assert np.isnan(loss.item())
    loss.backward()
    assert np.array_equal(host(x.grad), np.zeros((4, 6)))
    assert F.cross_entropy(x, t, reduction="sum").item() == 0.0


def test_empty_batch():
    x, t = ls.zeros(0, 5, device="cuda"), ls.tensor(np.zeros(0, np.int64)).cuda()
    assert np.isnan(F.cross_entropy(x, t).item())
    assert F.cross_entropy(x, t, reduction="sum").item() == 0.0
    assert tuple(F.cross_entropy(x, t, reduction="none").shape) == (0,)


# ---- inplace_backward: the logits gradient written over the logits in the forward ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("N,V", [(37, 50257), (300, 65544)])
def test_inplace_equals_plain_path_on_the_gpu(dtype, reduction, N, V):
    """The same logits on the GPU: loss and dlogits of both paths, upstream 1 (the scaling is
    skipped on the device) and 0.25. Rows long enough to be split over a cluster of blocks (on
    Hopper), the longer of them past the shared memory of its blocks in float64."""
    x = rounded(randn(N, V, scale=2.0), dtype)
    t = ls.tensor(targets(N, V, ignore_every=5)).cuda()
    for scale in (1.0, 0.25):
        res = []
        for inplace in (True, False):
            logits = ls.tensor(x).to(dtype=dtype).cuda().requires_grad_() * 1.0
            logits.retain_grad()
            loss = F.cross_entropy(logits, t, reduction=reduction, label_smoothing=0.1,
                                   inplace_backward=inplace)
            (loss.sum() * scale).backward()
            res.append((host(loss), host(logits.grad)))
        (l_in, g_in), (l_pl, g_pl) = res
        assert rel_err(l_in, l_pl) < 1e-6
        assert rel_err(g_in, g_pl) < {ls.float64: 1e-12, ls.float32: 1e-6}.get(dtype, 1e-2)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(64, 48, 4101), (300, 64, 4103)])
# (not "mean": over 300 rows its float16 gradient k p, about 1e-6, is subnormal, and the
# in-place path rounds it twice, at upstream 1 and after the scaling)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_output_layer_on_row_padded_logits(N, C, V, reduction, dtype, inplace):
    """The output layer as a model runs it: F.linear's 16-bit logits of an odd vocabulary come with
    rows padded to 64 elements, the loss reads them at that stride (in place: writes their
    gradient there), and the backward's GEMMs read that gradient where it is; the loss and the
    gradients of x and W against the CPU op and torch float64. float32 and float64 logits stay
    contiguous (only 16-bit rows are padded): those cases are the control."""
    kw = dict(reduction=reduction, label_smoothing=0.1)
    t = targets(N, V, ignore_every=7)
    if dtype in (ls.bfloat16, ls.float16):
        x = ls.tensor(randn(N, C)).to(dtype=dtype).cuda()
        w = ls.tensor(randn(V, C)).to(dtype=dtype).cuda()
        assert F.linear(x, w).stride() == ((V + 63) // 64 * 64, 1)
    # the logits are F.linear's own (a non-leaf), which the in-place path may overwrite
    check(lambda x, w, t: F.cross_entropy(F.linear(x, w), t, inplace_backward=inplace, **kw),
          lambda x, w, t: torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w), t, **kw),
          [randn(N, C), randn(V, C, scale=0.2), t], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_registry_ops_on_rows_at_a_stride(dtype, reduction):
    """The four registry ops on logits whose rows are contiguous at a longer stride: the values
    of contiguous logits (up to the order of the sums: these rows start aligned and are read as
    vectors, the contiguous 4101-wide ones element by element), the in-place pair writing nothing
    past a row's V elements, the plain backward's dlogits with the rows a matmul output of its
    shape has."""
    N, V, pad = 37, 4101, 11
    attrs = {"ignore_index": -100, "reduction": reduction, "label_smoothing": 0.1}
    x = rounded(randn(N, V, scale=2.0), dtype)
    wide = np.full((N, V + pad), 5.0)
    wide[:, :V] = x
    t = ls.tensor(targets(N, V, ignore_every=5)).cuda()
    flat = ls.tensor(x).to(dtype=dtype).cuda()
    g = ls.tensor(randn(N) if reduction == "none" else np.array(0.25)).cuda()
    loss, lse = core.call("cross_entropy", [flat, t], attrs)
    g_lse = ls.zeros(N, dtype=lse.dtype, device="cuda")
    (ref,) = core.call("cross_entropy_backward", [g.to(dtype=loss.dtype), flat, t, lse, g_lse], attrs)
    buf = ls.tensor(wide).to(dtype=dtype).cuda()
    view = buf[:, :V]
    s_loss, s_lse = core.call("cross_entropy", [view, t], attrs)
    (s_grad,) = core.call("cross_entropy_backward", [g.to(dtype=loss.dtype), view, t, s_lse, g_lse], attrs)
    tol = {ls.float64: 1e-12, ls.float32: 1e-6}.get(dtype, 1e-2)
    assert rel_err(host(s_loss), host(loss)) < 1e-6 and rel_err(host(s_lse), host(lse)) < 1e-6
    assert rel_err(host(s_grad), host(ref)) < tol
    padded = dtype in (ls.bfloat16, ls.float16)
    assert s_grad.stride() == (((V + 63) // 64 * 64) if padded else V, 1)
    (i_loss,) = core.call("cross_entropy_inplace", [view, t], attrs)
    (i_grad,) = core.call("cross_entropy_inplace_backward", [g.to(dtype=i_loss.dtype), view],
                          {"reduction": reduction})
    assert rel_err(host(i_loss), host(loss)) < 1e-6
    assert rel_err(host(i_grad), host(ref)) < tol
    assert (host(buf)[:, V:] == 5.0).all()


def test_inplace_errors_and_all_ignored():
    x = ls.tensor(randn(4, 5)).to(dtype=ls.float32).cuda()
    attrs = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
    for bad, pos in (([1, 5, 0, 2], 1), ([0, 1, 2, -1], 3)):
        with raises_at_sync(f"cross_entropy_inplace: target {bad[pos]} at position {pos}"):
            loss = core.call("cross_entropy_inplace", [x * 1.0, ls.tensor(np.array(bad)).cuda()],
                             dict(attrs, reduction="none"))[0]
        assert np.isnan(host(loss)[pos])
    with pytest.raises(ValueError, match="cross_entropy_inplace: logits must have contiguous rows"):
        core.call("cross_entropy_inplace", [x.transpose(0, 1), ls.tensor(np.arange(5)).cuda()], attrs)
    with pytest.raises(ValueError, match="cross_entropy_inplace_backward: loss gradient of shape"):
        core.call("cross_entropy_inplace_backward", [ls.ones(4, device="cuda"), x], attrs)
    logits = ls.tensor(randn(4, 6)).cuda().requires_grad_() * 1.0
    logits.retain_grad()
    loss = F.cross_entropy(logits, ls.tensor(np.full(4, -100)).cuda(), inplace_backward=True)
    assert np.isnan(loss.item())
    loss.backward()
    assert np.array_equal(host(logits.grad), np.zeros((4, 6)))


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_inplace_holds_no_second_logits_sized_tensor(dtype):
    """Peak allocation during loss + backward of logits = h @ W (the model's own, W a leaf):
    the plain path allocates dlogits (N, V); the in-place one nothing of that size (an fp32
    upcast included)."""
    N, C, V = 4096, 16, 8192
    size = N * V * (4 if dtype == ls.float32 else 2)
    t = ls.tensor(targets(N, V, ignore_every=7)).cuda()
    extra = {}
    for inplace in (True, False):
        h = ls.tensor(randn(N, C)).to(dtype=dtype).cuda()
        w = ls.tensor(randn(C, V, scale=0.3)).to(dtype=dtype).cuda().requires_grad_()
        logits = h @ w
        ls.cuda.synchronize()
        base = ls.cuda.memory_stats()["allocated_bytes"]
        ls.cuda.reset_peak_memory_stats()
        loss = F.cross_entropy(logits, t, inplace_backward=inplace)
        loss.backward()
        ls.cuda.synchronize()
        extra[inplace] = ls.cuda.memory_stats()["peak_allocated_bytes"] - base
        assert np.isfinite(host(w.grad)).all()
        del h, w, logits, loss
    assert extra[False] >= size, extra            # the measure sees the plain path's dlogits
    assert extra[True] < size // 4, extra         # and no tensor of that size in place
