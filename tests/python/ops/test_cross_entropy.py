"""cross_entropy against torch: reductions, ignore_index, label smoothing, int32/int64 targets,
float64 and float32 logits, the logits gradient; bad inputs."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
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
    with pytest.raises(TypeError):
        F.cross_entropy(x, ls.tensor([1, 2]), None)  # torch's positional weight is not supported
