import numpy as np
import pytest

import llmscratch as ls

from triton_check import CASES, as64, compare, cpu_call, rng, rounded, to_ls, triton_call

# (N, V): one class, odd vocabularies, and one longer than a 4096 chunk.
SHAPES = [(1, 1), (3, 7), (5, 127), (2, 5000)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("N,V", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(device, dtype, N, V, reduction, smoothing):
    r = rng()
    logits = rounded(r.standard_normal((N, V)) * 3, dtype)
    targets = r.integers(0, V, N).astype(np.int64)
    if N > 2:
        targets[1] = -100  # an ignored row
    attrs = {"ignore_index": -100, "reduction": reduction, "label_smoothing": smoothing}
    xs, ts = to_ls(logits, device, dtype), to_ls(targets, device, dtype)
    x64, t64 = as64([logits, targets])
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
    compare("cross_entropy_backward", bwd, ref_bwd, dtype, tol_scale=4)


@pytest.mark.parametrize("device,dtype", CASES)
def test_cross_entropy_all_ignored_mean_is_nan(device, dtype):
    logits = rng().standard_normal((3, 5))
    targets = np.full(3, -100, np.int64)
    inputs = [to_ls(logits, device, dtype), to_ls(targets, device, dtype)]
    loss, _ = triton_call("cross_entropy", inputs, {"reduction": "mean"})
    assert np.isnan(float(loss.to("cpu").to(ls.float64).item()))
