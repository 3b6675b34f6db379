"""gelu, forward and backward (Hendrycks & Gimpel 2016), two forms (attr approximate):

    "none" (exact):   y = x Phi(x),  Phi(x) = (1 + erf(x / sqrt2)) / 2
                      dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    "tanh" (GPT-2):   y = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
                      dy/dx = s + 2 x s (1 - s) u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 0.044715 x^2)

Shapes: any; elementwise over the flattened contiguous tensor, 1024 elements per program.
Registry ops (cpp/ops/gelu.cpp): "gelu" {x} attr approximate -> {y};
"gelu_backward" {g, x} attr approximate -> {dx}.
float32 arithmetic for every dtype. 1 + tanh(u) is written as 2 sigmoid(2u): one exp, no
cancellation. Limit: Phi uses erf, so for x below about -5 its relative accuracy drops (the
values are below 1e-6 there; the CPU reference uses erfc).
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, flat_grid, launch


@triton.jit
def _gelu_parts(x, TANH: tl.constexpr):
    """(y, dy/dx) at x, float32."""
    if TANH:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        s = 1.0 / (1.0 + tl.exp(-2.0 * u))
        du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
        y = x * s
        dy = s + 2.0 * x * s * (1.0 - s) * du
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
        y = x * cdf
        dy = cdf + x * pdf
    return y, dy


@triton.jit
def _gelu_fwd(X, Y, n, TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y, _ = _gelu_parts(x, TANH)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd(G, X, DX, n, TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    _, d = _gelu_parts(x, TANH)
    tl.store(DX + offs, (g * d).to(DX.dtype.element_ty), mask=mask)


def _tanh_form(attrs, op):
    approx = attrs.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got '{approx}'")
    return approx == "tanh"


def gelu_forward(inputs, attrs):
    tanh = _tanh_form(attrs, "gelu")
    x = inputs[0].contiguous()
    y = torch.empty_like(x)
    if x.numel():
        launch(_gelu_fwd, flat_grid(x.numel()), x, y, x.numel(), TANH=tanh, BLOCK=ELEMENTWISE_BLOCK)
    return [y]


def gelu_backward(inputs, attrs):
    tanh = _tanh_form(attrs, "gelu_backward")
    g, x = inputs[0].contiguous(), inputs[1].contiguous()
    dx = torch.empty_like(x)
    if x.numel():
        launch(_gelu_bwd, flat_grid(x.numel()), g, x, dx, x.numel(), TANH=tanh, BLOCK=ELEMENTWISE_BLOCK)
    return [dx]


KERNELS = {"gelu": gelu_forward, "gelu_backward": gelu_backward}
# the CPU and CUDA kernels' checks: one input; {g, x} of one dtype and shape
CHECKS = {"gelu": lambda inputs, attrs: _core.ops.expect_inputs(inputs, 1, 1, "gelu"),
          "gelu_backward": lambda inputs, attrs: _core.ops.check_pointwise_backward_args(inputs, "gelu_backward")}
