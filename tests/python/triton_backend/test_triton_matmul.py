"""Triton matmul (triton_kernels/matmul.py) against torch float64: torch.matmul semantics (1-D
promotion, broadcast batch dims), transposed and strided operands read in place, odd shapes,
and the registry op "matmul" with backend "triton", forward and both gradients.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set by
the root conftest before triton is imported; float32 and float16: the interpreter does not do bfloat16). On a
GPU the cuda-marked tests run the compiled kernels on bigger shapes in all three dtypes.
(The file name differs from tests/python/ops/test_matmul.py so pytest can collect both.)
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import llmscratch as ls  # noqa: E402
from triton_check import INTERPRET, compiled_only, interpreter_only, kernel_module  # noqa: E402

mm = kernel_module("matmul")
needs_descriptors = pytest.mark.skipif(mm.TensorDescriptor is None,
                                       reason="this triton has no tensor descriptors")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel(ours, ref):
    ours, ref = ours.detach().cpu().double(), ref.detach().cpu().double()
    assert not torch.isnan(ours).any(), "result contains NaN"
    return ((ours - ref).norm() / max(ref.norm().item(), 1e-300)).item()


def check(a, b, dtype):
    """matmul_forward on a, b (already in dtype, any layout) against float64 torch.matmul."""
    out = mm.matmul_forward(a, b)
    ref = torch.matmul(a.double(), b.double())
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel(out, ref) < TOL[dtype]


# (shape of a, shape of b): 1-D promotion, batch broadcast, a 2-D weight under a batched input
SHAPES = [((1, 1), (1, 1)), ((5, 7), (7, 3)), ((37,), (37, 19)), ((19, 37), (37,)), ((6,), (6,)),
          ((2, 3, 17, 33), (33, 20)), ((2, 1, 9, 8), (3, 8, 5)), ((3, 5, 6), (6,)),
          ((4,), (2, 4, 3)), ((40, 50), (50, 70)), ((3, 0, 4), (4, 5)), ((3, 4), (4, 0))]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_shapes_interpreter(sa, sb, dtype):
    check(torch.randn(sa, dtype=dtype), torch.randn(sb, dtype=dtype), dtype)


@interpreter_only
@pytest.mark.parametrize("sa,sb", [((3, 16), (16, 4101)), ((2, 3, 16), (16, 4101)), ((3, 16), (16, 4103))])
def test_long_odd_rows_are_padded_interpreter(sa, sb):
    """A 16-bit output of 4096 or more columns whose rows are not a multiple of 16 bytes gets rows
    padded to 64 elements (as the CUDA backend's), which a later GEMM reads in place; float32 and
    short rows stay contiguous."""
    a, b = torch.randn(sa, dtype=torch.float16), torch.randn(sb, dtype=torch.float16)
    check(a, b, torch.float16)
    out = mm.matmul_forward(a, b)
    N = sb[-1]
    assert out.stride()[-2:] == ((N + 63) // 64 * 64, 1)
    assert mm.matmul_forward(a.float(), b.float()).is_contiguous()
    assert mm.matmul_forward(a[..., :8], b[:8, :500]).is_contiguous()
    check(out, torch.randn(N, 5, dtype=torch.float16), torch.float16)  # read at its row stride


def strided_cases(device, dtype, big):
    """Views the kernel must read through their strides: transposes, steps, broadcast batches,
    batch strides that do not fold into one (a permuted batch)."""
    n = 2 if not big else 5
    r = lambda *s: torch.randn(*s, device=device, dtype=dtype)
    M, K, N = (19, 21, 17) if not big else (263, 517, 389)
    return [
        (r(K, M).t(), r(N, K).t()),                                # both transposed
        (r(M, 2 * K)[:, ::2], r(K, 3 * N)[:, 1::3]),               # column steps
        (r(n, K, M).transpose(1, 2), r(n, K, N)),                  # batched A^T
        (r(M, n, K).transpose(0, 1), r(N, K).t()),                 # batch stride not outermost
        (r(2, n, M, K).permute(1, 0, 2, 3), r(n, 2, K, N)),        # batch strides do not fold
        (r(1, M, K).expand(n, M, K), r(n, K, N)),                  # stride-0 batch
        (r(n, M, K)[:, ::2], r(K, N)),                             # rows that do not fold
    ]


@interpreter_only
@needs_descriptors
@pytest.mark.parametrize("M,N,K", [(40, 72, 56), (37, 24, 48), (8, 8, 200)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_tma_kernel_interpreter(M, N, K, ta, tb):
    """The Hopper descriptor (TMA) kernel (GPU runs take it for 16-bit GEMMs over 512 x 512
    outputs) called directly on CPU tensors, each operand row- or column-major (a transposed
    view, read in place); edges that are not multiples of the tile."""
    a = torch.randn(K, M, dtype=torch.float16).t() if ta else torch.randn(M, K, dtype=torch.float16)
    b = torch.randn(N, K, dtype=torch.float16).t() if tb else torch.randn(K, N, dtype=torch.float16)
    la, lb = mm._stored(a), mm._stored(b)
    if la is None or lb is None:
        pytest.skip("this layout's outer stride is not a multiple of 16 bytes: the pointer kernel's")
    assert (la == "cols", lb == "cols") == (ta, tb)
    c = torch.full((M, N), float("nan"), dtype=torch.float16)
    mm._launch_tma(a, b, c, ta, tb, 3)
    assert rel(c, a.double() @ b.double()) < TOL[torch.float16]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_interpreter(dtype):
    for a, b in strided_cases("cpu", dtype, big=False):
        check(a, b, dtype)


@interpreter_only
def test_errors_name_the_op():
    with pytest.raises(ValueError, match="matmul"):
        mm.matmul_forward(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(TypeError, match="matmul"):
        mm.matmul_forward(torch.randn(3, 4), torch.randn(4, 6, dtype=torch.float16))


def registry_matmul_grads(sa, sb, device, tol):
    """a @ b through llmscratch with backend "triton", forward and both gradients, against torch
    float64 on the same float32 inputs; the backward's matmuls (g B^T, A^T g) also run in Triton."""
    a64, b64 = torch.randn(sa, dtype=torch.float64), torch.randn(sb, dtype=torch.float64)
    w = torch.randn(torch.matmul(a64, b64).shape, dtype=torch.float64)
    la = ls.tensor(a64.float().numpy(), requires_grad=True, device=device)
    lb = ls.tensor(b64.float().numpy(), requires_grad=True, device=device)
    ls.backend_report(reset=True)
    with ls.backend("triton"):
        out = la @ lb
        (out * ls.tensor(w.float().numpy(), device=device)).sum().backward()
    served = ls.backend_report()
    assert served["matmul"] == "triton", served
    ta = a64.float().double().requires_grad_()
    tb = b64.float().double().requires_grad_()
    ref = torch.matmul(ta, tb)
    (ref * w).sum().backward()
    to_t = lambda t: torch.from_dlpack(t.detach())
    assert rel(to_t(out), ref) < tol
    assert rel(to_t(la.grad), ta.grad) < tol
    assert rel(to_t(lb.grad), tb.grad) < tol


@interpreter_only
@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 3)), ((2, 3, 17, 33), (33, 20)),
                                   ((2, 1, 9, 8), (3, 8, 5)), ((37,), (37, 19)), ((3, 5, 6), (6,))])
def test_registry_forward_and_gradients_interpreter(sa, sb):
    registry_matmul_grads(sa, sb, "cpu", 1e-5)


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sa,sb", SHAPES + [((1023, 1), (1, 127)), ((127, 1023), (1023, 255)),
                                            ((4, 3, 300, 129), (4, 1, 129, 257)),
                                            ((8, 512, 768), (768, 3072)), ((1024, 1024), (1024, 1024))])
def test_shapes_cuda(sa, sb, dtype):
    check(torch.randn(sa, dtype=dtype, device="cuda"), torch.randn(sb, dtype=dtype, device="cuda"), dtype)


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_strided_cuda(dtype):
    for a, b in strided_cases("cuda", dtype, big=True):
        check(a, b, dtype)


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("sa,sb", [((65, 129), (129, 33)), ((2, 3, 170, 65), (65, 200)),
                                   ((3, 1, 90, 64), (2, 64, 31)), ((257,), (257, 3))])
def test_registry_forward_and_gradients_cuda(sa, sb):
    registry_matmul_grads(sa, sb, "cuda", 1e-5)


def bf16_operands(M, K, N, ta, tb):
    """Fresh bf16 a (M, K) and b (K, N) on the GPU, each a transposed view when ta / tb."""
    a = torch.randn(K, M, dtype=torch.bfloat16, device="cuda").t() if ta else \
        torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(N, K, dtype=torch.bfloat16, device="cuda").t() if tb else \
        torch.randn(K, N, dtype=torch.bfloat16, device="cuda")
    return a, b


@pytest.mark.cuda
@compiled_only
@needs_descriptors
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_repeated_problem_launches_the_compiled_kernel_cuda(ta, tb):
    # The second call of a problem skips the autotuner and the JIT (_tma_compiled): fresh data
    # each call, every layout the backward uses, each result against float64.
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the TMA kernel needs sm_90")
    M, K, N = 640, 192, 520
    for _ in range(3):
        check(*bf16_operands(M, K, N, ta, tb), torch.bfloat16)
    assert any(key[2:7] == (M, N, K, ta, tb) for key in mm._tma_compiled)


@pytest.mark.cuda
@compiled_only
@needs_descriptors
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_odd_strides_take_the_padded_tma_path_cuda(ta, tb):
    # K and N odd: no operand's outer stride is a multiple of 16 bytes (GPT-2's 50257-wide logits
    # and their gradient), so A, B and C go through padded copies around the TMA kernel.
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the TMA kernel needs sm_90")
    M, K, N = 700, 333, 611
    check(*bf16_operands(M, K, N, ta, tb), torch.bfloat16)
    assert any(key[2:7] == (M, N, K, ta, tb) for key in mm._tma_compiled)


@pytest.mark.cuda
@compiled_only
@needs_descriptors
def test_compiled_problems_are_bounded_cuda(monkeypatch):
    # Past _TMA_COMPILED_MAX problems the least recently used one is dropped.
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the TMA kernel needs sm_90")
    monkeypatch.setattr(mm, "_tma_compiled", mm.collections.OrderedDict())
    monkeypatch.setattr(mm, "_TMA_COMPILED_MAX", 2)
    problems = [(520 + 8 * i, 192, 520) for i in range(3)]
    for M, K, N in problems[:2] + problems[:1] + problems[2:]:  # the first is used again before the third
        check(*bf16_operands(M, K, N, False, False), torch.bfloat16)
    assert [key[2] for key in mm._tma_compiled] == [problems[0][0], problems[2][0]]


@pytest.mark.parametrize("shape,pad", [((37, 41), 3), ((1, 64, 50), 6), ((5, 1), 7), ((0, 9), 2)])
def test_padded_row_copies(shape, pad):
    # _copy_rows between a view with an odd row stride and one padded to 16 bytes, both ways,
    # bit for bit against torch's copy (3-D views with one batch fold to rows).
    device = "cpu" if INTERPRET else "cuda"
    *lead, C = shape
    src = torch.randn(*lead, C + pad, device=device).to(torch.float16)[..., :C]
    dst = mm._padded(src, copy=False)
    dst.fill_(float("nan"))
    mm._copy_rows(dst, src)
    assert torch.equal(dst, src)
    back = torch.full((*lead, C + 1), float("nan"), device=device, dtype=torch.float16)[..., :C]
    mm._copy_rows(back, dst)
    assert torch.equal(back, src)


def check_bias(a, b, bias, dtype):
    """matmul_forward with a bias against float64 torch (the kernels add it before the store)."""
    out = mm.matmul_forward(a, b, bias)
    ref = torch.matmul(a.double(), b.double()) + bias.double()
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel(out, ref) < TOL[dtype]


@interpreter_only
@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 3)), ((2, 3, 17, 33), (33, 20)), ((2, 9, 8), (2, 8, 5))])
def test_bias_interpreter(sa, sb):
    check_bias(torch.randn(sa), torch.randn(sb), torch.randn(sb[-1]), torch.float32)
    with pytest.raises(ValueError, match="matmul: the bias must be"):
        mm.matmul_forward(torch.randn(sa), torch.randn(sb), torch.randn(sb[-1] + 1))


@pytest.mark.cuda
@compiled_only
@needs_descriptors
@pytest.mark.parametrize("M,K,N", [(640, 192, 520), (700, 333, 611), (37, 41, 29)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bias_cuda(M, K, N, dtype):
    # the TMA kernel (16-bit, over 512 x 512 outputs; padded for odd strides), the pointer kernel
    # (float32, small); twice each, the second through the compiled-kernel cache; a bias at an
    # offset that is not 16-byte aligned as well
    a, b = torch.randn(M, K, dtype=dtype, device="cuda"), torch.randn(K, N, dtype=dtype, device="cuda")
    store = torch.randn(N + 1, dtype=dtype, device="cuda")
    for bias in (store[:N], store[:N], store[1:]):
        check_bias(a, b, bias, dtype)
