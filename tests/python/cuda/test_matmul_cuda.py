"""The CUDA matmul (cuda/matmul.cu) against float64 products of the same rounded inputs, and its
gradients against the CPU op: every dtype, odd and aligned shapes, all four operand layouts
(transposed views of contiguous tensors), broadcast batches, 1-D operands, views the kernel must
copy first, and more batches than one launch's grid holds. Skipped without a GPU.

bf16/fp16 run on two hand-written kernels: on Hopper the TMA + wgmma kernel serves by default and
LLMSCRATCH_GEMM=mma selects the mma.sync one (the only one elsewhere); the `gemm` fixture runs the
layout, batch and gradient tests under both.

The output's memory is poisoned first: a NaN tensor of the output's size is freed just before the
call, so the caching allocator hands that block to the kernel and an element the kernel fails to
write stays NaN (rel_err rejects NaN)."""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
from conftest import randn, rel_err, to_np

pytestmark = pytest.mark.cuda

# Relative Frobenius error against float64 of the rounded inputs. bf16/fp16 round the output once
# (about 2^-9 and 2^-12 relative); fp32 and fp64 accumulate in their own precision.
TOL = {ls.bfloat16: 1e-2, ls.float16: 2e-3, ls.float32: 1e-5, ls.float64: 1e-12}
HALF = (ls.bfloat16, ls.float16)


def numpy_of(t):
    """float64 numpy copy of any tensor (GPU or CPU, 16-bit included)."""
    t = t.cpu()
    return to_np(t.float() if t.dtype in HALF else t).astype(np.float64)


def operand(shape, dtype, transposed=False, requires_grad=False):
    """A GPU tensor of `shape` in dtype; transposed: a .transpose(-1, -2) view of a contiguous
    tensor, so its last two dims are column-major. Returns (gpu tensor, float64 values)."""
    store = list(shape)
    if transposed:
        store[-1], store[-2] = store[-2], store[-1]
    # values at least 0.25 from 0: a 1 x 1 x 1 product of two draws near 0 is a float16 subnormal
    # (-2.2e-6 once: 0.9% off in float16 against float64), which no tolerance of the kernel covers
    x = randn(*store)
    t = ls.tensor(x + np.where(x >= 0, 0.25, -0.25)).to(dtype=dtype).cuda()
    if transposed:
        t = t.transpose(-1, -2)
    if requires_grad:
        t.requires_grad = True
    return t, numpy_of(t)


@pytest.fixture(params=["default", "mma"])
def gemm(request, monkeypatch):
    """Which bf16/fp16 kernel serves: the default (wgmma on Hopper) or the mma.sync one."""
    if request.param == "mma":
        monkeypatch.setenv("LLMSCRATCH_GEMM", "mma")
    else:
        monkeypatch.delenv("LLMSCRATCH_GEMM", raising=False)
    return request.param


def poison(shape, dtype):
    """Leave a freed NaN block of the output's size at the front of the allocator's cache."""
    nan = ls.full(tuple(shape), math.nan, dtype=dtype, device="cuda")
    ls.cuda.synchronize()
    del nan


def check(out, ref, dtype, tol=None):
    assert out.dtype == dtype
    assert tuple(out.shape) == ref.shape, f"shape {tuple(out.shape)} != {ref.shape}"
    got = numpy_of(out)
    assert np.isfinite(got).all(), "output holds non-finite values"
    err = rel_err(got, ref)
    assert err <= (tol or TOL[dtype]), f"relative error {err:.3e}"


def matmul_checked(a, b, ra, rb, dtype):
    ref = np.matmul(ra, rb)
    poison(ref.shape, dtype)
    out = a @ b
    check(out, ref, dtype)
    return out


# (M, K, N). The last three have more 128 x 256 tiles than an H100/H200 has SMs, so they run the
# big tile config (the others the small one), with tails in M, N and K; (2000, 136, 2104) keeps
# every leading dim a multiple of 8, so all four layouts are read in place; (2000, 1000, 2104)
# has more k-tiles than pipeline stages, so the big tile's stages wrap around.
SHAPES = [(1, 1, 1), (3, 5, 7), (127, 129, 131), (256, 512, 64), (1000, 1023, 17), (129, 72, 264),
          (300, 1000, 600), (2000, 100, 2100), (2000, 136, 2104), (2000, 1000, 2104)]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("mkn", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_layouts(mkn, ta, tb, dtype, gemm):
    M, K, N = mkn
    a, ra = operand((M, K), dtype, ta)
    b, rb = operand((K, N), dtype, tb)
    matmul_checked(a, b, ra, rb, dtype)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("sa,sb", [((2, 3, 64, 80), (80, 96)),      # folds into one GEMM
                                   ((2, 3, 64, 80), (3, 80, 96)),   # B broadcast over dim 0
                                   ((2, 1, 5, 7), (3, 7, 4)),       # both broadcast, 2 batch dims
                                   ((1, 4, 33, 17), (4, 17, 40)),
                                   ((3, 200, 136), (3, 136, 264)),  # one batch stride each
                                   ((5,), (5, 3)), ((4, 5), (5,)), ((6,), (6,)),
                                   ((7,), (2, 7, 3)), ((2, 3, 4), (4,))])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_forward_batched_and_1d(sa, sb, ta, tb, dtype, gemm):
    a, ra = operand(sa, dtype, ta and len(sa) > 1)
    b, rb = operand(sb, dtype, tb and len(sb) > 1)
    ref = np.matmul(ra, rb)
    out = a @ b
    if ref.ndim == 0:  # vector . vector: a 0-d result
        assert tuple(out.shape) == ()
        got = numpy_of(out)
        assert abs(got - ref) <= TOL[dtype] * np.linalg.norm(ra) * np.linalg.norm(rb)
        return
    check(out, ref, dtype)


@pytest.mark.parametrize("dtype", list(TOL))
def test_views_that_need_a_copy(dtype):
    # Stride 2 along K, an odd leading dimension and a base one element off alignment: the
    # tensor-core path copies these first; the SIMT path reads them in place.
    big, rbig = operand((70, 91), dtype)
    a, ra = big[3:, 1::2], rbig[3:, 1::2]    # (67, 45), strides (91, 2), offset 3*91+1
    b, rb = operand((45, 33), dtype, transposed=True)
    matmul_checked(a, b, ra, rb, dtype)
    b2, rb2 = big[1:46, :17], rbig[1:46, :17]  # leading dim 91, offset 91
    matmul_checked(a, b2, ra, rb2, dtype)


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float32])
def test_more_batches_than_one_grid(dtype):
    # 70000 matrices: more than the 65535 blocks one launch's grid z holds.
    a, ra = operand((70000, 3, 5), dtype)
    b, rb = operand((70000, 5, 2), dtype, transposed=True)
    matmul_checked(a, b, ra, rb, dtype)


@pytest.mark.parametrize("dtype", list(TOL))
def test_empty_and_k_zero(dtype):
    a, b = ls.zeros(3, 0, dtype=dtype, device="cuda"), ls.zeros(0, 4, dtype=dtype, device="cuda")
    poison((3, 4), dtype)
    out = a @ b
    assert tuple(out.shape) == (3, 4) and (numpy_of(out) == 0).all()
    out = ls.zeros(0, 5, dtype=dtype, device="cuda") @ ls.zeros(5, 2, dtype=dtype, device="cuda")
    assert tuple(out.shape) == (0, 2)


def test_served_by_cuda():
    a, _ = operand((4, 8), ls.bfloat16)
    ls.backend_report(reset=True)
    a @ a.transpose(-1, -2)
    assert ls.backend_report()["matmul"] == "cuda"


def sum_to(x, shape):
    """Sum a broadcast float64 gradient back down to shape."""
    while x.ndim > len(shape):
        x = x.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and x.shape[i] != 1:
            x = x.sum(i, keepdims=True)
    return x


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("sa,sb", [((3, 5), (5, 7)), ((127, 129), (129, 131)),
                                   ((2, 3, 64, 80), (80, 96)), ((2, 1, 5, 7), (3, 7, 4)),
                                   ((6,), (6, 9)), ((4, 6), (6,))])
@pytest.mark.parametrize("ta", [False, True])
def test_backward(sa, sb, ta, dtype, gemm):
    a, ra = operand(sa, dtype, ta and len(sa) > 1, requires_grad=True)
    b, rb = operand(sb, dtype, False, requires_grad=True)
    out = a @ b
    w = ls.tensor(randn(*out.shape)).to(dtype=dtype).cuda()
    rw = numpy_of(w)
    (out * w).sum().backward()
    # float64 reference: dA = w B^T and dB = A^T w on the 1-D-promoted operands, summed back over
    # broadcast batch dims
    A = ra[None, :] if ra.ndim == 1 else ra
    B = rb[:, None] if rb.ndim == 1 else rb
    W = rw.reshape(np.matmul(A, B).shape)
    ga = sum_to(np.matmul(W, np.swapaxes(B, -1, -2)), A.shape)
    gb = sum_to(np.matmul(np.swapaxes(A, -1, -2), W), B.shape)
    check(a.grad, ga.reshape(ra.shape), dtype)
    check(b.grad, gb.reshape(rb.shape), dtype)
    if dtype in (ls.float32, ls.float64):  # the CPU op on the same values
        ca = ls.tensor(np.ascontiguousarray(ra)).to(dtype=dtype)
        cb = ls.tensor(np.ascontiguousarray(rb)).to(dtype=dtype)
        ca.requires_grad = True
        cb.requires_grad = True
        (ca @ cb * ls.tensor(rw).to(dtype=dtype)).sum().backward()
        assert rel_err(numpy_of(a.grad), numpy_of(ca.grad)) <= TOL[dtype]
        assert rel_err(numpy_of(b.grad), numpy_of(cb.grad)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("sa,sb", [((127, 129), (129, 131)),          # odd N: element stores
                                   ((2, 3, 64, 80), (80, 96)),        # folds into one GEMM
                                   ((2, 64, 40), (2, 40, 72)),        # batched
                                   ((256, 8192), (8192, 256)),        # few tiles, long K: split-K
                                   ((100, 8192), (8192, 131))])       # split-K, odd N: element sums
@pytest.mark.parametrize("tb", [False, True])
def test_bias(sa, sb, tb, dtype, gemm):
    # a @ b + bias in one op (the wgmma kernel adds it in its epilogue, split-K in the sum of the
    # partials; the other kernels add it after), forward against float64 and the bias gradient
    a, ra = operand(sa, dtype, False, requires_grad=True)
    b, rb = operand(sb, dtype, tb, requires_grad=True)
    bias, rbias = operand((sb[-1],), dtype, requires_grad=True)
    ref = np.matmul(ra, rb) + rbias
    poison(ref.shape, dtype)
    out = _core.ops.matmul(a, b, bias)
    check(out, ref, dtype)
    w = ls.tensor(randn(*out.shape)).to(dtype=dtype).cuda()
    (out * w).sum().backward()
    check(bias.grad, numpy_of(w).reshape(-1, sb[-1]).sum(0), dtype)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("sa,sb", [((300, 64), (64, 4101)),         # the small tile
                                   ((2, 150, 64), (64, 4103)),      # folded rows
                                   ((3, 40, 72), (3, 72, 4101)),    # batched
                                   ((300, 768), (768, 50257))])     # GPT-2's output layer
@pytest.mark.parametrize("with_bias", [False, True])
def test_long_odd_rows_are_padded(sa, sb, with_bias, dtype, gemm):
    # A 16-bit output of 4096 or more columns whose rows are not a multiple of 16 bytes gets rows
    # padded to 64 elements (ops::matmul_row_stride; the wgmma kernel stores a row's last 16-byte
    # chunk into the padding), and a product reads it as an operand at that stride; float32 and
    # float64 outputs stay contiguous.
    a, ra = operand(sa, dtype)
    b, rb = operand(sb, dtype)
    N = sb[-1]
    ref = np.matmul(ra, rb)
    if with_bias:
        bias, rbias = operand((N,), dtype)
        ref = ref + rbias
    out = _core.ops.matmul(a, b, bias if with_bias else None)
    check(out, ref, dtype)
    ld = (N + 63) // 64 * 64 if dtype in HALF else N
    assert out.stride()[-2:] == (ld, 1)
    c, rc = operand((N, 24), dtype)
    check(out @ c, np.matmul(numpy_of(out), rc), dtype)
