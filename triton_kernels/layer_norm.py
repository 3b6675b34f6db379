"""layer_norm over the last dim, forward and backward (Ba et al. 2016).

    mean = sum_c x[c] / C      rstd = 1 / sqrt(sum_c (x[c] - mean)^2 / C + eps)   (biased var)
    y = (x - mean) rstd * w + b
    backward, with xhat = (x - mean) rstd and dxhat = g * w:
      dx = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat))
      dw = sum_rows g xhat       db = sum_rows g

Shapes: x (..., C) viewed as (R, C), R = B*T; w, b (C,) or None; mean, rstd x.shape[:-1].
Registry ops (cpp/ops/layer_norm.cpp): "layer_norm" {x, w?, b?} attr eps -> {y, mean, rstd};
"layer_norm_backward" {g, x, w?, mean, rstd} attrs dweight, dbias -> {dx, dw, db}, a parameter
gradient not asked for has shape (0,).

Kernels: forward, one program per row, the row in registers (C <= 65536): mean, then the
variance as the mean of squared deviations (two passes over registers, no cancellation).
Backward: a fixed number of programs stride over the rows; each writes dx of its rows and keeps
float32 partials of dw/db in registers, stored as one row of a (programs, C) buffer that torch
sums afterwards, so the result does not depend on scheduling (no atomics).
Statistics are float32 for 16-bit x (as torch); arithmetic is float32 throughout.
Reference: Liger-Kernel's layer_norm (same partial-sum scheme for dw/db).
"""
import torch
import triton
import triton.language as tl

from ._common import check_row, num_programs, row_warps, stat_dtype


@triton.jit
def _layer_norm_fwd(X, W, B, Y, MEAN, RSTD, C, eps,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)  # x[row, :]
    mean = tl.sum(x, axis=0) / C
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * C + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean.to(MEAN.dtype.element_ty))
    tl.store(RSTD + row, rstd.to(RSTD.dtype.element_ty))


@triton.jit
def _layer_norm_bwd(G, X, W, MEAN, RSTD, DX, DW_PART, DB_PART, R, C,
                    HAS_W: tl.constexpr, WANT_DW: tl.constexpr, WANT_DB: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    # Rows pid, pid + nprog, ...; the row index is int64 so row * C cannot overflow.
    for i in tl.range(0, tl.cdiv(R - pid, nprog)):
        row = pid.to(tl.int64) + i * nprog
        x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)  # x[row, :]
        g = tl.load(G + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row).to(tl.float32)
        rstd = tl.load(RSTD + row).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        if HAS_W:
            dxhat = g * w
        else:
            dxhat = g
        m1 = tl.sum(dxhat, axis=0) / C
        m2 = tl.sum(dxhat * xhat, axis=0) / C
        dx = rstd * (dxhat - m1 - xhat * m2)
        tl.store(DX + row * C + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += g * xhat
        if WANT_DB:
            db += g
    if WANT_DW:
        tl.store(DW_PART + pid * C + cols, dw, mask=mask)
    if WANT_DB:
        tl.store(DB_PART + pid * C + cols, db, mask=mask)


def layer_norm_forward(inputs, attrs):
    x = inputs[0].contiguous()
    w = inputs[1].contiguous() if len(inputs) > 1 and inputs[1] is not None else None
    b = inputs[2].contiguous() if len(inputs) > 2 and inputs[2] is not None else None
    C = x.shape[-1]
    check_row("layer_norm", C)
    R = x.numel() // C if C else 0
    y = torch.empty_like(x)
    mean = torch.empty(x.shape[:-1], dtype=stat_dtype(x.dtype), device=x.device)
    rstd = torch.empty_like(mean)
    if R and C:
        block = triton.next_power_of_2(C)
        _layer_norm_fwd[(R,)](x, w if w is not None else x, b if b is not None else x, y, mean,
                              rstd, C, float(attrs.get("eps", 1e-5)), HAS_W=w is not None,
                              HAS_B=b is not None, BLOCK=block, num_warps=row_warps(block))
    return [y, mean, rstd]


def layer_norm_backward(inputs, attrs):
    g, x = inputs[0].contiguous(), inputs[1].contiguous()
    w = inputs[2].contiguous() if inputs[2] is not None else None
    mean, rstd = inputs[3].contiguous(), inputs[4].contiguous()
    want_dw, want_db = bool(attrs.get("dweight", False)), bool(attrs.get("dbias", False))
    C = x.shape[-1]
    check_row("layer_norm_backward", C)
    R = mean.numel()
    dx = torch.empty_like(x)
    nprog = num_programs(x.device, R)
    dw_part = torch.zeros((nprog, C) if want_dw else (1,), dtype=torch.float32, device=x.device)
    db_part = torch.zeros((nprog, C) if want_db else (1,), dtype=torch.float32, device=x.device)
    if R and C:
        block = triton.next_power_of_2(C)
        _layer_norm_bwd[(nprog,)](g, x, w if w is not None else x, mean, rstd, dx, dw_part,
                                  db_part, R, C, HAS_W=w is not None, WANT_DW=want_dw,
                                  WANT_DB=want_db, BLOCK=block, num_warps=row_warps(block))
    empty = x.new_empty((0,))
    dw = dw_part.sum(0).to(x.dtype) if want_dw else empty
    db = db_part.sum(0).to(x.dtype) if want_db else empty
    return [dx, dw, db]


KERNELS = {"layer_norm": layer_norm_forward, "layer_norm_backward": layer_norm_backward}
