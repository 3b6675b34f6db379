"""Inverted dropout with the llmscratch Philox stream: y = x keep / (1 - p).

    keep[n] = (philox_bits(seed, offset, n) >> 8) >= ceil(p 2^24)        (P(keep) = 1 - p)
    philox_bits(seed, offset, n) = Philox4x32-10(counter = offset + n / 4, key = seed)[n % 4]
    (cpp/core/philox.h; Salmon et al., SC'11)

Shapes: x any shape, N = x.numel(), element n in row-major order.
Registry op (cpp/ops/dropout.cpp): "dropout" {x} attrs p, seed, offset -> {y}. The backward is
the same op on the incoming gradient with the same (p, seed, offset), declared in C++.

Kernel: one program per 4 x 256 elements; row j of its (256, 4) tile is one Philox call whose
four outputs are the four lanes, so every counter is computed once. triton's tl.randint4x runs
the same rounds, constants and key schedule as cpp/core/philox.h with counter words (lo, hi, 0,
0) of a 64-bit counter, so the mask equals the CPU and CUDA masks bit for bit.
p = 1 drops everything (the 1/(1-p) scale is never applied then).
"""
import math

import torch
import triton
import triton.language as tl

_GROUPS = 256  # Philox calls (of 4 elements each) per program


@triton.jit
def _dropout_fwd(X, Y, n, seed, offset, threshold, scale, GROUPS: tl.constexpr):
    grp = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)  # counters - offset
    r0, r1, r2, r3 = tl.randint4x(seed, offset + grp, 10)
    lane = tl.arange(0, 4)[None, :]
    bits = tl.where(lane == 0, r0[:, None],
                    tl.where(lane == 1, r1[:, None], tl.where(lane == 2, r2[:, None], r3[:, None])))
    idx = grp[:, None] * 4 + lane  # element n = 4 * counter + lane
    mask = idx < n
    x = tl.load(X + idx, mask=mask, other=0.0).to(tl.float32)
    keep = (bits.to(tl.uint32, bitcast=True) >> 8) >= threshold
    tl.store(Y + idx, tl.where(keep, x * scale, 0.0).to(Y.dtype.element_ty), mask=mask)


def dropout_forward(inputs, attrs):
    p = float(attrs.get("p", 0.5))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    seed, offset = int(attrs["seed"]), int(attrs["offset"])
    x = inputs[0].contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _dropout_fwd[(triton.cdiv(n, 4 * _GROUPS),)](
            x, y, n, seed, offset, int(math.ceil(p * 16777216.0)),
            1.0 / (1.0 - p) if p < 1.0 else 0.0, GROUPS=_GROUPS)
    return [y]


KERNELS = {"dropout": dropout_forward}
