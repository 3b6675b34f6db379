"""rms_norm over the last dim, and its variant fused with the residual add before it
(add_rms_norm), forward and backward (Zhang & Sennrich 2019; LLaMA).

    rstd = 1 / sqrt(sum_c x[c]^2 / C + eps)      y = x rstd w
    backward, with dxhat = g * w and xhat = x rstd:
      dx = rstd (dxhat - xhat mean_c(dxhat xhat))        dw = sum_rows g xhat

Shapes: x (..., C) viewed as (R, C), R = B*T; w (C,) or None; rstd x.shape[:-1].
Registry ops (cpp/ops/rms_norm.cpp): "rms_norm" {x, w?} attr eps -> {y, rstd};
"rms_norm_backward" {g, x, w?, rstd} attr dweight -> {dx, dw}, dw of shape (0,) when not asked.

Kernels: _norm.py's forward and backward without centring (shared with layer_norm.py).
Reference: Liger-Kernel's rms_norm (~2.8 TB/s forward on an H100).

add_rms_norm: h = x + r, y = rms_norm(h); backward dx = dr = dh + rms_norm_backward(dy).
Registry ops (cpp/ops/rms_norm.cpp): "add_rms_norm" {x, r, w?} attr eps -> {h, y, rstd};
"add_rms_norm_backward" {dy, dh, h, w?, rstd} attr dweight -> {dx, dw}. The same kernels with a
constexpr flag (ADD forward, HAS_DH backward).
"""
from ._norm import backward, check_backward, check_forward, forward, optional


def rms_norm_forward(inputs, attrs):
    return forward("rms_norm", inputs[0], None, optional(inputs, 1), None,
                   float(attrs.get("eps", 1e-6)), centered=False)


def rms_norm_backward(inputs, attrs):
    g, x, w, rstd = inputs
    return backward("rms_norm_backward", g, None, x, optional(inputs, 2), None, rstd, attrs)


def add_rms_norm_forward(inputs, attrs):
    return forward("add_rms_norm", inputs[0], inputs[1].contiguous(), optional(inputs, 2), None,
                   float(attrs.get("eps", 1e-6)), centered=False)


def add_rms_norm_backward(inputs, attrs):
    dy, dh, h, w, rstd = inputs
    return backward("add_rms_norm_backward", dy, dh.contiguous(), h, optional(inputs, 3), None,
                    rstd, attrs)


KERNELS = {"rms_norm": rms_norm_forward, "rms_norm_backward": rms_norm_backward,
           "add_rms_norm": add_rms_norm_forward, "add_rms_norm_backward": add_rms_norm_backward}
CHECKS = {"rms_norm": check_forward("rms_norm", False), "rms_norm_backward": check_backward("rms_norm_backward", False, 1),
          "add_rms_norm": check_forward("add_rms_norm", True),
          "add_rms_norm_backward": check_backward("add_rms_norm_backward", True, 1)}
