"""layer_norm against torch: with/without weight and bias, several normalized dims, float64 and
float32, every gradient. add_layer_norm (the residual add fused with the norm) against torch's
two steps: both outputs, the gradients of x, the residual, weight and bias, with the gradient
reaching h alone, y alone or both."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, torch
from op_check import against_torch

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (7,)])
@pytest.mark.parametrize("affine", ["wb", "w", "b", ""])
def test_matches_torch(shape, affine, dtype):
    C = shape[-1]
    w = randn(C) if "w" in affine else None
    b = randn(C) if "b" in affine else None
    x = randn(*shape, scale=2.0) + 1.5
    against_torch(lambda x, w, b: F.layer_norm(x, (C,), w, b, eps=1e-5),
                  lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), w, b, eps=1e-5),
                  [x, w, b], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_normalized_dims(dtype):
    against_torch(lambda x, w, b: F.layer_norm(x, (3, 5), w, b),
                  lambda x, w, b: torch.nn.functional.layer_norm(x, (3, 5), w, b),
                  [randn(4, 3, 5), randn(3, 5), randn(3, 5)], dtype)


def test_single_feature():
    # C = 1: x - mean is exactly 0, so y = bias and no gradient reaches x or the weight
    # (a relative comparison would only measure rounding noise around 0).
    x = ls.tensor(randn(5, 1), requires_grad=True)
    w, b = (ls.tensor(randn(1), requires_grad=True) for _ in range(2))
    y = F.layer_norm(x, (1,), w, b)
    np.testing.assert_array_equal(y.detach().numpy(), np.broadcast_to(b.detach().numpy(), (5, 1)))
    g = randn(5, 1)
    (y * ls.tensor(g)).sum().backward()
    assert np.abs(x.grad.numpy()).max() < 1e-12 and np.abs(w.grad.numpy()).max() == 0
    np.testing.assert_allclose(b.grad.numpy(), g.sum(0), rtol=1e-12)


def test_int_normalized_shape_and_eps():
    x = randn(4, 6)
    y = F.layer_norm(ls.tensor(x), 6, eps=0.5)
    np.testing.assert_allclose(y.numpy(), torch.nn.functional.layer_norm(torch.tensor(x), (6,), eps=0.5).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_empty_and_non_contiguous():
    assert tuple(F.layer_norm(ls.zeros(0, 8), (8,)).shape) == (0, 8)
    x = randn(8, 5)
    y = F.layer_norm(ls.tensor(x).transpose(0, 1), (8,))
    np.testing.assert_allclose(y.numpy(), torch.nn.functional.layer_norm(torch.tensor(x).T, (8,)).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="layer_norm"):
        F.layer_norm(x, (4,))
    with pytest.raises(ValueError, match="layer_norm: weight"):
        F.layer_norm(x, (3,), ls.zeros(4))
    with pytest.raises(ValueError, match="layer_norm: bias"):
        F.layer_norm(x, (3,), None, ls.zeros(2))
    with pytest.raises(TypeError, match="layer_norm"):
        F.layer_norm(x, (3,), ls.zeros(3, dtype=ls.float64))
    with pytest.raises(TypeError, match="layer_norm"):
        F.layer_norm(ls.tensor([[1, 2, 3]]), (3,))
    with pytest.raises(ValueError, match="layer_norm: eps"):
        F.layer_norm(x, (3,), eps=-1.0)


def _torch_add_layer_norm(x, r, w, b, eps=1e-5):
    h = x + r
    return h, torch.nn.functional.layer_norm(h, (h.shape[-1],), w, b, eps=eps)


# Which outputs the loss uses: h and y ("both"), so dx = dh + the norm's gradient; or one of
# them, so the other's gradient arrives as zeros. (ours, torch's): torch adds 0 * y where only h
# is used, so that its weight gradients are zeros rather than None.
USES = {"both": (lambda h, y: F.stack([h, y]), lambda h, y: torch.stack([h, y])),
        "h": (lambda h, y: h, lambda h, y: h + 0 * y),
        "y": (lambda h, y: y, lambda h, y: y)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (2, 3, 127), (300, 48), (7,), (2, 1023)])
@pytest.mark.parametrize("affine", ["wb", "w", "b", ""])
def test_add_layer_norm_matches_torch(shape, affine, dtype):
    C = shape[-1]
    w = randn(C) if "w" in affine else None
    b = randn(C) if "b" in affine else None
    x, r = randn(*shape, scale=2.0) + 1.5, randn(*shape)
    use = USES["both"]
    against_torch(lambda x, r, w, b: use[0](*F.add_layer_norm(x, r, w, b, eps=1e-5)),
                  lambda x, r, w, b: use[1](*_torch_add_layer_norm(x, r, w, b)),
                  [x, r, w, b], dtype, tol=1e-10 if dtype == np.float64 else 3e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("uses", ["h", "y"])
def test_add_layer_norm_one_output_used(uses, dtype):
    use = USES[uses]
    against_torch(lambda x, r, w, b: use[0](*F.add_layer_norm(x, r, w, b, eps=1e-5)),
                  lambda x, r, w, b: use[1](*_torch_add_layer_norm(x, r, w, b)),
                  [randn(5, 33) + 1.0, randn(5, 33), randn(33), randn(33)], dtype,
                  tol=1e-10 if dtype == np.float64 else 3e-5)


def test_add_layer_norm_equals_the_two_steps():
    # Same kernel rows as layer_norm on the sum: the fused op must give the same bits.
    x, r, w, b = (ls.tensor(a.astype(np.float32)) for a in (randn(6, 77), randn(6, 77), randn(77), randn(77)))
    h, y = F.add_layer_norm(x, r, w, b, eps=1e-5)
    np.testing.assert_array_equal(h.numpy(), (x + r).numpy())
    np.testing.assert_array_equal(y.numpy(), F.layer_norm(x + r, 77, w, b, eps=1e-5).numpy())


def test_add_layer_norm_statistics_and_backward_op():
    x, r, w = randn(4, 9) + 1.0, randn(4, 9), randn(9)
    h, y, mean, rstd = core.call("add_layer_norm", [ls.tensor(x), ls.tensor(r), ls.tensor(w), None],
                                 {"eps": 1e-5})
    hh = x + r
    np.testing.assert_allclose(mean.numpy(), hh.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(rstd.numpy(), 1 / np.sqrt(hh.var(-1) + 1e-5), rtol=1e-12)
    dy, dh = randn(4, 9), randn(4, 9)
    dx, dw, db = core.call("add_layer_norm_backward",
                           [ls.tensor(dy), ls.tensor(dh), h, ls.tensor(w), mean, rstd],
                           {"dweight": True, "dbias": False})
    ref = core.call("layer_norm_backward", [ls.tensor(dy), h, ls.tensor(w), mean, rstd],
                    {"dweight": True, "dbias": False})
    np.testing.assert_allclose(dx.numpy(), ref[0].numpy() + dh, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dw.numpy(), ref[1].numpy(), rtol=1e-12)
    assert tuple(db.shape) == (0,)


def test_add_layer_norm_non_contiguous_and_empty():
    x, r = randn(8, 5), randn(5, 8)
    h, y = F.add_layer_norm(ls.tensor(x).transpose(0, 1), ls.tensor(r), None, None)
    th, ty = _torch_add_layer_norm(torch.tensor(x).T, torch.tensor(r), None, None)
    np.testing.assert_allclose(h.numpy(), th.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-12, atol=1e-12)
    h, y = F.add_layer_norm(ls.zeros(0, 8), ls.zeros(0, 8))
    assert tuple(h.shape) == tuple(y.shape) == (0, 8)


def test_add_layer_norm_bad_inputs():
    x = ls.zeros(2, 3)
    with pytest.raises(ValueError, match="add_layer_norm: residual"):
        F.add_layer_norm(x, ls.zeros(3, 2))
    with pytest.raises(TypeError, match="add_layer_norm"):
        F.add_layer_norm(x, ls.zeros(2, 3, dtype=ls.float64))
    with pytest.raises(ValueError, match="add_layer_norm: weight"):
        F.add_layer_norm(x, x, ls.zeros(4))
    with pytest.raises(ValueError, match="add_layer_norm: eps"):
        F.add_layer_norm(x, x, eps=-1.0)
    with pytest.raises(TypeError, match="add_layer_norm"):
        F.add_layer_norm(x, None)
    with pytest.raises(ValueError, match="add_layer_norm_backward: residual gradient"):
        core.call("add_layer_norm_backward", [x, ls.zeros(3, 2), x, None, ls.zeros(2), ls.zeros(2)], {})
