"""rms_norm against torch: with/without weight, several normalized dims, float64 and float32,
every gradient. add_rms_norm (the residual add fused with the norm) against torch's two steps:
both outputs, the gradients of x, the residual and weight, with the gradient reaching h alone,
y alone or both."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, torch
from op_check import against_torch

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (9,)])
@pytest.mark.parametrize("has_weight", [True, False])
def test_matches_torch(shape, has_weight, dtype):
    C = shape[-1]
    w = randn(C) if has_weight else None
    against_torch(lambda x, w: F.rms_norm(x, (C,), w, eps=1e-6),
                  lambda x, w: torch.nn.functional.rms_norm(x, (C,), w, eps=1e-6),
                  [randn(*shape), w], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_normalized_dims(dtype):
    against_torch(lambda x, w: F.rms_norm(x, (3, 5), w, eps=1e-6),
                  lambda x, w: torch.nn.functional.rms_norm(x, (3, 5), w, eps=1e-6),
                  [randn(4, 3, 5), randn(3, 5)], dtype)


def test_default_eps_none_is_machine_epsilon():
    x = randn(4, 6) * 1e-5
    for dt, tdt in [(ls.float32, torch.float32), (ls.float64, torch.float64)]:
        y = F.rms_norm(ls.tensor(x, dtype=dt), (6,), eps=None)
        ref = torch.nn.functional.rms_norm(torch.tensor(x, dtype=tdt), (6,))
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5)


def test_empty_and_zero_rows():
    assert tuple(F.rms_norm(ls.zeros(0, 3), (3,)).shape) == (0, 3)
    assert (F.rms_norm(ls.zeros(2, 3), (3,)).numpy() == 0).all()


def test_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="rms_norm"):
        F.rms_norm(x, (2,))
    with pytest.raises(ValueError, match="rms_norm: weight"):
        F.rms_norm(x, (3,), ls.zeros(4))
    with pytest.raises(TypeError, match="rms_norm"):
        F.rms_norm(x, (3,), ls.zeros(3, dtype=ls.float64))
    with pytest.raises(TypeError, match="rms_norm"):
        F.rms_norm(ls.tensor([[1, 2, 3]]), (3,))
    with pytest.raises(TypeError, match="rms_norm: normalized_shape"):
        F.rms_norm(x, "3")
    for not_ints in (3.0, [3.5], True):  # never truncated to a size
        with pytest.raises(TypeError, match="rms_norm: normalized_shape must be an int or a sequence"):
            F.rms_norm(x, not_ints)


def _torch_add_rms_norm(x, r, w, eps=1e-6):
    h = x + r
    return h, torch.nn.functional.rms_norm(h, (h.shape[-1],), w, eps=eps)


# Which outputs the loss uses: h and y ("both"), so dx = dh + the norm's gradient; or one of
# them, so the other's gradient arrives as zeros. (ours, torch's): torch adds 0 * y where only h
# is used, so that its weight gradients are zeros rather than None.
USES = {"both": (lambda h, y: F.stack([h, y]), lambda h, y: torch.stack([h, y])),
        "h": (lambda h, y: h, lambda h, y: h + 0 * y),
        "y": (lambda h, y: y, lambda h, y: y)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (9,), (2, 1023)])
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("uses", list(USES))
def test_add_rms_norm_matches_torch(uses, shape, has_weight, dtype):
    C = shape[-1]
    w = randn(C) if has_weight else None
    use = USES[uses]
    against_torch(lambda x, r, w: use[0](*F.add_rms_norm(x, r, w, eps=1e-6)),
                  lambda x, r, w: use[1](*_torch_add_rms_norm(x, r, w)),
                  [randn(*shape), randn(*shape), w], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


def test_add_rms_norm_equals_the_two_steps():
    # Same kernel rows as rms_norm on the sum: the fused op must give the same bits.
    x, r, w = (ls.tensor(a.astype(np.float32)) for a in (randn(6, 77), randn(6, 77), randn(77)))
    h, y = F.add_rms_norm(x, r, w, eps=1e-6)
    np.testing.assert_array_equal(h.numpy(), (x + r).numpy())
    np.testing.assert_array_equal(y.numpy(), F.rms_norm(x + r, 77, w, eps=1e-6).numpy())
    # and with both defaults (eps None: the machine epsilon), on small activations where it shows
    small_x, small_r = x * 1e-4, r * 1e-4
    np.testing.assert_array_equal(F.add_rms_norm(small_x, small_r, w)[1].numpy(),
                                  F.rms_norm(small_x + small_r, 77, w).numpy())


def test_add_rms_norm_statistics_and_backward_op():
    x, r, w = randn(4, 9), randn(4, 9), randn(9)
    h, y, rstd = core.call("add_rms_norm", [ls.tensor(x), ls.tensor(r), ls.tensor(w)], {"eps": 1e-6})
    np.testing.assert_allclose(rstd.numpy(), 1 / np.sqrt(((x + r) ** 2).mean(-1) + 1e-6), rtol=1e-12)
    dy, dh = randn(4, 9), randn(4, 9)
    dx, dw = core.call("add_rms_norm_backward", [ls.tensor(dy), ls.tensor(dh), h, ls.tensor(w), rstd],
                       {"dweight": True})
    ref = core.call("rms_norm_backward", [ls.tensor(dy), h, ls.tensor(w), rstd], {"dweight": True})
    np.testing.assert_allclose(dx.numpy(), ref[0].numpy() + dh, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dw.numpy(), ref[1].numpy(), rtol=1e-12)


def test_add_rms_norm_eps_none_non_contiguous_and_empty():
    x, r = randn(8, 5) * 1e-5, randn(5, 8) * 1e-5
    h, y = F.add_rms_norm(ls.tensor(x, dtype=ls.float32).transpose(0, 1), ls.tensor(r, dtype=ls.float32),
                          eps=None)
    th, ty = _torch_add_rms_norm(torch.tensor(x, dtype=torch.float32).T, torch.tensor(r, dtype=torch.float32),
                                 None, eps=None)
    np.testing.assert_allclose(h.numpy(), th.numpy(), rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-5)
    h, y = F.add_rms_norm(ls.zeros(0, 8), ls.zeros(0, 8))
    assert tuple(h.shape) == tuple(y.shape) == (0, 8)


def test_add_rms_norm_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="add_rms_norm: residual"):
        F.add_rms_norm(x, ls.zeros(2, 4))
    with pytest.raises(TypeError, match="add_rms_norm"):
        F.add_rms_norm(x, ls.zeros(2, 3, dtype=ls.float64))
    with pytest.raises(ValueError, match="add_rms_norm: weight"):
        F.add_rms_norm(x, x, ls.zeros(4))
    with pytest.raises(ValueError, match="add_rms_norm: eps"):
        F.add_rms_norm(x, x, eps=-1.0)
    with pytest.raises(ValueError, match="add_rms_norm_backward: residual gradient"):
        core.call("add_rms_norm_backward", [x, ls.zeros(3, 2), x, None, ls.zeros(2)], {})
