"""silu (swish), forward and backward (Elfwing et al. 2017; Ramachandran et al. 2017).

    y = x sigmoid(x)        dy/dx = s (1 + x (1 - s)),  s = sigmoid(x)

Shapes: any; elementwise over the flattened contiguous tensor, 1024 elements per program.
Registry ops (cpp/ops/silu.cpp): "silu" {x} -> {y}; "silu_backward" {g, x} -> {dx}.
float32 arithmetic for every dtype; sigmoid = 1 / (1 + exp(-x)) is exactly 0 once exp overflows.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, flat_grid, launch


@triton.jit
def _silu_fwd(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = x / (1.0 + tl.exp(-x))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _silu_bwd(G, X, DX, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-x))
    tl.store(DX + offs, (g * s * (1.0 + x * (1.0 - s))).to(DX.dtype.element_ty), mask=mask)


def silu_forward(inputs, attrs):
    x = inputs[0].contiguous()
    y = torch.empty_like(x)
    if x.numel():
        launch(_silu_fwd, flat_grid(x.numel()), x, y, x.numel(), BLOCK=ELEMENTWISE_BLOCK)
    return [y]


def silu_backward(inputs, attrs):
    g, x = inputs[0].contiguous(), inputs[1].contiguous()
    dx = torch.empty_like(x)
    if x.numel():
        launch(_silu_bwd, flat_grid(x.numel()), g, x, dx, x.numel(), BLOCK=ELEMENTWISE_BLOCK)
    return [dx]


KERNELS = {"silu": silu_forward, "silu_backward": silu_backward}
# the CPU and CUDA kernels' checks: one input; {g, x} of one dtype and shape
CHECKS = {"silu": lambda inputs, attrs: _core.ops.expect_inputs(inputs, 1, 1, "silu"),
          "silu_backward": lambda inputs, attrs: _core.ops.check_pointwise_backward_args(inputs, "silu_backward")}
