"""swiglu, the gated MLP activation of LLaMA (Shazeer 2020), forward and backward.

    y = silu(a) b = a sigmoid(a) b
    da = g b s (1 + a (1 - s)),   db = g a s,   s = sigmoid(a)

Shapes: a and b of one shape, (B, T, H) in an MLP (the two halves of the up projection); any
shape works, elementwise, 1024 elements per program.
Registry ops (cpp/ops/swiglu.cpp): "swiglu" {a, b} -> {y}; "swiglu_backward" {g, a, b} attrs
da, db (which to compute) -> {da, db}, one not asked for has shape (0,).
Fused: the backward reads g, a, b once and writes both gradients in the same pass.
"""
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, flat_grid


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a / (1.0 + tl.exp(-a)) * b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(G, A, B, DA, DB, n, WANT_DA: tl.constexpr, WANT_DB: tl.constexpr,
                BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-a))
    if WANT_DA:
        tl.store(DA + offs, (g * b * s * (1.0 + a * (1.0 - s))).to(DA.dtype.element_ty), mask=mask)
    if WANT_DB:
        tl.store(DB + offs, (g * a * s).to(DB.dtype.element_ty), mask=mask)


def _same_shapes(op, *ts):
    if any(t.shape != ts[0].shape for t in ts):
        raise ValueError(f"{op}: shapes {[tuple(t.shape) for t in ts]} differ")


def swiglu_forward(inputs, attrs):
    a, b = inputs[0].contiguous(), inputs[1].contiguous()
    _same_shapes("swiglu", a, b)
    y = torch.empty_like(a)
    if a.numel():
        _swiglu_fwd[flat_grid(a.numel())](a, b, y, a.numel(), BLOCK=ELEMENTWISE_BLOCK)
    return [y]


def swiglu_backward(inputs, attrs):
    g, a, b = (t.contiguous() for t in inputs)
    _same_shapes("swiglu_backward", g, a, b)
    want_da, want_db = bool(attrs.get("da", True)), bool(attrs.get("db", True))
    da = torch.empty_like(a) if want_da else a.new_empty((0,))
    db = torch.empty_like(a) if want_db else a.new_empty((0,))
    if a.numel() and (want_da or want_db):
        _swiglu_bwd[flat_grid(a.numel())](g, a, b, da if want_da else a, db if want_db else a,
                                          a.numel(), WANT_DA=want_da, WANT_DB=want_db,
                                          BLOCK=ELEMENTWISE_BLOCK)
    return [da, db]


KERNELS = {"swiglu": swiglu_forward, "swiglu_backward": swiglu_backward}
