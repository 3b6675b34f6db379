"""dropout: the Philox mask definition, statistics, reproducibility and the backward."""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F


def philox_keep(seed, offset, n, p):
    """Reference mask from core/philox.h: element i keeps iff (bits_i >> 8) >= ceil(p * 2^24)."""
    threshold = math.ceil(p * 2 ** 24)
    keep = np.empty(n, dtype=bool)
    for i in range(n):
        bits = _core.philox4x32_10(offset + i // 4, seed)[i % 4]
        keep[i] = (bits >> 8) >= threshold
    return keep


@pytest.mark.parametrize("dt", [ls.float64, ls.float32])
@pytest.mark.parametrize("shape,p", [((7, 5), 0.3), ((3, 1, 9), 0.5), ((1,), 0.9)])
def test_mask_is_the_philox_stream(dt, shape, p):
    x_np = np.random.standard_normal(shape)
    x = ls.tensor(x_np, dtype=dt)
    seed, offset = ls.get_rng_state()
    y = F.dropout(x, p)
    n = int(np.prod(shape))
    assert ls.get_rng_state() == (seed, offset + (n + 3) // 4)
    keep = philox_keep(seed, offset, n, p).reshape(shape)
    scale = np.array(1.0 / (1.0 - p)).astype(x.numpy().dtype)
    np.testing.assert_array_equal(y.numpy(), np.where(keep, x.numpy() * scale, 0))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_statistics(p):
    n = 100_003
    y = F.dropout(ls.ones(n, dtype=ls.float64), p).numpy()
    kept = y != 0
    # 5 binomial standard deviations
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)


def test_same_seed_same_mask_and_fresh_masks_otherwise():
    x = ls.tensor(np.random.standard_normal(257), dtype=ls.float32)
    ls.manual_seed(123)
    a = F.dropout(x, 0.5).numpy()
    b = F.dropout(x, 0.5).numpy()
    ls.manual_seed(123)
    c = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("dt", [ls.float64, ls.float32])
def test_backward_uses_the_forward_mask(dt):
    p = 0.35
    x_np = np.random.standard_normal((6, 13)) + 3.0  # away from zero, so y != 0 marks kept elements
    g_np = np.random.standard_normal((6, 13))
    x = ls.tensor(x_np, dtype=dt, requires_grad=True)
    y = F.dropout(x, p)
    y.backward(ls.tensor(g_np, dtype=dt))
    keep = y.detach().numpy() != 0
    scale = np.array(1.0 / (1.0 - p)).astype(x.detach().numpy().dtype)
    np.testing.assert_array_equal(x.grad.numpy(), np.where(keep, ls.tensor(g_np, dtype=dt).numpy() * scale, 0))


def test_identity_and_p_one():
    x = ls.tensor(np.random.standard_normal((3, 4)), dtype=ls.float64, requires_grad=True)
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.detach().numpy(), np.zeros((3, 4)))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, 4)))


def test_non_contiguous_and_empty():
    base = ls.tensor(np.random.standard_normal((4, 6)), dtype=ls.float64)
    xt = base.transpose(0, 1)
    seed, offset = ls.get_rng_state()
    y = F.dropout(xt, 0.5)
    keep = philox_keep(seed, offset, 24, 0.5).reshape(6, 4)
    np.testing.assert_array_equal(y.numpy(), np.where(keep, xt.numpy() * 2, 0))
    assert F.dropout(ls.zeros(0, 3), 0.5).shape == (0, 3)


def test_bad_inputs():
    x = ls.tensor([1.0, 2.0])
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\]"):
            F.dropout(x, p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        _core.call("dropout", [x], {"p": 2.0, "seed": 0, "offset": 0})
    with pytest.raises(TypeError, match="floating"):
        F.dropout(ls.tensor([1, 2]), 0.5)
