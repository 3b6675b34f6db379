"""layer_norm over the last dim, and its variant fused with the residual add before it
(add_layer_norm), forward and backward (Ba et al. 2016).

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

add_layer_norm: h = x + r, y = layer_norm(h); backward dx = dr = dh + layer_norm_backward(dy).
Registry ops (cpp/ops/layer_norm.cpp): "add_layer_norm" {x, r, w?, b?} attr eps ->
{h, y, mean, rstd}; "add_layer_norm_backward" {dy, dh, h, w?, mean, rstd} attrs dweight, dbias
-> {dx, dw, db}. The same kernels with a constexpr flag: the forward forms h (rounded to x's
dtype, as a separate add would), stores it and normalises it from registers; the backward adds
dh into dx before its one store.
"""
import torch
import triton
import triton.language as tl

from ._common import check_row, num_programs, row_warps, stat_dtype


@triton.jit
def _layer_norm_fwd(X, RES, H, W, B, Y, MEAN, RSTD, C, eps, ADD: tl.constexpr,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0)  # x[row, :]
    if ADD:  # normalise h = x + r (RES, H: r[row, :], h[row, :])
        r = tl.load(RES + row * C + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + row * C + cols, x, mask=mask)
    x = x.to(tl.float32)
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
def _layer_norm_bwd(G, DH, X, W, MEAN, RSTD, DX, DW_PART, DB_PART, R, C, HAS_DH: tl.constexpr,
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
        if HAS_DH:  # add_layer_norm_backward: the residual stream's gradient joins dx
            dx += tl.load(DH + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * C + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += g * xhat
        if WANT_DB:
            db += g
    if WANT_DW:
        tl.store(DW_PART + pid * C + cols, dw, mask=mask)
    if WANT_DB:
        tl.store(DB_PART + pid * C + cols, db, mask=mask)


def _optional(inputs, i):
    return inputs[i].contiguous() if len(inputs) > i and inputs[i] is not None else None


def _forward(op, x, res, w, b, eps):
    """layer_norm (res None) -> [y, mean, rstd], or add_layer_norm -> [h, y, mean, rstd]."""
    x = x.contiguous()
    C = x.shape[-1]
    check_row(op, C)
    R = x.numel() // C if C else 0
    h = torch.empty_like(x) if res is not None else None
    y = torch.empty_like(x)
    mean = torch.empty(x.shape[:-1], dtype=stat_dtype(x.dtype), device=x.device)
    rstd = torch.empty_like(mean)
    if R and C:
        block = triton.next_power_of_2(C)
        _layer_norm_fwd[(R,)](x, res if res is not None else x, h if h is not None else y,
                              w if w is not None else x, b if b is not None else x, y, mean,
                              rstd, C, eps, ADD=res is not None, HAS_W=w is not None,
                              HAS_B=b is not None, BLOCK=block, num_warps=row_warps(block))
    return ([h] if h is not None else []) + [y, mean, rstd]


def _backward(op, g, dh, x, w, mean, rstd, attrs):
    g, x, mean, rstd = g.contiguous(), x.contiguous(), mean.contiguous(), rstd.contiguous()
    want_dw, want_db = bool(attrs.get("dweight", False)), bool(attrs.get("dbias", False))
    C = x.shape[-1]
    check_row(op, C)
    R = mean.numel()
    dx = torch.empty_like(x)
    nprog = num_programs(x.device, R)
    dw_part = torch.zeros((nprog, C) if want_dw else (1,), dtype=torch.float32, device=x.device)
    db_part = torch.zeros((nprog, C) if want_db else (1,), dtype=torch.float32, device=x.device)
    if R and C:
        block = triton.next_power_of_2(C)
        _layer_norm_bwd[(nprog,)](g, dh if dh is not None else g, x, w if w is not None else x,
                                  mean, rstd, dx, dw_part, db_part, R, C, HAS_DH=dh is not None,
                                  HAS_W=w is not None, WANT_DW=want_dw, WANT_DB=want_db,
                                  BLOCK=block, num_warps=row_warps(block))
    empty = x.new_empty((0,))
    dw = dw_part.sum(0).to(x.dtype) if want_dw else empty
    db = db_part.sum(0).to(x.dtype) if want_db else empty
    return [dx, dw, db]


def layer_norm_forward(inputs, attrs):
    return _forward("layer_norm", inputs[0], None, _optional(inputs, 1), _optional(inputs, 2),
                    float(attrs.get("eps", 1e-5)))


def layer_norm_backward(inputs, attrs):
    g, x, w, mean, rstd = inputs
    return _backward("layer_norm_backward", g, None, x, _optional(inputs, 2), mean, rstd, attrs)


def add_layer_norm_forward(inputs, attrs):
    return _forward("add_layer_norm", inputs[0], inputs[1].contiguous(), _optional(inputs, 2),
                    _optional(inputs, 3), float(attrs.get("eps", 1e-5)))


def add_layer_norm_backward(inputs, attrs):
    dy, dh, h, w, mean, rstd = inputs
    return _backward("add_layer_norm_backward", dy, dh.contiguous(), h, _optional(inputs, 3),
                     mean, rstd, attrs)


KERNELS = {"layer_norm": layer_norm_forward, "layer_norm_backward": layer_norm_backward,
           "add_layer_norm": add_layer_norm_forward, "add_layer_norm_backward": add_layer_norm_backward}
