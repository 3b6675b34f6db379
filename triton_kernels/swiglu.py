"""swiglu, the gated MLP activation of LLaMA (Shazeer 2020), forward and backward.

    y = silu(a) b = a sigmoid(a) b
    da = g b s (1 + a (1 - s)),   db = g a s,   s = sigmoid(a)

Shapes: a and b of one shape, (B, T, H) in an MLP (the two halves of the up projection); any
shape works, elementwise over the flattened contiguous tensors.
Registry ops (cpp/ops/swiglu.cpp): "swiglu" {a, b} -> {y}; "swiglu_backward" {g, a, b} attrs
da, db (which to compute) -> {da, db}, one not asked for has shape (0,).
Fused: the backward reads g, a, b once and writes both gradients in the same pass.

Operands whose rows are each contiguous (a and b as the two halves of one (..., 2 H) projection,
rows 2 H apart) are read in place by the row kernels, one program per (row, block of columns);
contiguous operands take the flat kernels; others are copied first. Outputs are contiguous, but
for a and b the halves of one tensor the backward writes da and db as the same halves of one
buffer, which the split's backward takes whole.

Kernels: one program per pointwise_block(dtype) elements (_common: 8 warps, four 16-byte vectors
per thread and tensor). Every program but the last runs without a mask, which keeps its accesses
16-byte vectors whatever n is (a mask is only known to be uniform over 8 elements when n is a
multiple of 16); the last masks its tail. The block's start moves the pointers (64-bit), the
offsets within a block are 32-bit. float32 arithmetic for every dtype.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import POINTWISE_WARPS, launch, pointwise_block, row_stride


@triton.jit
def _swiglu_fwd_tile(A, B, Y, offs, mask):
    a = tl.load(A + offs, mask=mask).to(tl.float32)
    b = tl.load(B + offs, mask=mask).to(tl.float32)
    tl.store(Y + offs, (a / (1.0 + tl.exp(-a)) * b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    A, B, Y = A + start, B + start, Y + start
    offs = tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _swiglu_fwd_tile(A, B, Y, offs, None)
    else:
        _swiglu_fwd_tile(A, B, Y, offs, offs < n - start)


@triton.jit
def _swiglu_bwd_tile(G, A, B, DA, DB, offs, mask, WANT_DA: tl.constexpr, WANT_DB: tl.constexpr):
    a = tl.load(A + offs, mask=mask).to(tl.float32)
    b = tl.load(B + offs, mask=mask).to(tl.float32)
    g = tl.load(G + offs, mask=mask).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-a))
    if WANT_DA:
        tl.store(DA + offs, (g * b * s * (1.0 + a * (1.0 - s))).to(DA.dtype.element_ty), mask=mask)
    if WANT_DB:
        tl.store(DB + offs, (g * a * s).to(DB.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(G, A, B, DA, DB, n, WANT_DA: tl.constexpr, WANT_DB: tl.constexpr,
                BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    G, A, B, DA, DB = G + start, A + start, B + start, DA + start, DB + start
    offs = tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _swiglu_bwd_tile(G, A, B, DA, DB, offs, None, WANT_DA, WANT_DB)
    else:
        _swiglu_bwd_tile(G, A, B, DA, DB, offs, offs < n - start, WANT_DA, WANT_DB)


@triton.jit
def _swiglu_rows_fwd(A, B, Y, C, lda, ldb, BLOCK: tl.constexpr):
    # row r of a, b (strides lda, ldb) -> row r of the contiguous y
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    _swiglu_fwd_tile(A + r * lda, B + r * ldb, Y + r * C, offs, offs < C)


@triton.jit
def _swiglu_rows_bwd(G, A, B, DA, DB, C, ldg, lda, ldb, ldd, WANT_DA: tl.constexpr,
                     WANT_DB: tl.constexpr, BLOCK: tl.constexpr):
    # row r of g, a, b (their strides) -> rows r of da, db (rows ldd apart: C, or 2 C for the
    # halves of one buffer)
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    _swiglu_bwd_tile(G + r * ldg, A + r * lda, B + r * ldb, DA + r * ldd, DB + r * ldd, offs,
                     offs < C, WANT_DA, WANT_DB)


def _row_strides(ts):
    """The row strides of ts (one shape) for the row kernels, or None: when all are contiguous
    (the flat kernels serve them) or one of them has no row layout (copied contiguous first)."""
    if all(t.is_contiguous() for t in ts):
        return None
    strides = [row_stride(t) for t in ts]
    return None if any(ld is None for ld in strides) else strides


def swiglu_forward(inputs, attrs):
    a, b = inputs  # of one shape and dtype (CHECKS)
    y = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    n = a.numel()
    lds = _row_strides([a, b])
    if n and lds is not None:
        C = a.shape[-1]
        block = min(pointwise_block(a.dtype), triton.next_power_of_2(C))
        launch(_swiglu_rows_fwd, (n // C, triton.cdiv(C, block)), a, b, y, C, *lds, BLOCK=block,
               num_warps=POINTWISE_WARPS)
        return [y]
    a, b = a.contiguous(), b.contiguous()
    if n:
        block = pointwise_block(a.dtype)
        launch(_swiglu_fwd, (triton.cdiv(n, block),), a, b, y, n, BLOCK=block, num_warps=POINTWISE_WARPS)
    return [y]


def _halves(a, b):
    """Whether a and b are the two adjacent halves of one (..., 2 C) tensor's last dim, as a split
    of a fused projection makes them (same strides, rows 2 C apart, b starting C elements after
    a)."""
    C = a.shape[-1]
    return (a.dim() >= 2 and a.stride() == b.stride() and a.stride(-1) == 1 and a.stride(-2) == 2 * C
            and b.data_ptr() == a.data_ptr() + C * a.element_size())


def _separate_gradients(a, want_da, want_db):
    """Contiguous da, db of a's shape; shape (0,) for one not asked for."""
    return [torch.empty(a.shape, dtype=a.dtype, device=a.device) if want else a.new_empty((0,))
            for want in (want_da, want_db)]


def swiglu_backward(inputs, attrs):
    g, a, b = inputs  # of one shape and dtype (CHECKS)
    want_da, want_db = bool(attrs.get("da", True)), bool(attrs.get("db", True))
    n = a.numel()
    lds = _row_strides([g, a, b])
    if n and lds is not None and (want_da or want_db):
        C = a.shape[-1]
        if want_da and want_db and _halves(a, b):
            # the gradients as the same halves of one buffer: the wrapper hands them back as views
            # of one tensor (ONE_BUFFER_OUTPUTS below), and the split's backward then takes them
            # whole (concat.cpp) instead of concatenating them
            both = torch.empty((*a.shape[:-1], 2 * C), dtype=a.dtype, device=a.device)
            da, db, ldd = both[..., :C], both[..., C:], 2 * C
        else:
            (da, db), ldd = _separate_gradients(a, want_da, want_db), C
        block = min(pointwise_block(a.dtype), triton.next_power_of_2(C))
        launch(_swiglu_rows_bwd, (n // C, triton.cdiv(C, block)), g, a, b, da if want_da else a,
               db if want_db else a, C, *lds, ldd, WANT_DA=want_da, WANT_DB=want_db, BLOCK=block,
               num_warps=POINTWISE_WARPS)
        return [da, db]
    da, db = _separate_gradients(a, want_da, want_db)
    g, a, b = g.contiguous(), a.contiguous(), b.contiguous()
    if n and (want_da or want_db):
        block = pointwise_block(a.dtype)
        launch(_swiglu_bwd, (triton.cdiv(n, block),), g, a, b, da if want_da else a, db if want_db else a,
               n, WANT_DA=want_da, WANT_DB=want_db, BLOCK=block,
               num_warps=POINTWISE_WARPS)
    return [da, db]


KERNELS = {"swiglu": swiglu_forward, "swiglu_backward": swiglu_backward}
# the CPU and CUDA kernels' checks (one floating dtype and shape; the gradient's dtype and shape too)
CHECKS = {"swiglu": lambda inputs, attrs: (_core.ops.expect_inputs(inputs, 2, 2, "swiglu"),
                                           _core.ops.check_swiglu_args(inputs[0], inputs[1])),
          "swiglu_backward": lambda inputs, attrs: _core.ops.check_swiglu_backward_args(inputs)}
ONE_BUFFER_OUTPUTS = {"swiglu_backward"}  # da, db as the halves of one buffer (see _halves)
