"""softmax and log_softmax, forward and backward.

    softmax      y[n] = exp(x[n] - m) / s          m = max_n x[n], s = sum_n exp(x[n] - m)
    log_softmax  y[n] = x[n] - m - log(s)
    softmax backward      dx[n] = y[n] (g[n] - sum_k g[k] y[k])
    log_softmax backward  dx[n] = g[n] - exp(y[n]) sum_k g[k]

Shapes: x viewed as (R, N) rows along the softmax dim: attention scores (B, NH, T, T) -> R =
B*NH*T, N = T; logits (B*T, V). The kernels work on the last dim; another dim is moved last with
a torch copy first (and the result moved back).
Registry ops (cpp/ops/softmax.cpp): "softmax" / "log_softmax" {x} attr dim -> {y};
"softmax_backward" / "log_softmax_backward" {y, g} attr dim -> {dx}.

Kernels: one program per row. A row of up to 4096 is one block: read once, max, one exp per
element, sum, write (the same for the backward: y and g read once). Longer rows are walked in
chunks of 4096: the first pass keeps a running max and rescaled sum per lane (online softmax,
Milakov & Gimelshein 2018), folded into one (m, s) at the end; the second pass writes y; the
backward has one pass for the row dot product (or sum) and one writing dx. float32 arithmetic
for every dtype. A row of all -inf gives NaN, as in torch.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import launch, row_block


@triton.jit
def _softmax_fwd(X, Y, N, LOG: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * N  # points at x[row, :]
    y_row = Y + row * N
    cols = tl.arange(0, BLOCK)
    if ONE_CHUNK:  # the row fits one block: read once, one exp per element
        mask = cols < N
        x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        z = x - tl.max(x, axis=0)  # an all -inf row: NaN, as torch
        e = tl.exp(z)
        s = tl.sum(e, axis=0)
        if LOG:
            y = z - tl.log(s)
        else:
            y = e * (1.0 / s)
        tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=mask)
        return
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for off in tl.range(0, N, BLOCK):
        x = tl.load(x_row + off + cols, mask=off + cols < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes that have seen only -inf keep s = 0 (exp(-inf - -inf) would be NaN)
        seen = m_new > float("-inf")
        s = tl.where(seen, s * tl.exp(m - m_new) + tl.exp(x - m_new), 0.0)
        m = m_new
    m_row = tl.max(m, axis=0)
    s_row = tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - m_row), 0.0), axis=0)
    log_s = tl.log(s_row)
    for off in tl.range(0, N, BLOCK):
        mask = off + cols < N
        x = tl.load(x_row + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            y = x - m_row - log_s
        else:
            y = tl.exp(x - m_row) / s_row
        tl.store(y_row + off + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd(Y, G, DX, N, LOG: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if ONE_CHUNK:  # the row fits one block: y and g read once
        mask = cols < N
        g = tl.load(G + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = g - tl.exp(y) * tl.sum(g, axis=0)
        else:
            dx = y * (g - tl.sum(g * y, axis=0))
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        return
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in tl.range(0, N, BLOCK):
        mask = off + cols < N
        g = tl.load(G + row * N + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            acc += g
        else:
            acc += g * tl.load(Y + row * N + off + cols, mask=mask, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    for off in tl.range(0, N, BLOCK):
        mask = off + cols < N
        g = tl.load(G + row * N + off + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + row * N + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = g - tl.exp(y) * total
        else:
            dx = y * (g - total)
        tl.store(DX + row * N + off + cols, dx.to(DX.dtype.element_ty), mask=mask)


def _dim(op, attrs, ndim):
    """The attr dim of a tensor of ndim dims (a 0-d one takes 0 and -1), wrapped; the native
    kernels' IndexError otherwise."""
    dim = int(attrs["dim"])
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{op}: dimension {dim} is out of range for a tensor of {ndim} dimensions")
    return dim % max(ndim, 1)


def _forward(log):
    def run(inputs, attrs):
        x = inputs[0]
        dim = _dim("log_softmax" if log else "softmax", attrs, x.dim())
        if x.dim() == 0:
            x = x.reshape(1)
        xl = x.movedim(dim, -1).contiguous()  # the softmax dim last
        y = torch.empty_like(xl)
        N = xl.shape[-1]
        if xl.numel():
            block = row_block(N)
            launch(_softmax_fwd, (xl.numel() // N,), xl, y, N, LOG=log, BLOCK=block,
                   ONE_CHUNK=N <= block, num_warps=4 if block <= 1024 else 8)
        return [y.movedim(-1, dim).contiguous().reshape(inputs[0].shape)]
    return run


def _backward(log):
    def run(inputs, attrs):
        y, g = inputs
        shape = y.shape
        dim = _dim("log_softmax_backward" if log else "softmax_backward", attrs, y.dim())
        if y.dim() == 0:
            y, g = y.reshape(1), g.reshape(1)
        yl, gl = y.movedim(dim, -1).contiguous(), g.movedim(dim, -1).contiguous()
        dx = torch.empty_like(yl)
        N = yl.shape[-1]
        if yl.numel():
            block = row_block(N)
            launch(_softmax_bwd, (yl.numel() // N,), yl, gl, dx, N, LOG=log, BLOCK=block,
                   ONE_CHUNK=N <= block, num_warps=4 if block <= 1024 else 8)
        return [dx.movedim(-1, dim).contiguous().reshape(shape)]
    return run


softmax_forward, softmax_backward = _forward(False), _backward(False)
log_softmax_forward, log_softmax_backward = _forward(True), _backward(True)

KERNELS = {"softmax": softmax_forward, "softmax_backward": softmax_backward,
           "log_softmax": log_softmax_forward, "log_softmax_backward": log_softmax_backward}


def _check_backward(op):
    """CHECKS entry of the backwards {y, g}: the CPU and CUDA kernels' errors for a gradient of
    another dtype or shape than the output (the kernel reads g by y's rows)."""
    def check(inputs, attrs):
        _core.ops.expect_inputs(inputs, 2, 2, op)
        _core.ops.check_softmax_backward_args(*inputs, op)
    return check


CHECKS = {op: _check_backward(op) for op in ("softmax_backward", "log_softmax_backward")}
CHECKS.update({op: (lambda name: lambda inputs, attrs: _core.ops.expect_inputs(inputs, 1, 1, name))(op)
               for op in ("softmax", "log_softmax")})
