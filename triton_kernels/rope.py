"""Rotary position embedding (RoPE, Su et al. 2021), forward and backward.

    x (..., T, NH, HS) (any number of leading dims, including none), cos, sin (T, HS/2) with
    cos[t, i] = cos(t theta_i). Pair i of a head's channels (a, b) rotates by angle t theta_i:
        out_a = a cos - b sin,    out_b = a sin + b cos
    interleaved: pairs (2i, 2i+1) (GPT-J, Meta LLaMA); else pairs (i, i + HS/2) (GPT-NeoX, HF).
    attr inverse rotates by -angle. The rotation is orthogonal, so dx is the same op with inverse
    flipped (cpp/ops/rope.cpp's backward calls "rope" again). Gradients of cos and sin, summed
    over the leading dims and the heads:
        dcos[t, i] = sum g_a a + g_b b,    dsin[t, i] = sum g_b a - g_a b   (negated if inverse)

Registry ops: "rope" {x, cos, sin} attrs interleaved, inverse -> {out};
"rope_cos_sin_backward" {g, x} attrs interleaved, inverse -> {dcos, dsin}.
Kernels: forward, one program per block of (leading..., t, head) rows of HS channels (a 2-D tile
of _TILE pairs), x read in place when its heads are adjacent rows of contiguous channels and its
(leading..., t) rows one stride apart (the q and k slices of a fused qkv projection, which were
copied first), out contiguous. cos/sin gradient, one
program per position t summing its (leading, head) rows in a fixed order in float32 registers,
so the result is deterministic.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import launch, row_stride


# Channel pairs per forward program: a program of one row (HS/2 = 64 pairs) is too little work for
# its launch and its 4 warps; this many pairs per program keep every thread busy with several
# loads in flight.
_TILE = 4096


@triton.jit
def _pair_offsets(i, HALF, INTERLEAVED: tl.constexpr):
    if INTERLEAVED:
        ia = 2 * i
        ib = 2 * i + 1
    else:
        ia = i
        ib = i + HALF
    return ia, ib


@triton.jit
def _rope_fwd(X, COS, SIN, OUT, ROWS, T, NH, HALF, RS, SGN, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr,
              ROWS_PER: tl.constexpr):
    # head rows of x, (ROWS, HS): ROWS_PER of them per program, row r at position (r // NH) % T,
    # its (leading..., t) row r // NH at RS elements from the previous one
    rows = tl.program_id(0).to(tl.int64) * ROWS_PER + tl.arange(0, ROWS_PER)
    rt = rows // NH
    t = rt % T
    i = tl.arange(0, BLOCK)
    mask = (rows[:, None] < ROWS) & (i[None, :] < HALF)
    ia, ib = _pair_offsets(i, HALF, INTERLEAVED)
    x_off = (rt * RS + (rows - rt * NH) * 2 * HALF)[:, None]  # x[..., t, h, :] of each row
    row_off = rows[:, None] * 2 * HALF  # out[..., t, h, :]
    cs_off = t[:, None] * HALF + i[None, :]
    a = tl.load(X + x_off + ia[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(X + x_off + ib[None, :], mask=mask, other=0.0).to(tl.float32)
    c = tl.load(COS + cs_off, mask=mask, other=0.0).to(tl.float32)
    s = SGN * tl.load(SIN + cs_off, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row_off + ia[None, :], (a * c - b * s).to(OUT.dtype.element_ty), mask=mask)
    tl.store(OUT + row_off + ib[None, :], (a * s + b * c).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_cos_sin_bwd(G, X, DCOS, DSIN, T, NH, HALF, LEAD, SGN,
                      INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    mask = i < HALF
    ia, ib = _pair_offsets(i, HALF, INTERLEAVED)
    acc_c = tl.zeros([BLOCK], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.range(0, LEAD * NH):
        lead = k // NH
        h = k % NH
        off = ((lead * T + t) * NH + h) * 2 * HALF  # x[lead, t, h, :]
        a = tl.load(X + off + ia, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(X + off + ib, mask=mask, other=0.0).to(tl.float32)
        ga = tl.load(G + off + ia, mask=mask, other=0.0).to(tl.float32)
        gb = tl.load(G + off + ib, mask=mask, other=0.0).to(tl.float32)
        acc_c += ga * a + gb * b
        acc_s += gb * a - ga * b
    tl.store(DCOS + t * HALF + i, acc_c.to(DCOS.dtype.element_ty), mask=mask)
    tl.store(DSIN + t * HALF + i, (SGN * acc_s).to(DSIN.dtype.element_ty), mask=mask)


def _layout(x, op):
    if x.dim() < 3:
        raise ValueError(f"{op}: x must be (..., T, NH, HS), got shape {tuple(x.shape)}")
    T, NH, HS = x.shape[-3:]
    if HS % 2:
        raise ValueError(f"{op}: head size HS must be even, got {HS}")
    return T, NH, HS // 2


def _token_row_stride(x):
    """Elements between the (leading..., t) rows of x (..., T, NH, HS) whose heads are adjacent
    rows of HS contiguous channels, the leading dims folding into those rows; else None."""
    NH, HS = x.shape[-2:]
    if (HS > 1 and x.stride(-1) != 1) or (NH > 1 and x.stride(-2) != HS):
        return None
    return row_stride(x.flatten(-2))  # the heads merged (a view: they are adjacent)


def rope_forward(inputs, attrs):
    x = inputs[0]
    T, NH, half = _layout(x, "rope")
    rs = _token_row_stride(x)
    if rs is None:
        x, rs = x.contiguous(), NH * 2 * half
    cos, sin = inputs[1].contiguous(), inputs[2].contiguous()
    if cos.shape != (T, half) or sin.shape != (T, half):
        raise ValueError(f"rope: cos and sin must be (T, HS/2) = {(T, half)}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x.numel() // (2 * half) if half else 0
    if rows:
        block = triton.next_power_of_2(half)
        rows_per = max(1, min(_TILE // block, triton.next_power_of_2(rows)))
        launch(_rope_fwd, (triton.cdiv(rows, rows_per),), x, cos, sin, out, rows, T, NH, half, rs,
               -1.0 if attrs.get("inverse", False) else 1.0,
               INTERLEAVED=bool(attrs.get("interleaved", False)),
               BLOCK=block, ROWS_PER=rows_per)
    return [out]


def rope_cos_sin_backward(inputs, attrs):
    g, x = inputs[0].contiguous(), inputs[1].contiguous()
    T, NH, half = _layout(x, "rope_cos_sin_backward")
    dcos = torch.empty((T, half), dtype=x.dtype, device=x.device)
    dsin = torch.empty_like(dcos)
    per_lead = T * NH * 2 * half
    lead = x.numel() // per_lead if per_lead else 0
    if T and half:
        launch(_rope_cos_sin_bwd, (T,), g, x, dcos, dsin, T, NH, half, lead,
               -1.0 if attrs.get("inverse", False) else 1.0,
               INTERLEAVED=bool(attrs.get("interleaved", False)),
               BLOCK=triton.next_power_of_2(half))
    return [dcos, dsin]


KERNELS = {"rope": rope_forward, "rope_cos_sin_backward": rope_cos_sin_backward}
# the CPU and CUDA kernels' checks of x, cos and sin (count, dtypes and shapes) and of {g, x}
CHECKS = {"rope": lambda inputs, attrs: _core.ops.check_rope_inputs(inputs),
          "rope_cos_sin_backward": lambda inputs, attrs: _core.ops.check_rope_cos_sin_backward_args(inputs)}
