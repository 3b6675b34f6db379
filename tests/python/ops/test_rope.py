"""rope forward and the gradients of x, cos, sin against torch references written here."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(ls.float64, torch.float64, 1e-12), (ls.float32, torch.float32, 1e-5)]
SHAPES = [(1, 1, 1, 2), (2, 5, 3, 6), (3, 7, 2, 10), (1, 13, 4, 64)]


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def torch_rope(x, cos, sin, interleaved):
    """x (..., T, NH, HS), cos/sin (T, HS/2)."""
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, HS/2): broadcast over heads
    if interleaved:  # Meta LLaMA: channel pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    # Hugging Face LLaMA: x * cos + rotate_half(x) * sin with the tables repeated twice
    return x * torch.cat([c, c], -1) + rotate_half(x) * torch.cat([s, s], -1)


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_grads_match_torch(dt, tdt, tol, interleaved, shape):
    rng = np.random.default_rng()
    B, T, NH, HS = shape
    x_np = rng.standard_normal(shape)
    c_np, s_np = rng.standard_normal((T, HS // 2)), rng.standard_normal((T, HS // 2))
    g_np = rng.standard_normal(shape)

    x, c, s = (ls.tensor(a, dtype=dt, requires_grad=True) for a in (x_np, c_np, s_np))
    y = F.rope(x, c, s, interleaved=interleaved)
    y.backward(ls.tensor(g_np, dtype=dt))

    tx, tc, ts = (torch.tensor(a, dtype=tdt, requires_grad=True) for a in (x_np, c_np, s_np))
    ty = torch_rope(tx, tc, ts, interleaved)
    ty.backward(torch.tensor(g_np, dtype=tdt))

    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    for ours, ref in ((x, tx), (c, tc), (s, ts)):
        np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
def test_rope_cache_and_position_rotation(dt, tdt, tol):
    T, HS, theta = 11, 8, 500.0
    cos, sin = F.rope_cache(T, HS, theta=theta, dtype=dt)
    assert cos.shape == (T, HS // 2) and cos.dtype == dt
    inv_freq = 1.0 / theta ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    np.testing.assert_allclose(cos.numpy(), ang.cos().to(tdt).numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(sin.numpy(), ang.sin().to(tdt).numpy(), rtol=tol, atol=tol)
    # Relative positions: <rope(q)_t, rope(k)_u> depends only on t - u.
    v = np.random.standard_normal((1, 1, 1, HS))
    q = ls.tensor(np.broadcast_to(v, (1, T, 1, HS)).copy(), dtype=ls.float64)
    c64, s64 = F.rope_cache(T, HS, theta=theta, dtype=ls.float64)
    r = F.rope(q, c64, s64).numpy()[0, :, 0]
    np.testing.assert_allclose(r[3] @ r[1], r[9] @ r[7], rtol=1e-12)


def test_leading_dims_and_non_contiguous():
    T, NH, HS = 5, 3, 4
    cos, sin = F.rope_cache(T, HS, dtype=ls.float64)
    x3 = np.random.standard_normal((T, NH, HS))
    ref = torch_rope(torch.tensor(x3), torch.tensor(cos.numpy()), torch.tensor(sin.numpy()), False)
    np.testing.assert_allclose(F.rope(ls.tensor(x3, dtype=ls.float64), cos, sin).numpy(), ref.numpy(), rtol=1e-12)
    base = np.random.standard_normal((2, NH, T, HS))  # (B, NH, T, HS) seen as (B, T, NH, HS)
    x = ls.tensor(base, dtype=ls.float64).transpose(1, 2)
    ref = torch_rope(torch.tensor(base).transpose(1, 2), torch.tensor(cos.numpy()), torch.tensor(sin.numpy()), True)
    np.testing.assert_allclose(F.rope(x, cos, sin, interleaved=True).numpy(), ref.numpy(), rtol=1e-12)


def test_bad_inputs():
    cos, sin = F.rope_cache(4, 6, dtype=ls.float64)
    x = ls.tensor(np.random.standard_normal((1, 4, 2, 6)), dtype=ls.float64)
    with pytest.raises(ValueError, match="HS must be even"):
        F.rope(ls.zeros(1, 4, 2, 5, dtype=ls.float64), cos, sin)
    with pytest.raises(ValueError, match=r"rope: cos and sin must be \(T, HS/2\)"):
        F.rope(ls.zeros(1, 5, 2, 6, dtype=ls.float64), cos, sin)
    with pytest.raises(ValueError, match=r"rope: x must be \(\.\.\., T, NH, HS\)"):
        F.rope(ls.zeros(4, 6, dtype=ls.float64), cos, sin)
    with pytest.raises(TypeError, match="must have x's dtype"):
        F.rope(x.float(), cos, sin)
    with pytest.raises(ValueError, match="positive even"):
        F.rope_cache(4, 7)
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.rope(np.zeros((1, 4, 2, 6)), cos, sin)
