import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core

from triton_check import (CASES, as64, compare, cpu_call, kernel_module, raises_index_error, rng, rounded,
                          to_ls, to_np, triton_call)

# (N, V): one class, odd vocabularies, and one longer than a 4096 chunk.
SHAPES = [(1, 1), (3, 7), (5, 127), (2, 5000)]


def _problem(r, N, V, dtype, reduction, smoothing, ignore_from=3):
    """Random dtype-rounded logits (N, V), targets with row 1 ignored when N >= ignore_from, and
    the ops' attrs; the logits and targets also as float64 CPU tensors."""
    logits = rounded(r.standard_normal((N, V)) * 3, dtype)
    targets = r.integers(0, V, N).astype(np.int64)
    if N >= ignore_from:
        targets[1] = -100
    attrs = {"ignore_index": -100, "reduction": reduction, "label_smoothing": smoothing}
    x64, t64 = as64([logits, targets])
    return logits, targets, attrs, x64, t64


def _gradient_at(g, x64, t64, lse, attrs):
    """The CPU op's dlogits for the loss gradient g (an array) and a zero lse gradient: what the
    in-place pair leaves in the logits."""
    zeros = ls.zeros(x64.shape[0], dtype=ls.float64)
    return cpu_call("cross_entropy_backward", as64([np.asarray(g)]) + [x64, t64, lse, zeros], attrs)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("N,V", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(device, dtype, N, V, reduction, smoothing):
    r = rng()
    logits, targets, attrs, x64, t64 = _problem(r, N, V, dtype, reduction, smoothing)
    xs, ts = to_ls(logits, device, dtype), to_ls(targets, device, dtype)
    fwd = triton_call("cross_entropy", [xs, ts], attrs)
    ref = cpu_call("cross_entropy", [x64, t64], attrs)
    compare("cross_entropy", fwd, ref, dtype)

    g_loss = rounded(r.standard_normal(N if reduction == "none" else ()), dtype)
    g_lse = r.standard_normal(N)
    g_loss_s = to_ls(np.asarray(g_loss), device, dtype)
    # the lse gradient has the lse's dtype (float32 for 16-bit logits)
    g_lse_s = to_ls(g_lse, device, dtype).to(fwd[1].dtype)
    bwd = triton_call("cross_entropy_backward", [g_loss_s, xs, ts, fwd[1], g_lse_s], attrs)
    g_lse = np.asarray(g_lse_s.to("cpu").to(ls.float64))  # the values triton saw
    ref_bwd = cpu_call("cross_entropy_backward",
                       as64([np.asarray(g_loss)]) + [x64, t64, ref[1]] + as64([g_lse]), attrs)
    # One class: dlogits = g_loss (p - 1) + g_lse p with p = 1 up to the rounding of exp, so a
    # g_lse near 0 leaves only that rounding times g_loss; the error is measured against g_loss.
    floor = float(np.abs(g_loss).max()) / np.sqrt(N * V) if V == 1 else 0.0
    compare("cross_entropy_backward", bwd, ref_bwd, dtype, tol_scale=4, floor=floor)


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_large_logits(device, dtype):
    """Logits near 1e5: the loss as log s - (x[t] - m), the in-place gradient from
    exp((x - m) - log s); lse = m + log s rounded to float32 first lost up to 4e-3 of both.
    (No label smoothing: its mean of the raw logits is a float32 sum of 1e5s, off by as much.)"""
    if dtype != "float32":
        pytest.skip("16-bit logits near 1e5 keep no fraction to lose")
    r = rng()
    N, V = 4, 5000
    logits = rounded(1e5 + r.standard_normal((N, V)), dtype)
    targets = r.integers(0, V, N).astype(np.int64)
    targets[1] = -100
    attrs = {"ignore_index": -100, "reduction": "none", "label_smoothing": 0.0}
    x64, t64 = as64([logits, targets])
    loss, lse = cpu_call("cross_entropy", [x64, t64], attrs)
    xs, ts = to_ls(logits, device, dtype), to_ls(targets, device, dtype)
    compare("cross_entropy", triton_call("cross_entropy", [xs, ts], attrs), [loss, lse], dtype)
    compare("cross_entropy_inplace", triton_call("cross_entropy_inplace", [xs, ts], attrs), [loss], dtype)
    ref = _gradient_at(np.ones(N), x64, t64, lse, attrs)
    compare("cross_entropy_inplace (gradient)", [xs], ref, dtype, tol_scale=4)


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_all_ignored_mean_is_nan(device, dtype):
    logits = rng().standard_normal((3, 5))
    targets = np.full(3, -100, np.int64)
    inputs = [to_ls(logits, device, dtype), to_ls(targets, device, dtype)]
    loss, _ = triton_call("cross_entropy", inputs, {"reduction": "mean"})
    assert np.isnan(float(loss.to("cpu").to(ls.float64).item()))


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("op", ["cross_entropy", "cross_entropy_inplace", "cross_entropy_backward"])
def test_out_of_range_targets_raise(device, dtype, op):
    """A target outside [0, V) that is not ignore_index raises the CPU op's IndexError for the
    first one: at once in the interpreter, at the next synchronisation on a GPU (the native range
    check records it on the device)."""
    logits = to_ls(rng().standard_normal((4, 5)), device, dtype)
    targets = to_ls(np.array([1, -100, 5, -1]), device, dtype)
    attrs = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
    inputs = [logits, targets]
    if op == "cross_entropy_backward":
        _, lse = triton_call("cross_entropy", [logits, to_ls(np.array([1, -100, 4, 0]), device, dtype)], attrs)
        zeros = to_ls(np.zeros(4), device, "float32").to(lse.dtype)
        inputs = [to_ls(np.ones(()), device, "float32").to(lse.dtype), logits, targets, lse, zeros]
    first_bad = rf"{op}: target 5 at position 2 is out of range for 5 classes \(ignore_index is -100\)"
    with ls.backend("triton"), raises_index_error(device, first_bad):
        _core.call(op, inputs, attrs)


# ---- the in-place pair: cross_entropy_inplace / cross_entropy_inplace_backward ----

@pytest.mark.parametrize("device,dtype", CASES)
# (2, 33040): rows of 129 KiB in float32, which the in-place forward walks in 8192-wide chunks
@pytest.mark.parametrize("N,V", SHAPES + [(4, 3), (2, 33040)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_inplace(device, dtype, N, V, reduction, smoothing):
    if V == 1 and smoothing:
        pytest.skip("one class with smoothing: the exact gradient is 0 and each side's rounding "
                    "noise makes a relative error meaningless")
    r = rng()
    logits, targets, attrs, x64, t64 = _problem(r, N, V, dtype, reduction, smoothing)
    xs, ts = to_ls(logits, device, dtype), to_ls(targets, device, dtype)
    fwd = triton_call("cross_entropy_inplace", [xs, ts], attrs)
    loss, lse = cpu_call("cross_entropy", [x64, t64], attrs)
    compare("cross_entropy_inplace", fwd, [loss], dtype)

    # the logits now hold the gradient at an upstream 1 (lse gradient 0)
    ref1 = _gradient_at(np.ones((N,) if reduction == "none" else ()), x64, t64, lse, attrs)
    compare("cross_entropy_inplace (gradient)", [xs], ref1, dtype, tol_scale=4)
    if N > 2:
        assert not to_np(xs)[1].any()  # the ignored row: zeroed

    g = rounded(r.standard_normal(N if reduction == "none" else ()), dtype)
    if reduction == "none":
        g[0] = 1.0  # a row with factor 1 is left as it is
    before = to_np(xs)
    g_s = to_ls(np.asarray(g), device, dtype).to(fwd[0].dtype)
    (bwd,) = triton_call("cross_entropy_inplace_backward", [g_s, xs], {"reduction": reduction})
    ref = _gradient_at(g, x64, t64, lse, attrs)
    compare("cross_entropy_inplace_backward", [bwd], ref, dtype, tol_scale=4)
    np.testing.assert_array_equal(to_np(xs), to_np(bwd))  # scaled in place
    if reduction == "none":
        np.testing.assert_array_equal(to_np(xs)[0], before[0])


def _padded(arr, device, dtype, pad=9):
    """arr (N, V) as the first V columns of an (N, V + pad) tensor whose padding holds 5.0 (rows
    at a stride of their own, as the GPU matmul's row-padded logits): that view and the tensor."""
    wide = np.full((arr.shape[0], arr.shape[1] + pad), 5.0)
    wide[:, :arr.shape[1]] = arr
    wide = to_ls(wide, device, dtype)
    return wide[:, :arr.shape[1]], wide


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("N,V", [(3, 7), (2, 5000)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_rows_at_a_stride(device, dtype, N, V, reduction):
    """Both pairs on logits whose rows are contiguous at a longer stride: read in place (the
    in-place pair writes only the rows' elements), the plain backward's dlogits padded as a
    matmul output is, and every value as with contiguous logits."""
    r = rng()
    logits, targets, attrs, x64, t64 = _problem(r, N, V, dtype, reduction, 0.1, ignore_from=2)
    ts = to_ls(targets, device, dtype)
    loss, lse = cpu_call("cross_entropy", [x64, t64], attrs)
    g = rounded(r.standard_normal(N if reduction == "none" else ()), dtype)
    ref = _gradient_at(g, x64, t64, lse, attrs)

    xs, _ = _padded(logits, device, dtype)
    fwd = triton_call("cross_entropy", [xs, ts], attrs)
    compare("cross_entropy", fwd, [loss, lse], dtype)
    g_s = to_ls(np.asarray(g), device, dtype)
    g_lse = to_ls(np.zeros(N), device, dtype).to(fwd[1].dtype)
    (dx,) = triton_call("cross_entropy_backward", [g_s, xs, ts, fwd[1], g_lse], attrs)
    compare("cross_entropy_backward", [dx], ref, dtype, tol_scale=4)

    xs, wide = _padded(logits, device, dtype)
    fwd = triton_call("cross_entropy_inplace", [xs, ts], attrs)
    compare("cross_entropy_inplace", fwd, [loss], dtype)
    (bwd,) = triton_call("cross_entropy_inplace_backward", [g_s.to(fwd[0].dtype), xs],
                         {"reduction": reduction})
    compare("cross_entropy_inplace_backward", [bwd], ref, dtype, tol_scale=4)
    assert (to_np(wide)[:, V:] == 5.0).all()


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_inplace_factor_one_is_a_no_op(device, dtype):
    """...and each op of the pair moves the logits' version, as the CPU and CUDA ones do."""
    r = rng()
    xs = to_ls(r.standard_normal((5, 300)), device, dtype)
    ts = to_ls(r.integers(0, 300, 5).astype(np.int64), device, dtype)
    version = xs._version
    (loss,) = triton_call("cross_entropy_inplace", [xs, ts], {"reduction": "mean"})
    assert xs._version == version + 1
    before = to_np(xs)
    (d,) = triton_call("cross_entropy_inplace_backward", [ls.ones(dtype=loss.dtype).to(device), xs],
                       {"reduction": "mean"})
    np.testing.assert_array_equal(to_np(xs), before)
    assert xs._version == version + 2
    d.zero_()  # the gradient is the logits' memory, under one version counter
    assert xs._version == version + 3 and not to_np(xs).any()


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_inplace_through_autograd(device, dtype):
    """F.cross_entropy(inplace_backward=True) under the triton backend: the gradient reaching a
    float64 leaf through a cast to the dtype under test, against the float64 CPU op."""
    import llmscratch.functional as F
    r = rng()
    x = rounded(r.standard_normal((6, 777)) * 2, dtype)
    t = r.integers(0, 777, 6).astype(np.int64)
    t[2] = -100
    leaf = ls.tensor(x).to(device).requires_grad_()
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        loss = F.cross_entropy(leaf.to(getattr(ls, dtype)), to_ls(t, device, dtype),
                               label_smoothing=0.1, inplace_backward=True)
        (loss * 0.5).backward()
        report = ls.backend_report()
    assert report["cross_entropy_inplace"] == "triton"
    assert report["cross_entropy_inplace_backward"] == "triton"
    x64 = ls.tensor(x, requires_grad=True)
    ref = F.cross_entropy(x64, ls.tensor(t), label_smoothing=0.1)
    (ref * 0.5).backward()
    compare("cross_entropy_inplace", [loss], [ref], dtype)
    compare("cross_entropy_inplace (gradient)", [leaf.grad], [x64.grad], dtype, tol_scale=4)


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_inplace_rejects_a_strided_view(device, dtype):
    xs = to_ls(rng().standard_normal((7, 4)), device, dtype).transpose(0, 1)
    ts = to_ls(np.arange(4, dtype=np.int64), device, dtype)
    with ls.backend("triton"), pytest.raises(ValueError, match="cross_entropy_inplace: logits must have contiguous rows"):
        _core.call("cross_entropy_inplace", [xs, ts], {"reduction": "mean"})


def test_inplace_tiling():
    """The in-place forward's chunks, as the shapes above rely on: 8192 wide for rows over 128 KiB
    whose V is a multiple of 16 (the (2, 33040) float32 case), else at most 4096."""
    ce = kernel_module("cross_entropy")
    assert ce._inplace_tiling(33040, 4) == (8192, 16)
    assert ce._inplace_tiling(33040, 2) == (4096, 16)
    assert ce._inplace_tiling(50257, 4) == (4096, 16)
    assert ce._inplace_tiling(5000, 4) == (4096, 16)
    assert ce._inplace_tiling(127, 4) == (128, 4)
