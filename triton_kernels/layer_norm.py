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

Kernels: _norm.py's forward and backward, centred (shared with rms_norm.py).

add_layer_norm: h = x + r, y = layer_norm(h); backward dx = dr = dh + layer_norm_backward(dy).
Registry ops (cpp/ops/layer_norm.cpp): "add_layer_norm" {x, r, w?, b?} attr eps ->
{h, y, mean, rstd}; "add_layer_norm_backward" {dy, dh, h, w?, mean, rstd} attrs dweight, dbias
-> {dx, dw, db}. The same kernels with a constexpr flag (ADD forward, HAS_DH backward).
"""
from ._norm import backward, check_backward, check_forward, forward, optional


def layer_norm_forward(inputs, attrs):
    return forward("layer_norm", inputs[0], None, optional(inputs, 1), optional(inputs, 2),
                   float(attrs.get("eps", 1e-5)), centered=True)


def layer_norm_backward(inputs, attrs):
    g, x, w, mean, rstd = inputs
    return backward("layer_norm_backward", g, None, x, optional(inputs, 2), mean, rstd, attrs)


def add_layer_norm_forward(inputs, attrs):
    return forward("add_layer_norm", inputs[0], inputs[1].contiguous(), optional(inputs, 2),
                   optional(inputs, 3), float(attrs.get("eps", 1e-5)), centered=True)


def add_layer_norm_backward(inputs, attrs):
    dy, dh, h, w, mean, rstd = inputs
    return backward("add_layer_norm_backward", dy, dh.contiguous(), h, optional(inputs, 3),
                    mean, rstd, attrs)


KERNELS = {"layer_norm": layer_norm_forward, "layer_norm_backward": layer_norm_backward,
           "add_layer_norm": add_layer_norm_forward, "add_layer_norm_backward": add_layer_norm_backward}
CHECKS = {"layer_norm": check_forward("layer_norm", False), "layer_norm_backward": check_backward("layer_norm_backward", False, 2),
          "add_layer_norm": check_forward("add_layer_norm", True),
          "add_layer_norm_backward": check_backward("add_layer_norm_backward", True, 2)}
