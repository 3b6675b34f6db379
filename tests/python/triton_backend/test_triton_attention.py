"""Triton attention (triton_kernels/attention.py) against torch float64: out, lse and the q, k, v
gradients (the lse gradient included), GQA, causal masks aligned to the bottom right with S > T
and S < T (rows that see no key: out 0, lse -inf), head sizes that are not powers of two,
strided q/k/v views, and the registry ops "attention" / "attention_backward" with backend
"triton".

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set by
the root conftest before triton is imported; float32 and float16 only). On a GPU the cuda-marked tests run
the compiled kernels on bigger shapes in float32, float16 and bfloat16.
(The file name differs from tests/python/ops/test_attention.py so pytest can collect both.)
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import llmscratch as ls  # noqa: E402
import llmscratch.functional as F  # noqa: E402
from triton_check import compiled_only, interpreter_only, kernel_module  # noqa: E402


attn = kernel_module("attention")
needs_descriptors = pytest.mark.skipif(attn.TensorDescriptor is None,
                                       reason="this triton has no tensor descriptors")

# out / lse tolerance; gradients get twice as much
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def reference(q, k, v, causal, scale):
    """float64 out, lse (natural log) with GQA by repeating kv heads; rows with no key: 0, -inf."""
    B, NH, T, HS = q.shape
    S, group = k.shape[2], NH // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    x = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(HS))
    if causal:
        x = x.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T), -math.inf)
    lse = torch.logsumexp(x, -1)
    p = torch.exp(x - lse[..., None]).nan_to_num(nan=0.0)
    return p @ v, lse


def rel(ours, ref):
    """||ours - ref|| / ||ref|| over the finite entries of ref; the infinities must match."""
    ours, ref = ours.detach().cpu().double(), ref.detach().cpu().double()
    assert not torch.isnan(ours).any(), "result contains NaN"
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), fin) and torch.equal(ours[~fin], ref[~fin])
    return ((ours[fin] - ref[fin]).norm() / max(ref[fin].norm().item(), 1e-300)).item()


def inputs(shape, device, strided=False):
    B, NH, NKV, T, S, HS = shape
    if strided:  # (B, T, NH, HS) storage seen as (B, NH, T, HS), as a fused qkv projection gives
        mk = lambda n, L: torch.randn(B, L, n, HS, dtype=torch.float64, device=device).transpose(1, 2)
    else:
        mk = lambda n, L: torch.randn(B, n, L, HS, dtype=torch.float64, device=device)
    return mk(NH, T), mk(NKV, S), mk(NKV, S)


def check_kernels(shape, causal, dtype, device, scale=None, strided=False):
    """attention_forward / attention_backward on dtype inputs against float64 autograd."""
    q, k, v = (t.to(dtype).double().requires_grad_() for t in inputs(shape, device, strided))
    out, lse = reference(q, k, v, causal, scale)
    gout, glse = torch.randn_like(out), torch.randn_like(lse)
    finite = torch.isfinite(lse)
    ((out * gout).sum() + (torch.where(finite, lse, 0) * torch.where(finite, glse, 0)).sum()).backward()

    tq, tk, tv = (t.detach().to(dtype) for t in (q, k, v))
    if strided:
        tq, tk, tv = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (tq, tk, tv))
    o, l = attn.attention_forward(tq, tk, tv, None, causal, scale)
    assert o.dtype == dtype and l.dtype == torch.float32
    assert rel(o, out) < TOL[dtype] and rel(l, lse) < TOL[dtype]
    dq, dk, dv = attn.attention_backward(tq, tk, tv, None, o, l, gout.to(dtype), glse.float(),
                                         causal, scale)
    for ours, ref in ((dq, q.grad), (dk, k.grad), (dv, v.grad)):
        assert ours.dtype == dtype
        assert rel(ours, ref) < 2 * TOL[dtype]
    # results stored as their inputs are: transposed views of (B, T, heads, HS) tensors, which
    # transpose back without a copy, or contiguous
    for x in (o, dq, dk, dv):
        assert (x.transpose(1, 2) if strided else x).is_contiguous()


# (B, NH, NKV, T, S, HS): one element, odd sizes, GQA, multi-query, S > T, S < T (rows with no
# visible key when causal), several blocks, non-power-of-two head sizes
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 4, 2, 7, 7, 5), (1, 6, 1, 9, 9, 3), (2, 2, 1, 5, 11, 16),
          (1, 2, 1, 37, 40, 24), (1, 2, 1, 20, 9, 32), (1, 2, 2, 33, 18, 64)]


@interpreter_only
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_float32_interpreter(shape, causal):
    check_kernels(shape, causal, torch.float32, "cpu")


@interpreter_only
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4], SHAPES[5]])
def test_kernels_float16_interpreter(shape):
    check_kernels(shape, True, torch.float16, "cpu")


# (B, NH, NKV, T, S, HS) for the descriptor (TMA) forward: HS a power of two from 16; S a
# multiple of the interpreter's 16-key tile and not (the masked blocks then read K, V through
# pointers), S > T, S < T with rows that see no key, GQA
TMA_SHAPES = [(1, 2, 1, 40, 48, 32), (2, 2, 2, 21, 21, 16), (1, 4, 2, 24, 50, 32), (1, 2, 1, 37, 21, 16)]


@interpreter_only
@needs_descriptors
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", TMA_SHAPES)
def test_tma_forward_interpreter(shape, causal):
    """The Hopper forward kernel (GPU runs take it for contiguous 16-bit inputs) called directly
    on CPU tensors: out and lse against float64. Then with NaN in every kv head but the first:
    the query heads of the first kv head must not change (its masked tail blocks read K, V
    through pointers, not the descriptor rows that run on into the next head)."""
    B, NH, NKV, T, S, HS = shape
    q, k, v = inputs(shape, "cpu")
    out, lse = reference(q, k, v, causal, None)
    tq, tk, tv = (t.to(torch.float16) for t in (q, k, v))

    def run(tk, tv):
        o = torch.full_like(tq, float("nan"))
        l = torch.full((B, NH, T), float("nan"))
        grid = lambda meta: (-(-T // meta["BLOCK_M"]), B * NH)
        attn._attn_fwd_tma(tq, tk, tv, o, l, grid, 1 / math.sqrt(HS), causal)
        return o, l
    o, l = run(tk, tv)
    assert rel(o, out) < TOL[torch.float16] and rel(l, lse) < TOL[torch.float16]
    if NKV > 1:
        tk[:, 1:], tv[:, 1:] = float("nan"), float("nan")
        o2, l2 = run(tk, tv)
        first = NH // NKV  # query heads that read kv head 0
        assert torch.equal(o2[:, :first], o[:, :first]) and torch.equal(l2[:, :first], l[:, :first])


@interpreter_only
def test_strided_and_scale_interpreter():
    check_kernels((1, 4, 2, 19, 23, 8), True, torch.float32, "cpu", scale=0.3, strided=True)


def fused_qkv_run(device, dtype):
    """q, k, v as (B, heads, T, HS) head slices of one (B, T, NH + 2 NKV, HS) projection, as a
    Transformer hands them over: dq, dk, dv come back as the same views of one buffer, and through
    autograd the split's backward takes that buffer whole (no cat runs); the values against
    float64 autograd."""
    B, NH, NKV, T, HS = 2, 4, 2, 13, 16
    fused = torch.randn(B, T, NH + 2 * NKV, HS, dtype=torch.float64).to(dtype)
    pieces = lambda t: (t[:, :, :NH].transpose(1, 2), t[:, :, NH:NH + NKV].transpose(1, 2),
                        t[:, :, NH + NKV:].transpose(1, 2))
    leaf64 = fused.double().requires_grad_()
    out, _ = reference(*pieces(leaf64), True, None)
    gout = torch.randn_like(out).to(dtype)
    (out * gout.double()).sum().backward()

    tq, tk, tv = pieces(fused.to(device))
    o, l = attn.attention_forward(tq, tk, tv, None, True, None)
    grads = attn.attention_backward(tq, tk, tv, None, o, l, gout.to(device), None, True, None)
    R = (NH + 2 * NKV) * HS
    assert all(g.stride() == (T * R, HS, R, 1) for g in grads)
    size = fused.element_size()
    assert [g.data_ptr() - grads[0].data_ptr() for g in grads] == [0, NH * HS * size, (NH + NKV) * HS * size]

    ls_dtype = getattr(ls, str(dtype).split(".")[-1])
    leaf = ls.tensor(fused.float().numpy(), device=device).to(dtype=ls_dtype).requires_grad_()
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        q, k, v = (p.transpose(1, 2) for p in F.split(leaf, [NH, NKV, NKV], dim=2))
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(
            ls.tensor(gout.float().numpy(), device=device).to(dtype=ls_dtype))
        served = ls.backend_report()
    assert served["attention_backward"] == "triton" and "cat" not in served, served
    assert rel(torch.from_dlpack(leaf.grad), leaf64.grad) < 2 * TOL[dtype]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_qkv_grads_interpreter(dtype):
    fused_qkv_run("cpu", dtype)


def registry_run(shape, causal, device, scale=None):
    """F.scaled_dot_product_attention with backend "triton" (float32), backward through the
    registry's attention_backward, against the float64 reference."""
    q, k, v = (t.float().double().requires_grad_() for t in inputs(shape, "cpu"))
    out, lse = reference(q, k, v, causal, scale)
    gout, glse = torch.randn_like(out), torch.randn_like(lse)
    finite = torch.isfinite(lse)
    ((out * gout).sum() + (torch.where(finite, lse, 0) * torch.where(finite, glse, 0)).sum()).backward()

    lq, lk, lv = (ls.tensor(t.detach().float().numpy(), device=device, requires_grad=True) for t in (q, k, v))
    ls.backend_report(reset=True)
    with ls.backend("triton"):
        o, l = F.scaled_dot_product_attention(lq, lk, lv, is_causal=causal, scale=scale,
                                              causal_align="bottom_right", return_lse=True)
        # rows that see no key have lse = -inf: they are filled with 0 so the loss stays finite
        hidden = ls.tensor((~finite).numpy(), device=device)
        loss = (o * ls.tensor(gout.float().numpy(), device=device)).sum() + \
            (l.masked_fill(hidden, 0.0) * ls.tensor(glse.float().numpy(), device=device)).sum()
        loss.backward()
    served = ls.backend_report()
    assert served["attention"] == "triton" and served["attention_backward"] == "triton", served
    to_t = lambda t: torch.from_dlpack(t.detach())
    assert rel(to_t(o), out) < 2e-5 and rel(to_t(l), lse) < 2e-5
    for ours, ref in ((lq, q), (lk, k), (lv, v)):
        assert rel(to_t(ours.grad), ref.grad) < 4e-5


@interpreter_only
@pytest.mark.parametrize("shape,causal", [((2, 4, 2, 7, 7, 5), False), ((1, 4, 1, 21, 35, 16), True)])
def test_registry_interpreter(shape, causal):
    registry_run(shape, causal, "cpu")


@interpreter_only
def test_a_user_mask_runs_on_the_native_backend():
    base = [t.float().numpy() for t in inputs((1, 2, 2, 4, 4, 8), "cpu")]
    mask = ls.tensor(np.tril(np.ones((4, 4), dtype=bool)))

    def run():
        q, k, v = (ls.tensor(a).requires_grad_() for a in base)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
        return [out.detach().numpy()] + [t.grad.numpy() for t in (q, k, v)]
    ref = run()
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        got = run()
        report = ls.backend_report()
    assert report["attention"] == "cpu" and report["attention_backward"] == "cpu"
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


@interpreter_only
@pytest.mark.parametrize("T,S", [(3, 3), (2, 5), (5, 2), (4, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_head_size_zero_gives_the_cpus_lse(T, S, causal):
    """With no channels every score is 0: lse = log(the keys a query sees), -inf for none (a
    causal row above the bottom-right aligned diagonal), as the CPU op gives."""
    import llmscratch_core as core
    q, k = ls.zeros(1, 2, T, 0), ls.zeros(1, 2, S, 0)
    ref = core.call("attention", [q, k, k], {"causal": causal})
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        got = core.call("attention", [q, k, k], {"causal": causal})
        assert ls.backend_report()["attention"] == "triton"
    assert tuple(got[0].shape) == (1, 2, T, 0)
    np.testing.assert_array_equal(got[1].numpy(), ref[1].numpy())


CUDA_SHAPES = SHAPES + [(2, 8, 2, 257, 300, 128), (1, 4, 4, 1023, 1023, 64), (2, 4, 1, 128, 1000, 80),
                       (1, 2, 2, 300, 100, 128)]


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_kernels_cuda(shape, causal, dtype):
    check_kernels(shape, causal, dtype, "cuda")


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[5], CUDA_SHAPES[-4], CUDA_SHAPES[-1]])
def test_kernels_float32_cuda(shape, causal):
    check_kernels(shape, causal, torch.float32, "cuda")


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_and_scale_cuda(dtype):
    check_kernels((2, 8, 4, 190, 230, 64), True, dtype, "cuda", scale=0.1, strided=True)


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("shape,causal", [((2, 4, 2, 70, 70, 64), False), ((1, 4, 1, 130, 200, 128), True)])
def test_registry_cuda(shape, causal):
    registry_run(shape, causal, "cuda")


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_qkv_grads_cuda(dtype):
    fused_qkv_run("cuda", dtype)
