"""nll_loss and mse_loss, and the loss modules, against torch in float64 (values and gradients)."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.nn as nn
from conftest import torch


def _both(fn_ours, fn_torch, x, *rest):
    """Loss and d(loss.sum())/dx from each library on the same float64 data."""
    a = ls.tensor(x, requires_grad=True)
    b = torch.tensor(x, requires_grad=True)
    la = fn_ours(a, *(ls.tensor(r) for r in rest))
    lb = fn_torch(b, *(torch.tensor(r) for r in rest))
    la.sum().backward()
    lb.sum().backward()
    return (la.detach().numpy(), a.grad.numpy()), (lb.detach().numpy(), b.grad.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("tdtype", [np.int64, np.int32])
def test_nll_loss_matches_torch(reduction, ignore_index, tdtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5))
    t = np.array([0, 4, ignore_index, 2, 1, 2, 3], dtype=tdtype)  # 2 is also an ordinary class
    kw = dict(ignore_index=ignore_index, reduction=reduction)
    ours, ref = _both(lambda a, b: F.nll_loss(a, b, **kw),
                      lambda a, b: torch.nn.functional.nll_loss(a, b.long(), **kw), x, t)
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12)


def test_nll_loss_edges_as_torch():
    x = np.random.default_rng(2).standard_normal((3, 4))
    # one sample: input (C,), a 0-d target
    for reduction in ("mean", "none"):
        ours = F.nll_loss(ls.tensor(x[0]), ls.tensor(2), reduction=reduction)
        ref = torch.nn.functional.nll_loss(torch.tensor(x[0]), torch.tensor(2), reduction=reduction)
        assert ours.shape == tuple(ref.shape) and ours.item() == pytest.approx(ref.item(), abs=1e-15)
    # every target ignored: mean is 0 / 0
    assert np.isnan(F.nll_loss(ls.tensor(x), ls.tensor([-100] * 3)).item())
    with pytest.raises(IndexError, match="out of range"):
        F.nll_loss(ls.tensor(x), ls.tensor([0, 4, 1]))
    with pytest.raises(NotImplementedError, match="nll_loss: per-class weight"):
        F.nll_loss(ls.tensor(x), ls.tensor([0, 1, 1]), ls.ones(4))
    with pytest.raises(ValueError, match="nll_loss: expected input"):
        F.nll_loss(ls.tensor(x), ls.tensor([0, 1]))
    with pytest.raises(ValueError, match="nll_loss: reduction"):
        F.nll_loss(ls.tensor(x), ls.tensor([0, 1, 1]), reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_shape", [(3, 4), (4,)])  # the same shape, or broadcast
def test_mse_loss_matches_torch(reduction, target_shape):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal(target_shape)
    ours, ref = _both(lambda a, b: F.mse_loss(a, b, reduction=reduction),
                      lambda a, b: torch.nn.functional.mse_loss(a, b.expand(3, 4), reduction=reduction), x, y)
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="mse_loss: input and target must be floating-point"):
        F.mse_loss(ls.tensor(x), ls.tensor([1, 2, 3, 4]))


def test_loss_modules_call_their_functional_form():
    rng = np.random.default_rng(4)
    logits, t = rng.standard_normal((6, 5)), np.array([0, 4, -1, 2, 2, 3])
    for ours, ref in ((nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.1),
                       torch.nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.1)),
                      (nn.NLLLoss(ignore_index=-1, reduction="sum"), torch.nn.NLLLoss(ignore_index=-1, reduction="sum"))):
        got = ours(ls.tensor(logits), ls.tensor(t)).item()
        assert got == pytest.approx(ref(torch.tensor(logits), torch.tensor(t)).item(), rel=1e-12)
    y = rng.standard_normal((6, 5))
    assert nn.MSELoss(reduction="sum")(ls.tensor(logits), ls.tensor(y)).item() == pytest.approx(
        torch.nn.MSELoss(reduction="sum")(torch.tensor(logits), torch.tensor(y)).item(), rel=1e-12)
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.0)"
    assert list(nn.CrossEntropyLoss().parameters()) == []
    with pytest.raises(NotImplementedError, match="CrossEntropyLoss: per-class weight"):
        nn.CrossEntropyLoss(ls.ones(5))
