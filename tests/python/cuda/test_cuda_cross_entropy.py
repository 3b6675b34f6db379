"""CUDA cross_entropy (cuda/cross_entropy.cu) against the CPU op and torch float64: logits in
every float dtype, int32/int64 targets, odd and vocabulary-sized rows, reductions, ignore_index
and label smoothing, the logits gradient; the lse output; out-of-range targets raise IndexError
in the forward and the backward; all-ignored and empty batches."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, rel_err, torch
from rows_vs_cpu import DTYPES, check, host, rounded

pytestmark = pytest.mark.cuda

_rng = np.random.default_rng()


def targets(N, V, ignore_every=0, ignore_index=-100, dtype=np.int64):
    t = _rng.integers(0, V, N)
    if ignore_every:
        t[::ignore_every] = ignore_index
    return t.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(1, 1), (3, 127), (7, 1023), (5, 50257), (64, 2048), (2, 131072)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_cpu_and_torch(N, V, reduction, label_smoothing, dtype):
    if V == 1 and label_smoothing:
        pytest.skip("one class with smoothing: the exact gradient is 0 and each side's rounding "
                    "noise (1e-17) makes a relative error meaningless")
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    t = targets(N, V, ignore_every=3 if N > 3 else 0)
    check(lambda x, t: F.cross_entropy(x, t, **kw),
          lambda x, t: torch.nn.functional.cross_entropy(x, t, **kw),
          [randn(N, V, scale=2.0), t], dtype)


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_custom_ignore_index_and_int32_targets(tdtype, dtype):
    t = targets(200, 509, ignore_every=4, ignore_index=3, dtype=tdtype)
    check(lambda x, t: F.cross_entropy(x, t, ignore_index=3, label_smoothing=0.05),
          lambda x, t: torch.nn.functional.cross_entropy(x, t.long(), ignore_index=3, label_smoothing=0.05),
          [randn(200, 509), t], dtype)


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
        with pytest.raises(IndexError, match=f"cross_entropy: target {bad[pos]} at position {pos} .* 5 classes"):
            F.cross_entropy(x, t)
        attrs = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
        g, lse, g_lse = ls.ones(device="cuda"), ls.zeros(4, device="cuda"), ls.zeros(4, device="cuda")
        with pytest.raises(IndexError, match=f"cross_entropy_backward: target {bad[pos]}"):
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
