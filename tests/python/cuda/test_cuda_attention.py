"""CUDA attention (cuda/attention.cu) against the CPU op (cpp/ops/attention.cpp) on the same values:
forward out and lse, and the op attention_backward's dq, dk, dv with a nonzero lse gradient.
bf16/fp16 with HS 64 and 128 take the tensor-core kernels; HS 40, float32 and float64 take the
simple kernels. On Hopper the bf16/fp16 forward is the TMA + wgmma kernel by default and
LLMSCRATCH_ATTENTION=mma selects the mma.sync one: the `kernel` fixture runs the main tests under
both. Skipped without a GPU. (The file name is unique across tests/python: pytest
imports test modules by basename here.)"""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as _core
from conftest import randn, rel_err

pytestmark = pytest.mark.cuda

# dtype -> relative Frobenius tolerance against the float32 (float64) CPU op
TOL = {ls.float32: 1e-5, ls.float64: 1e-12, ls.bfloat16: 2e-2, ls.float16: 5e-3}
TS = [(1, 1), (17, 17), (128, 128), (200, 200), (5, 77)]  # (T, S); T < S is a kv-cache step


def ref_dtype(dtype):
    return ls.float64 if dtype == ls.float64 else ls.float32


def np_of(t):
    t = t.detach().cpu()
    if t.dtype in (ls.bfloat16, ls.float16):
        t = t.to(dtype=ls.float32)
    return t.numpy()


def both(arr, dtype):
    """The same values (rounded to dtype) as a CPU reference tensor and as a GPU tensor."""
    cpu = ls.tensor(arr).to(dtype=dtype)
    return cpu.to(dtype=ref_dtype(dtype)), cpu.cuda()


def poison(*shapes_dtypes):
    """Allocate and drop NaN-filled GPU blocks so the caching allocator hands NaN memory to the
    op's outputs: an element the kernel does not write then fails the comparison."""
    for shape, dtype in shapes_dtypes:
        ls.full(shape, math.nan, dtype=dtype, device="cuda")


@pytest.fixture(params=["default", "mma"])
def kernel(request, monkeypatch):
    """Which bf16/fp16 forward serves: the default (wgmma on Hopper) or the mma.sync one."""
    if request.param == "mma":
        monkeypatch.setenv("LLMSCRATCH_ATTENTION", "mma")
    else:
        monkeypatch.delenv("LLMSCRATCH_ATTENTION", raising=False)
    return request.param


def close(gpu, cpu, tol, what):
    g, c = np_of(gpu), np_of(cpu)
    assert not np.isnan(g).any(), f"{what}: NaN"
    err = rel_err(g, c)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def run(dtype, B, NH, NKV, T, S, HS, causal, scale=None, mask=None, noncontig=False):
    attrs = {"causal": causal}
    if scale is not None:
        attrs["scale"] = scale
    q_c, q_g = both(randn(B, NH, T, HS), dtype)
    k_c, k_g = both(randn(B, NKV, S, HS), dtype)
    v_c, v_g = both(randn(B, NKV, S, HS), dtype)
    if noncontig:  # the same values through (B, T, NH, HS) storage
        q_g = q_g.transpose(1, 2).contiguous().transpose(1, 2)
    m_c = m_g = None
    if mask is not None:
        m_c, m_g = ls.tensor(mask), ls.tensor(mask).cuda()
        if mask.dtype != np.bool_:
            m_c = m_c.to(dtype=ref_dtype(dtype))
    lse_dt = ls.float64 if dtype == ls.float64 else ls.float32
    poison(((B, NH, T, HS), dtype), ((B, NH, T), lse_dt))
    out_g, lse_g = _core.call("attention", [q_g, k_g, v_g, m_g], attrs)
    out_c, lse_c = _core.call("attention", [q_c, k_c, v_c, m_c], attrs)
    assert out_g.dtype == dtype and lse_g.dtype == lse_dt
    tol = TOL[dtype]
    close(out_g, out_c, tol, "out")
    close(lse_g, lse_c, tol, "lse")

    do_c, do_g = both(randn(B, NH, T, HS), dtype)
    dl_c, dl_g = both(randn(B, NH, T), lse_dt)
    poison(((B, NH, T, HS), dtype), ((B, NKV, S, HS), dtype))
    dq_g, dk_g, dv_g = _core.call("attention_backward",
                                  [q_g, k_g, v_g, m_g, out_g, lse_g, do_g, dl_g], attrs)
    dq_c, dk_c, dv_c = _core.call("attention_backward",
                                  [q_c, k_c, v_c, m_c, out_c, lse_c, do_c, dl_c], attrs)
    # gradients see one more rounding of P and dS to 16 bits
    for name, g, c in (("dq", dq_g, dq_c), ("dk", dk_g, dk_c), ("dv", dv_g, dv_c)):
        close(g, c, tol * 1.5, name)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("HS", [64, 128, 40])
@pytest.mark.parametrize("T,S", TS)
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_against_cpu(dtype, HS, T, S, causal, kernel):
    run(dtype, 2, 8, 2, T, S, HS, causal)


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float16])
@pytest.mark.parametrize("HS", [64, 128])
def test_mha_long_and_uneven(dtype, HS, kernel):
    # several 128-row query blocks and 64-key tiles, none full; one kv head per query head
    run(dtype, 1, 3, 3, 333, 333, HS, True)
    run(dtype, 1, 2, 1, 70, 461, HS, True)  # kv cache much longer than the query block


@pytest.mark.parametrize("dtype", list(TOL))
def test_scale_and_noncontiguous(dtype):
    run(dtype, 2, 4, 2, 33, 33, 64, True, scale=0.3, noncontig=True)
    run(dtype, 1, 2, 2, 9, 12, 64, False, scale=-0.2)  # a negative scale takes the simple kernel


@pytest.mark.parametrize("dtype", list(TOL))
def test_user_masks(dtype):
    B, NH, NKV, T, S = 2, 4, 2, 19, 23
    bmask = np.random.default_rng().random((1, NH, T, S)) < 0.7
    bmask[..., 0] = True  # no fully masked row from the mask alone
    run(dtype, B, NH, NKV, T, S, 64, False, mask=bmask)
    run(dtype, B, NH, NKV, T, S, 64, True, mask=bmask)
    fmask = randn(B, 1, 1, S)  # additive, padding style
    run(dtype, B, NH, NKV, T, S, 64, False, mask=fmask)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("HS", [64, 40])
def test_fully_masked_rows(dtype, HS, kernel):
    # causal with T > S: the first T - S rows see no key -> out 0, lse -inf, zero dq, finite grads
    B, NH, T, S = 1, 2, 9, 4
    q = ls.tensor(randn(B, NH, T, HS)).to(dtype=dtype).cuda()
    k = ls.tensor(randn(B, NH, S, HS)).to(dtype=dtype).cuda()
    v = ls.tensor(randn(B, NH, S, HS)).to(dtype=dtype).cuda()
    out, lse = _core.call("attention", [q, k, v, None], {"causal": True})
    o, l = np_of(out), np_of(lse)
    assert np.all(o[:, :, :T - S] == 0) and np.all(np.isneginf(l[:, :, :T - S]))
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(l[:, :, T - S:]))
    do = ls.tensor(randn(B, NH, T, HS)).to(dtype=dtype).cuda()
    dl = ls.tensor(randn(B, NH, T)).to(dtype=lse.dtype).cuda()
    dq, dk, dv = _core.call("attention_backward", [q, k, v, None, out, lse, do, dl], {"causal": True})
    assert np.all(np_of(dq)[:, :, :T - S] == 0)
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(np_of(g)))


def on_hopper():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.get_device_capability()[0] == 9


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float16])
@pytest.mark.parametrize("HS", [64, 128])
@pytest.mark.parametrize("T", [1, 77, 256])
def test_fused_qkv_views(dtype, HS, T, kernel):
    # q, k, v as (B, heads, T, HS) views of one (B, T, NH + 2 NKV, HS) buffer and dout as the
    # transposed view of a (B, T, NH, HS) gradient, as a Transformer hands them over. On Hopper
    # the copy engine reads them in place, out comes back stored (B, T, NH, HS), and dq, dk, dv
    # as the same views of one buffer in the fused layout (which the split's backward takes
    # whole instead of concatenating them).
    B, NH, NKV = 2, 4, 2
    arrs = [randn(B, NH, T, HS), randn(B, NKV, T, HS), randn(B, NKV, T, HS)]
    fused = np.ascontiguousarray(np.concatenate([a.transpose(0, 2, 1, 3) for a in arrs], axis=2))
    g = ls.tensor(fused).to(dtype=dtype).cuda()
    q_g = g[:, :, :NH].transpose(1, 2)
    k_g = g[:, :, NH:NH + NKV].transpose(1, 2)
    v_g = g[:, :, NH + NKV:].transpose(1, 2)
    q_c, k_c, v_c = (ls.tensor(a).to(dtype=dtype).to(dtype=ref_dtype(dtype)) for a in arrs)
    attrs = {"causal": True}
    poison(((B, NH, T, HS), dtype), ((B, NH, T), ls.float32))
    out_g, lse_g = _core.call("attention", [q_g, k_g, v_g, None], attrs)
    out_c, lse_c = _core.call("attention", [q_c, k_c, v_c, None], attrs)
    close(out_g, out_c, TOL[dtype], "out")
    close(lse_g, lse_c, TOL[dtype], "lse")
    do = randn(B, T, NH, HS)
    do_g = ls.tensor(do).to(dtype=dtype).cuda().transpose(1, 2)
    do_c = ls.tensor(np.ascontiguousarray(do.transpose(0, 2, 1, 3))).to(dtype=dtype).to(dtype=ref_dtype(dtype))
    poison(((B, NH, T, HS), dtype), ((B, NKV, T, HS), dtype))
    grads_g = _core.call("attention_backward", [q_g, k_g, v_g, None, out_g, lse_g, do_g], attrs)
    grads_c = _core.call("attention_backward", [q_c, k_c, v_c, None, out_c, lse_c, do_c], attrs)
    for name, gg, c in zip(("dq", "dk", "dv"), grads_g, grads_c):
        close(gg, c, TOL[dtype] * 1.5, name)
    if kernel == "default" and on_hopper():
        R = (NH + 2 * NKV) * HS
        assert out_g.stride() == (T * NH * HS, HS, NH * HS, 1)
        assert all(gg.stride() == (T * R, HS, R, 1) for gg in grads_g)
        assert [gg.data_ptr() - grads_g[0].data_ptr() for gg in grads_g] == \
            [0, NH * HS * dtype.itemsize, (NH + NKV) * HS * dtype.itemsize]
        # through autograd: the fused tensor's gradient holds the pieces as computed (that the
        # split's backward takes them whole, without a copy, is ops/test_concat.py's)
        leaf = g.detach().requires_grad_()
        pieces = F.split(leaf * 1.0, [NH, NKV, NKV], dim=2)
        o = F.scaled_dot_product_attention(*(p.transpose(1, 2) for p in pieces), is_causal=True)
        (o.float() * ls.tensor(do).cuda().transpose(1, 2)).sum().backward()
        parts = F.split(leaf.grad, [NH, NKV, NKV], dim=2)
        for name, part, c in zip(("dq", "dk", "dv"), parts, grads_c):
            close(part.transpose(1, 2), c, TOL[dtype] * 1.5, name + " through autograd")


def test_autograd_bf16():
    # through scaled_dot_product_attention and the tape: lse is float32 for bf16 inputs
    import llmscratch.functional as F
    B, NH, NKV, T, HS = 1, 4, 2, 50, 64
    arrs = [randn(B, NH, T, HS), randn(B, NKV, T, HS), randn(B, NKV, T, HS)]
    g_out, g_lse = randn(B, NH, T, HS), randn(B, NH, T)
    grads = []
    for dtype, dev in ((ls.bfloat16, "cuda"), (ls.float32, "cpu")):
        q, k, v = (ls.tensor(a).to(dtype=ls.bfloat16).to(dtype=dtype).to(device=dev)
                   .requires_grad_() for a in arrs)
        out, lse = F.scaled_dot_product_attention(q, k, v, is_causal=True, return_lse=True)
        go = ls.tensor(g_out).to(dtype=dtype).to(device=dev)
        gl = ls.tensor(g_lse).to(dtype=lse.dtype).to(device=dev)
        ((out * go).sum() + (lse * gl).sum()).backward()
        grads.append([t.grad for t in (q, k, v)])
    for name, g, c in zip(("dq", "dk", "dv"), *grads):
        close(g, c, 3e-2, name)


def test_unsupported_head_size():
    q = ls.tensor(randn(1, 1, 4, 300)).cuda()
    with pytest.raises(NotImplementedError, match="attention: CUDA supports head sizes up to 256"):
        _core.call("attention", [q, q, q, None], {})
