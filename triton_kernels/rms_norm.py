"""rms_norm over the last dim, and its variant fused with the residual add before it
(add_rms_norm), forward and backward (Zhang & Sennrich 2019; LLaMA).

    rstd = 1 / sqrt(sum_c x[c]^2 / C + eps)      y = x rstd w
    backward, with dxhat = g * w and xhat = x rstd:
      dx = rstd (dxhat - xhat mean_c(dxhat xhat))        dw = sum_rows g xhat

Shapes: x (..., C) viewed as (R, C), R = B*T; w (C,) or None; rstd x.shape[:-1].
Registry ops (cpp/ops/rms_norm.cpp): "rms_norm" {x, w?} attr eps -> {y, rstd};
"rms_norm_backward" {g, x, w?, rstd} attr dweight -> {dx, dw}, dw of shape (0,) when not asked.

Kernels: as layer_norm.py. Forward: one program per row held in registers (C <= 65536), one
sum of squares and one scaled store. Backward: a fixed number of programs stride over the rows,
write dx and keep a float32 partial of dw per program; torch sums the (programs, C) partials, so
dw does not depend on scheduling. rstd is float32 for 16-bit x.
Reference: Liger-Kernel's rms_norm (~2.8 TB/s forward on an H100).

add_rms_norm: h = x + r, y = rms_norm(h); backward dx = dr = dh + rms_norm_backward(dy).
Registry ops (cpp/ops/rms_norm.cpp): "add_rms_norm" {x, r, w?} attr eps -> {h, y, rstd};
"add_rms_norm_backward" {dy, dh, h, w?, rstd} attr dweight -> {dx, dw}. The same kernels with a
constexpr flag, as in layer_norm.py.
"""
import torch
import triton
import triton.language as tl

from ._common import check_row, num_programs, row_warps, stat_dtype


@triton.jit
def _rms_norm_fwd(X, RES, H, W, Y, RSTD, C, eps, ADD: tl.constexpr, HAS_W: tl.constexpr,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0)  # x[row, :]
    if ADD:  # normalise h = x + r (RES, H: r[row, :], h[row, :]), rounded as a separate add
        r = tl.load(RES + row * C + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + row * C + cols, x, mask=mask)
    x = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / C + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * C + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd.to(RSTD.dtype.element_ty))


@triton.jit
def _rms_norm_bwd(G, DH, X, W, RSTD, DX, DW_PART, R, C, HAS_DH: tl.constexpr,
                  HAS_W: tl.constexpr, WANT_DW: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    # Rows pid, pid + nprog, ...; the row index is int64 so row * C cannot overflow.
    for i in tl.range(0, tl.cdiv(R - pid, nprog)):
        row = pid.to(tl.int64) + i * nprog
        x = tl.load(X + row * C + cols, mask=mask, other=0.0).to(tl.float32)  # x[row, :]
        g = tl.load(G + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row).to(tl.float32)
        xhat = x * rstd
        if HAS_W:
            dxhat = g * w
        else:
            dxhat = g
        dx = rstd * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=0) / C))
        if HAS_DH:  # add_rms_norm_backward: the residual stream's gradient joins dx
            dx += tl.load(DH + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * C + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += g * xhat
    if WANT_DW:
        tl.store(DW_PART + pid * C + cols, dw, mask=mask)


def _optional(inputs, i):
    return inputs[i].contiguous() if len(inputs) > i and inputs[i] is not None else None


def _forward(op, x, res, w, eps):
    """rms_norm (res None) -> [y, rstd], or add_rms_norm -> [h, y, rstd]."""
    x = x.contiguous()
    C = x.shape[-1]
    check_row(op, C)
    R = x.numel() // C if C else 0
    h = torch.empty_like(x) if res is not None else None
    y = torch.empty_like(x)
    rstd = torch.empty(x.shape[:-1], dtype=stat_dtype(x.dtype), device=x.device)
    if R and C:
        block = triton.next_power_of_2(C)
        _rms_norm_fwd[(R,)](x, res if res is not None else x, h if h is not None else y,
                            w if w is not None else x, y, rstd, C, eps, ADD=res is not None,
                            HAS_W=w is not None, BLOCK=block, num_warps=row_warps(block))
    return ([h] if h is not None else []) + [y, rstd]


def _backward(op, g, dh, x, w, rstd, attrs):
    g, x, rstd = g.contiguous(), x.contiguous(), rstd.contiguous()
    want_dw = bool(attrs.get("dweight", False))
    C = x.shape[-1]
    check_row(op, C)
    R = rstd.numel()
    dx = torch.empty_like(x)
    nprog = num_programs(x.device, R)
    dw_part = torch.zeros((nprog, C) if want_dw else (1,), dtype=torch.float32, device=x.device)
    if R and C:
        block = triton.next_power_of_2(C)
        _rms_norm_bwd[(nprog,)](g, dh if dh is not None else g, x, w if w is not None else x, rstd,
                                dx, dw_part, R, C, HAS_DH=dh is not None, HAS_W=w is not None,
                                WANT_DW=want_dw, BLOCK=block, num_warps=row_warps(block))
    dw = dw_part.sum(0).to(x.dtype) if want_dw else x.new_empty((0,))
    return [dx, dw]


def rms_norm_forward(inputs, attrs):
    return _forward("rms_norm", inputs[0], None, _optional(inputs, 1), float(attrs.get("eps", 1e-6)))


def rms_norm_backward(inputs, attrs):
    g, x, w, rstd = inputs
    return _backward("rms_norm_backward", g, None, x, _optional(inputs, 2), rstd, attrs)


def add_rms_norm_forward(inputs, attrs):
    return _forward("add_rms_norm", inputs[0], inputs[1].contiguous(), _optional(inputs, 2),
                    float(attrs.get("eps", 1e-6)))


def add_rms_norm_backward(inputs, attrs):
    dy, dh, h, w, rstd = inputs
    return _backward("add_rms_norm_backward", dy, dh.contiguous(), h, _optional(inputs, 3), rstd, attrs)


KERNELS = {"rms_norm": rms_norm_forward, "rms_norm_backward": rms_norm_backward,
           "add_rms_norm": add_rms_norm_forward, "add_rms_norm_backward": add_rms_norm_backward}
