"""scaled_dot_product_attention forward, lse and the q/k/v gradients against torch SDPA."""
import math

import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(ls.float64, torch.float64, 1e-10), (ls.float32, torch.float32, 2e-5)]
# (B, NH, NKV, T, S, HS): odd sizes, GQA, multi-query, kv longer than queries, several 64-row blocks
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 3, 5, 5, 7), (2, 4, 2, 7, 7, 5), (1, 6, 1, 9, 9, 3),
          (2, 2, 1, 5, 11, 4), (1, 2, 2, 67, 70, 8)]


def causal_mask(T, S):
    """Bottom-right aligned: query t sees keys s <= t + (S - T)."""
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)


def torch_sdpa(q, k, v, mask, causal, scale):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    T, S = q.shape[2], k.shape[2]
    if causal:
        cm = causal_mask(T, S)
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask & cm
        else:
            mask = mask.masked_fill(~cm, -math.inf)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    x = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        x = x.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else x + mask
    return out, torch.logsumexp(x, dim=-1)


def run_both(shape, dt, tdt, causal, mask_np=None, scale=None):
    rng = np.random.default_rng()
    B, NH, NKV, T, S, HS = shape
    arrs = [rng.standard_normal(s) for s in ((B, NH, T, HS), (B, NKV, S, HS), (B, NKV, S, HS))]
    g_out, g_lse = rng.standard_normal((B, NH, T, HS)), rng.standard_normal((B, NH, T))

    q, k, v = (ls.tensor(a, dtype=dt, requires_grad=True) for a in arrs)
    mask = None
    if mask_np is not None:
        mask = ls.from_numpy(mask_np) if mask_np.dtype == np.bool_ else ls.tensor(mask_np, dtype=dt)
    out, lse = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              causal_align="bottom_right", return_lse=True)
    loss = (out * ls.tensor(g_out, dtype=dt)).sum() + (lse * ls.tensor(g_lse, dtype=dt)).sum()
    loss.backward()

    tq, tk, tv = (torch.tensor(a, dtype=tdt, requires_grad=True) for a in arrs)
    tmask = None if mask_np is None else torch.tensor(mask_np, dtype=torch.bool if mask_np.dtype == np.bool_ else tdt)
    tout, tlse = torch_sdpa(tq, tk, tv, tmask, causal, scale)
    tloss = (tout * torch.tensor(g_out, dtype=tdt)).sum() + (tlse * torch.tensor(g_lse, dtype=tdt)).sum()
    tloss.backward()
    return (out, lse, q, k, v), (tout, tlse, tq, tk, tv)


def check(ours, ref, tol):
    out, lse, q, k, v = ours
    tout, tlse, tq, tk, tv = ref
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(lse.detach().numpy(), tlse.detach().numpy(), rtol=tol, atol=tol)
    for a, b in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(dt, tdt, tol, causal, shape):
    check(*run_both(shape, dt, tdt, causal), tol)


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_bool_mask_broadcast(dt, tdt, tol, causal):
    B, NH, NKV, T, S, HS = shape = (2, 4, 2, 6, 6, 5)
    mask = np.random.default_rng().random((1, NH, T, S)) < 0.7
    mask[..., 0] = True  # key 0 is visible to every query: no row is fully masked (torch gives NaN)
    check(*run_both(shape, dt, tdt, causal, mask_np=mask), tol)


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
def test_float_mask_and_scale(dt, tdt, tol):
    B, NH, NKV, T, S, HS = shape = (2, 3, 1, 4, 7, 6)
    mask = np.random.default_rng().standard_normal((B, 1, 1, S))  # additive, padding-style
    check(*run_both(shape, dt, tdt, False, mask_np=mask, scale=0.3), tol)


@pytest.mark.parametrize("T,S", [(2, 5), (5, 2), (1, 6), (4, 4)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_is_causal_is_torchs_top_left_rule_when_lengths_differ(T, S, mask_kind):
    # query t sees keys s <= t, with or without a mask, forward and gradients against torch
    rng = np.random.default_rng(7)
    arrs = [rng.standard_normal(s) for s in ((2, 4, T, 3), (2, 2, S, 3), (2, 2, S, 3))]
    mask = {None: None, "bool": rng.random((1, 1, T, S)) < 0.8, "float": rng.standard_normal((2, 1, 1, S))}[mask_kind]
    q, k, v = (ls.tensor(a, requires_grad=True) for a in arrs)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else ls.tensor(mask),
                                         is_causal=True, enable_gqa=True)
    out.sum().backward()
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrs)
    ref = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=None if mask is None else torch.tensor(mask), is_causal=True, enable_gqa=True)
    ref.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-10)
    for a, b in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="causal_align must be"):
        F.scaled_dot_product_attention(q, k, v, is_causal=True, causal_align="lower_right")


def test_fully_masked_rows_are_zero_not_nan():
    q = ls.tensor(np.random.standard_normal((1, 2, 5, 4)), dtype=ls.float64, requires_grad=True)
    k = ls.tensor(np.random.standard_normal((1, 2, 3, 4)), dtype=ls.float64, requires_grad=True)
    v = ls.tensor(np.random.standard_normal((1, 2, 3, 4)), dtype=ls.float64, requires_grad=True)
    out, lse = F.scaled_dot_product_attention(q, k, v, is_causal=True, causal_align="bottom_right",
                                              return_lse=True)  # T > S
    o, l = out.detach().numpy(), lse.detach().numpy()
    assert np.all(o[:, :, :2] == 0) and np.all(np.isneginf(l[:, :, :2]))
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(l[:, :, 2:]))
    out.sum().backward()
    assert np.all(q.grad.numpy()[:, :, :2] == 0) and np.all(np.isfinite(k.grad.numpy()))


def test_bad_inputs():
    def t(*shape, dt=ls.float32):
        return ls.tensor(np.random.standard_normal(shape), dtype=dt)

    q, k = t(1, 3, 4, 5), t(1, 2, 4, 5)
    with pytest.raises(ValueError, match=r"attention: the number of query heads \(3\) must be a multiple"):
        F.scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\) does not broadcast"):
        F.scaled_dot_product_attention(q, t(1, 1, 3, 5), t(1, 1, 3, 5), attn_mask=t(3, 4))
    with pytest.raises(TypeError, match="dtypes differ"):
        F.scaled_dot_product_attention(q, t(1, 1, 4, 5, dt=ls.float64), t(1, 1, 4, 5, dt=ls.float64))
    with pytest.raises(ValueError, match=r"q must be \(B, NH, T, HS\)"):
        F.scaled_dot_product_attention(t(3, 4, 5), t(1, 1, 4, 5), t(1, 1, 4, 5))
    with pytest.raises(ValueError, match="k and v shapes differ"):
        F.scaled_dot_product_attention(q, t(1, 1, 4, 5), t(1, 1, 3, 5))
    with pytest.raises(TypeError, match="mask must be bool or float"):
        F.scaled_dot_product_attention(q, t(1, 1, 4, 5), t(1, 1, 4, 5), attn_mask=ls.tensor([[1, 0, 1, 1]]))
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.scaled_dot_product_attention(np.zeros((1, 1, 1, 1)), k, k)


def test_positional_arguments_mean_what_they_mean_in_torch():
    # (q, k, v, attn_mask, dropout_p, is_causal, *, scale, enable_gqa): a positional is_causal
    # had been read from torch's dropout_p place, and a positional scale from is_causal's
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 8))
    q, tq = ls.tensor(x), torch.tensor(x)
    ours = F.scaled_dot_product_attention(q, q, q, None, 0.0, True, scale=0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tq, tq, None, 0.0, True, scale=0.5)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="dropout_p must be 0"):
        F.scaled_dot_product_attention(q, q, q, None, 0.1)
    for bad in (dict(is_causal="no"), dict(enable_gqa=1)):
        with pytest.raises(TypeError, match="must be a bool"):
            F.scaled_dot_product_attention(q, q, q, **bad)
    with pytest.raises(TypeError, match="scale must be a number"):
        F.scaled_dot_product_attention(q, q, q, scale=True)


def test_a_float_mask_that_requires_grad_is_refused():
    # it would get no gradient: a learned bias passed as the mask would silently never train
    q = ls.tensor(np.random.default_rng(1).standard_normal((1, 1, 3, 4)))
    mask = ls.zeros(3, 3, dtype=ls.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="attn_mask gets no gradient"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, q, q, attn_mask=mask.detach()).numpy(),
                               F.scaled_dot_product_attention(q, q, q).numpy(), rtol=1e-12, atol=1e-12)
