"""Inverted dropout with the llmscratch Philox stream: y = x keep / (1 - p).

    keep[n] = (philox_bits(seed, offset, n) >> 8) >= ceil(p 2^24)        (P(keep) = 1 - p)
    philox_bits(seed, offset, n) = Philox4x32-10(counter = offset + n / 4, key = seed)[n % 4]
    (cpp/core/philox.h; Salmon et al., SC'11)

Shapes: x any shape, N = x.numel(), element n in row-major order.
Registry op (cpp/ops/dropout.cpp): "dropout" {x} attrs p, seed, offset -> {y}. The backward is
the same op on the incoming gradient with the same (p, seed, offset), declared in C++.

Kernel: one program per pointwise_block(dtype) elements (_common: 8 warps, four 16-byte vectors per
thread), one Philox call per counter. _philox4x32_10 runs the rounds, constants and key schedule of
cpp/core/philox.h on counter words (lo, hi, 0, 0) of the 64-bit counter, so the mask equals the CPU
and CUDA masks bit for bit. It is written out rather than taken from tl.randint4x, whose umulhi and
mul per product ptxas mostly kept as two IMADs: as one 64-bit product each is one IMAD.WIDE (80
instead of about 150 multiplies per 16 elements in the sm_90 SASS), and the multiply pipe was the
kernel's busiest. A thread's 16-byte vector holds the elements of one counter (float32) or of two
consecutive ones (16-bit, CTRS = 2); their outputs are joined in that order, so each thread
computes the random words it uses (with one counter per row, triton moved the 16-bit case's words
through shared memory). Every program but the last runs unmasked.
p = 1 drops everything (the 1/(1-p) scale is never applied then).
"""
import math

import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import POINTWISE_WARPS, launch, pointwise_block


@triton.jit
def _philox4x32_10(c0, c1, k0, k1):
    """Philox4x32-10 of counter words (c0, c1, 0, 0) and key (k0, k1), all uint32."""
    c2 = c0 * 0
    c3 = c2
    for _ in tl.static_range(10):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p1 = c2.to(tl.uint64) * 0xCD9E8D57
        c0, c1, c2, c3 = ((p1 >> 32).to(tl.uint32) ^ c1 ^ k0, p1.to(tl.uint32),
                          (p0 >> 32).to(tl.uint32) ^ c3 ^ k1, p0.to(tl.uint32))
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _bits(ctr, k0, k1):
    """(len(ctr), 4): row j holds the four outputs of the int64 counter ctr[j], in order."""
    r0, r1, r2, r3 = _philox4x32_10(ctr.to(tl.uint32), (ctr >> 32).to(tl.uint32), k0, k1)
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (ctr.shape[0], 4))


@triton.jit
def _dropout_tile(X, Y, bits, offs, mask, threshold, scale):
    x = tl.load(X + offs, mask=mask).to(tl.float32)
    keep = (bits >> 8) >= threshold
    tl.store(Y + offs, tl.where(keep, x * scale, 0.0).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dropout_fwd(X, Y, n, seed, offset, threshold, scale, BLOCK: tl.constexpr,
                 CTRS: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    seed = seed.to(tl.uint64)
    k0, k1 = seed.to(tl.uint32), (seed >> 32).to(tl.uint32)
    ctr = offset + start // 4 + CTRS * tl.arange(0, BLOCK // (4 * CTRS))
    if CTRS == 2:  # element 8 i + 4 h + l <- output l of counter ctr[i] + h
        pair = tl.join(_bits(ctr, k0, k1), _bits(ctr + 1, k0, k1))  # (BLOCK / 8, 4, 2)
        bits = tl.reshape(tl.permute(pair, (0, 2, 1)), (BLOCK,))
    else:
        bits = tl.reshape(_bits(ctr, k0, k1), (BLOCK,))
    X, Y = X + start, Y + start
    offs = tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _dropout_tile(X, Y, bits, offs, None, threshold, scale)
    else:
        _dropout_tile(X, Y, bits, offs, offs < n - start, threshold, scale)


def dropout_forward(inputs, attrs):
    p = float(attrs.get("p", 0.5))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    seed, offset = int(attrs["seed"]), int(attrs["offset"])
    x = inputs[0].contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        block = pointwise_block(x.dtype)
        launch(_dropout_fwd, (triton.cdiv(n, block),),
               x, y, n, seed, offset, int(math.ceil(p * 16777216.0)),
               1.0 / (1.0 - p) if p < 1.0 else 0.0, BLOCK=block, CTRS=4 // x.element_size(),
               num_warps=POINTWISE_WARPS)
    return [y]


KERNELS = {"dropout": dropout_forward}
CHECKS = {"dropout": lambda inputs, attrs: _core.ops.expect_inputs(inputs, 1, 1, "dropout")}
