"""Scaled dot-product attention in Triton, FlashAttention-2 style, forward and backward.

Math (the semantics of cpp/ops/attention.cpp), per batch b and query head h:
    q (B, NH, T, HS), k and v (B, NKV, S, HS), NH % NKV == 0; query head h reads kv head
    h // (NH // NKV) (GQA / multi-query).
    X = scale * Q K^T (T, S), scale defaults to 1/sqrt(HS); causal hides key s > t + (S - T)
    (bottom-right aligned). lse[t] = log sum_s exp(X[t, s]) (natural log), P = exp(X - lse),
    out = P V. A row that sees no key gives out = 0 and lse = -inf.
    Backward, with D[t] = sum_d dO[t, d] O[t, d] - dlse[t]:
    dV = P^T dO, dP = dO V^T, dX = P * (dP - D), dQ = scale dX K, dK = scale dX^T Q.

Forward kernel: one program per (BLOCK_M query rows, b, h). Q stays in registers; K, V blocks
stream through in order with an online softmax in base 2 (running max m, running sum l, the
output accumulator rescaled when m grows), so the (T, S) scores never reach memory. Blocks
entirely left of the causal diagonal run without masks; the diagonal blocks and the ragged
end of S are masked; blocks right of the diagonal are never loaded. The grid is (row blocks,
B * NH): the row blocks of one head run side by side, so its K and V stay in L2 while they
stream (with heads outermost the K, V of all heads compete for L2), and the last row blocks
(the most keys under a causal mask) launch first, so the short blocks fill the tail of the
launch. lse is saved for the backward (float32 for 16-bit inputs: a bf16 lse would put a ~1%
error on every recomputed P).

On Hopper, contiguous 16-bit q, k, v with HS a power of two (16 to 128) take a second forward
kernel, the same algorithm with Q, K, V tiles loaded through tensor descriptors (TMA) over
their (rows, HS) views: whole tiles land in shared memory without per-element addresses or
masks, which frees registers and issue slots for the softmax (B4 NH16 T4096 HS128 causal bf16
on an H200: 0.81x torch SDPA in `python bench/compare_backends.py --device cuda --ops attention`,
bench/results/nvidia-h200-a91ea69/; bench/notes_triton_tuning.md).

Backward: a preprocess kernel computes D (float32, dlse folded in); a dK/dV kernel runs one
program per (BLOCK_N keys, b, kv head) that loops over every query head of its group and every
query block that can see its keys, accumulating dK, dV in registers (so GQA needs no atomics
and no extra sum, and the result is deterministic); a dQ kernel runs one program per
(BLOCK_M query rows, b, h) over the visible key blocks. P is recomputed from q, k and lse.
Both grids put the blocks of one head innermost, as the forward does. Grid dimension 1 is
B * NH (B * NKV), at most 65535.

Operands are read through their strides (no copies of transposed or strided views). out and dq
are stored as q is, dk and dv as k is: (B, T, heads, HS) for the transposed views a Transformer
passes, so that they transpose back without a copy, else contiguous. For q, k, v that are head
slices of one fused (B, T, NH + 2 NKV, HS) projection, dq, dk, dv are the same views of one
buffer, which the split's backward takes whole. HS of any size is padded to the next power of
two (at least 16) inside the kernel, with masked loads.
Tiles are autotuned on the GPU for 16-bit problems of 512 x 512 scores per head or more; smaller
ones and float32 use one config each (fewer compiled variants); under TRITON_INTERPRET=1 one
small tile. Limits: no user mask (a masked call runs on the native backend, SERVES below; the
functions themselves raise NotImplementedError for one); float32,
float16, bfloat16; the tile configs are sized for HS <= 128; CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1.
"""
import math

import torch
import triton
import triton.language as tl

try:  # host-side tensor descriptors (TMA); older triton releases lack them: pointer kernels only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

from . import interpreted
from ._common import dtype_name, launch, sm90_or_later

_LOG2E = 1.4426950408889634


def _fwd_configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3),
                                 (64, 64, 4, 3), (128, 32, 4, 4))]


def _bwd_configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 4, 2), (32, 64, 4, 3))]


def _prune(configs, named_args, **kwargs):
    """Autotune only where it pays: float32 (a test dtype) and problems under 512 x 512 scores per
    head get one config, so a test suite of many shapes compiles few variants."""
    args = {**named_args, **kwargs}
    if len(configs) == 1:
        return configs
    if args["FP32"]:  # small blocks: fp32 tiles take twice the registers and shared memory
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=1)]
    if args["T"] * args["S"] < 512 * 512:
        return configs[:1]
    return configs


@triton.jit
def _visible_keys(m0, T, S, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [0, end) are visible to some row of the query block at m0; keys [0, full_end), a
    multiple of BLOCK_N, to every row of it, so the blocks there need no mask."""
    if CAUSAL:
        end = tl.minimum(tl.maximum(m0 + BLOCK_M + S - T, 0), S)
        full_end = tl.minimum(tl.maximum(m0 + 1 + S - T, 0), S) // BLOCK_N * BLOCK_N
    else:
        end = S
        full_end = S // BLOCK_N * BLOCK_N
    return end, full_end


@triton.jit
def _fwd_block(acc, m_i, l_i, q, k_base, v_base, sks, skd, svs, svd, offs_m, offs_d,
               n_lo, n_hi, S, T, qk_scale, HS: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
               FP32: tl.constexpr):
    """Key blocks [n_lo, n_hi) into the running (acc, m_i, l_i); MASKED applies s < S and causal."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        # kt points at K[b, g, n0 + j, d] laid out (HS, BLOCK_N); v at V[b, g, n0 + j, d]
        kt_ptr = k_base + offs_n[None, :].to(tl.int64) * sks + offs_d[:, None] * skd
        v_ptr = v_base + offs_n[:, None].to(tl.int64) * svs + offs_d[None, :] * svd
        dmask = offs_d < HS
        if MASKED:
            kt = tl.load(kt_ptr, mask=dmask[:, None] & (offs_n[None, :] < S), other=0.0)
        else:
            kt = tl.load(kt_ptr, mask=dmask[:, None], other=0.0)
        if FP32:
            x = tl.dot(q, kt, input_precision="ieee")
        else:
            x = tl.dot(q, kt)
        x = x * qk_scale  # base-2 scores
        if MASKED:
            ok = offs_n[None, :] < S
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + (S - T))
            x = tl.where(ok, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        p = tl.math.exp2(x - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptr, mask=dmask[None, :] & (offs_n[:, None] < S), other=0.0)
        else:
            v = tl.load(v_ptr, mask=dmask[None, :], other=0.0)
        if FP32:
            acc = tl.dot(p, v, acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=_fwd_configs(), key=["T", "S", "HSP", "CAUSAL", "FP32"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                     sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                     sob, soh, sot, sod,
                     NH, GROUP, T, S, qk_scale, HS: tl.constexpr,
                     HSP: tl.constexpr, CAUSAL: tl.constexpr, FP32: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # last rows (most keys) first
    b = bh // NH
    h = bh % NH
    g = h // GROUP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HSP)
    dmask = offs_d < HS
    # q points at Q[b, h, m0 + i, d]
    q_ptrs = (q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
              + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :] * sqd)
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < T) & dmask[None, :], other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + g.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + g.to(tl.int64) * svh

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HSP), tl.float32)
    end, full_end = _visible_keys(m0, T, S, CAUSAL, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, sks, skd, svs, svd, offs_m,
                               offs_d, 0, full_end, S, T, qk_scale, HS, False, CAUSAL, BLOCK_N, FP32)
    acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, sks, skd, svs, svd, offs_m,
                               offs_d, full_end, end, S, T, qk_scale, HS, True, CAUSAL, BLOCK_N, FP32)
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634,
                   float("-inf"))
    o_ptrs = (o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
              + offs_m[:, None].to(tl.int64) * sot + offs_d[None, :] * sod)
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < T) & dmask[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


def _tma_blocks(nargs):
    """Autotune pre-hook: the descriptors' boxes are the config's q and k/v tiles."""
    hsp = nargs["HS"]
    nargs["q_desc"].block_shape = [nargs["BLOCK_M"], hsp]
    nargs["k_desc"].block_shape = [nargs["BLOCK_N"], hsp]
    nargs["v_desc"].block_shape = [nargs["BLOCK_N"], hsp]


def _fwd_tma_configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1,
                              pre_hook=_tma_blocks)]
    # (64, 64, 4 warps, 3 stages) and (128, 128, 8, 3) lead at T = 4096, HS = 128 on an H200
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_tma_blocks)
            for bm, bn, w, s in ((64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3))]


@triton.jit
def _fwd_block_tma(acc, m_i, l_i, q, k_desc, v_desc, k_ptr, v_ptr, kv_row, offs_m, n_lo, n_hi,
                   S, T, qk_scale, HS: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                   EVEN_S: tl.constexpr, BLOCK_N: tl.constexpr):
    """_fwd_block with K, V tiles from descriptors over the (rows, HS) view of k and v. A masked
    block that runs past S would read the next head's rows there: it loads through masked
    pointers instead (a NaN in another head must not reach this one through 0 * NaN)."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if MASKED and not EVEN_S:
            rows = (kv_row + offs_n).to(tl.int64) * HS
            kt = tl.load(k_ptr + rows[None, :] + tl.arange(0, HS)[:, None],
                         mask=offs_n[None, :] < S, other=0.0)
        else:
            kt = k_desc.load([kv_row + n0, 0]).T
        x = tl.dot(q, kt) * qk_scale
        if MASKED:
            ok = offs_n[None, :] < S
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + (S - T))
            x = tl.where(ok, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        if MASKED:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        else:
            m_use = m_new  # every row of an unmasked block sees a key
        p = tl.math.exp2(x - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED and not EVEN_S:
            rows = (kv_row + offs_n).to(tl.int64) * HS
            v = tl.load(v_ptr + rows[:, None] + tl.arange(0, HS)[None, :],
                        mask=offs_n[:, None] < S, other=0.0)
        else:
            v = v_desc.load([kv_row + n0, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=_fwd_tma_configs(), key=["T", "S", "HS", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics({"EVEN_S": lambda a: a["S"] % a["BLOCK_N"] == 0})
@triton.jit
def _attn_fwd_tma_kernel(q_desc, k_desc, v_desc, k_ptr, v_ptr, o_ptr, lse_ptr,
                         NH, NKV, GROUP, T, S, qk_scale, HS: tl.constexpr, CAUSAL: tl.constexpr,
                         FP32: tl.constexpr, EVEN_S: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """_attn_fwd_kernel for contiguous 16-bit q, k, v with HS a power of two: q, k, v are read as
    (B * heads * rows, HS) matrices through tensor descriptors (the copy engine loads whole tiles
    into shared memory). Query rows past T read the next head's rows (or zeros past the end):
    rows are independent and those are never stored."""
    bh = tl.program_id(1)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # last rows (most keys) first
    b = bh // NH
    h = bh % NH
    g = h // GROUP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q = q_desc.load([bh * T + m0, 0])
    kv_row = (b * NKV + g) * S
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HS), tl.float32)
    end, full_end = _visible_keys(m0, T, S, CAUSAL, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _fwd_block_tma(acc, m_i, l_i, q, k_desc, v_desc, k_ptr, v_ptr, kv_row, offs_m,
                                   0, full_end, S, T, qk_scale, HS, False, CAUSAL, EVEN_S, BLOCK_N)
    acc, m_i, l_i = _fwd_block_tma(acc, m_i, l_i, q, k_desc, v_desc, k_ptr, v_ptr, kv_row, offs_m,
                                   full_end, end, S, T, qk_scale, HS, True, CAUSAL, EVEN_S, BLOCK_N)
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634,
                   float("-inf"))
    # o_ptr: contiguous (B, NH, T, HS)
    o_ptrs = o_ptr + (bh.to(tl.int64) * T + offs_m[:, None]) * HS + tl.arange(0, HS)[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < T)
    tl.store(lse_ptr + bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


@triton.jit
def _bwd_preprocess_kernel(o_ptr, do_ptr, dlse_ptr, d_ptr, sob, soh, sot, sod,
                           sdb, sdh, sdt, sdd, NH, T, HS: tl.constexpr,
                           HAS_DLSE: tl.constexpr, HSP: tl.constexpr, BLOCK_M: tl.constexpr):
    """D[b, h, t] = sum_d dO * O - dlse, float32, rows of one (b, h) per program."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HSP)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HS)
    o = tl.load(o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
                + offs_m[:, None].to(tl.int64) * sot + offs_d[None, :] * sod, mask=mask, other=0.0)
    do = tl.load(do_ptr + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
                 + offs_m[:, None].to(tl.int64) * sdt + offs_d[None, :] * sdd, mask=mask, other=0.0)
    d = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        d -= tl.load(dlse_ptr + bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0).to(tl.float32)
    tl.store(d_ptr + bh.to(tl.int64) * T + offs_m, d, mask=offs_m < T)


@triton.autotune(configs=_bwd_configs(), key=["T", "S", "HSP", "CAUSAL", "FP32"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, dk_ptr, dv_ptr,
                          sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                          sdb, sdh, sdt, sdd, sgb, sgh, sgs,
                          NH, NKV, GROUP, T, S, scale, qk_scale, HS: tl.constexpr,
                          HSP: tl.constexpr, CAUSAL: tl.constexpr, FP32: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bg = tl.program_id(1)
    pid_n = tl.program_id(0)  # first keys (seen by most rows) first
    b = bg // NKV
    g = bg % NKV
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HSP)
    dmask = offs_d < HS
    kv_mask = (offs_n[:, None] < S) & dmask[None, :]
    # k, v: K[b, g, n0 + j, d], (BLOCK_N, HSP)
    k = tl.load(k_ptr + b.to(tl.int64) * skb + g.to(tl.int64) * skh
                + offs_n[:, None].to(tl.int64) * sks + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b.to(tl.int64) * svb + g.to(tl.int64) * svh
                + offs_n[:, None].to(tl.int64) * svs + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_N, HSP), tl.float32)
    dv = tl.zeros((BLOCK_N, HSP), tl.float32)
    # the first query row that sees key n0 is t = n0 - (S - T); earlier blocks are skipped
    if CAUSAL:
        m_lo = tl.maximum(n0 - (S - T), 0) // BLOCK_M * BLOCK_M
    else:
        m_lo = 0
    for hh in range(0, GROUP):
        h = g * GROUP + hh
        bh = b * NH + h
        q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = do_ptr + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        for m0 in range(m_lo, T, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < T
            # qt: Q[b, h, m0 + i, d] laid out (HSP, BLOCK_M); do: dO[b, h, m0 + i, d] (BLOCK_M, HSP)
            qt = tl.load(q_base + offs_m[None, :].to(tl.int64) * sqt + offs_d[:, None] * sqd,
                         mask=row_ok[None, :] & dmask[:, None], other=0.0)
            do = tl.load(do_base + offs_m[:, None].to(tl.int64) * sdt + offs_d[None, :] * sdd,
                         mask=row_ok[:, None] & dmask[None, :], other=0.0)
            lse = tl.load(lse_ptr + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
            Di = tl.load(d_ptr + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
            # a row that sees no key (lse = -inf) or lies past T contributes nothing
            lse2 = tl.where(row_ok & (lse != float("-inf")), lse * 1.4426950408889634, float("inf"))
            if FP32:
                xt = tl.dot(k, qt, input_precision="ieee")
            else:
                xt = tl.dot(k, qt)
            pt = tl.math.exp2(xt * qk_scale - lse2[None, :])  # P^T (BLOCK_N, BLOCK_M)
            ok = offs_n[:, None] < S
            if CAUSAL:
                ok = ok & (offs_n[:, None] <= offs_m[None, :] + (S - T))
            pt = tl.where(ok, pt, 0.0)
            if FP32:
                dv = tl.dot(pt, do, dv, input_precision="ieee")
                dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
            else:
                dv = tl.dot(pt.to(do.dtype), do, dv)
                dpt = tl.dot(v, tl.trans(do))
            dst = pt * (dpt - Di[None, :])
            if FP32:
                dk = tl.dot(dst, tl.trans(qt), dk, input_precision="ieee")
            else:
                dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
    # dk_ptr, dv_ptr: (B, NKV, S, HS) at the strides sgb, sgh, sgs, 1 (both)
    at = (b.to(tl.int64) * sgb + g.to(tl.int64) * sgh + offs_n[:, None].to(tl.int64) * sgs
          + offs_d[None, :])
    tl.store(dk_ptr + at, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + at, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_bwd_configs(), key=["T", "S", "HSP", "CAUSAL", "FP32"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, dq_ptr,
                        sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                        sdb, sdh, sdt, sdd, sgb, sgh, sgt,
                        NH, GROUP, T, S, scale, qk_scale, HS: tl.constexpr,
                        HSP: tl.constexpr, CAUSAL: tl.constexpr, FP32: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # last rows (most keys) first
    b = bh // NH
    h = bh % NH
    g = h // GROUP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HSP)
    dmask = offs_d < HS
    row_ok = offs_m < T
    qmask = row_ok[:, None] & dmask[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :] * sqd, mask=qmask, other=0.0)
    do = tl.load(do_ptr + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
                 + offs_m[:, None].to(tl.int64) * sdt + offs_d[None, :] * sdd, mask=qmask, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    Di = tl.load(d_ptr + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    lse2 = tl.where(row_ok & (lse != float("-inf")), lse * 1.4426950408889634, float("inf"))
    k_base = k_ptr + b.to(tl.int64) * skb + g.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + g.to(tl.int64) * svh
    dq = tl.zeros((BLOCK_M, HSP), tl.float32)
    end, _ = _visible_keys(m0, T, S, CAUSAL, BLOCK_M, BLOCK_N)
    for n0 in range(0, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[None, :] < S) & dmask[:, None]
        # kt, vt: K[b, g, n0 + j, d], V[...] laid out (HSP, BLOCK_N)
        kt = tl.load(k_base + offs_n[None, :].to(tl.int64) * sks + offs_d[:, None] * skd,
                     mask=kv_mask, other=0.0)
        vt = tl.load(v_base + offs_n[None, :].to(tl.int64) * svs + offs_d[:, None] * svd,
                     mask=kv_mask, other=0.0)
        if FP32:
            x = tl.dot(q, kt, input_precision="ieee")
            dp = tl.dot(do, vt, input_precision="ieee")
        else:
            x = tl.dot(q, kt)
            dp = tl.dot(do, vt)
        p = tl.math.exp2(x * qk_scale - lse2[:, None])
        ok = offs_n[None, :] < S
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + (S - T))
        ds = tl.where(ok, p * (dp - Di[:, None]), 0.0)
        if FP32:
            dq = tl.dot(ds, tl.trans(kt), dq, input_precision="ieee")
        else:
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    # dq_ptr: (B, NH, T, HS) at the strides sgb, sgh, sgt, 1
    out = (dq_ptr + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + offs_m[:, None].to(tl.int64) * sgt
           + offs_d[None, :])
    tl.store(out, (dq * scale).to(dq_ptr.dtype.element_ty), mask=qmask)


def _check(q, k, v, op):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: q must be (B, NH, T, HS) and k, v (B, NKV, S, HS); got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: the triton backend supports float32, float16 and bfloat16, got {dtype_name(q.dtype)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{op}: q, k, v dtypes differ: {dtype_name(q.dtype)}, {dtype_name(k.dtype)}, {dtype_name(v.dtype)}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v shapes differ: {tuple(k.shape)} and {tuple(v.shape)}")
    B, NH, T, HS = q.shape
    NKV = k.shape[1]
    if k.shape[0] != B or k.shape[3] != HS:
        raise ValueError(f"{op}: k and v must be (B, NKV, S, HS) with q's B and HS; q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    if (NKV == 0 and NH != 0) or (NKV > 0 and NH % NKV != 0):
        raise ValueError(f"{op}: the number of query heads ({NH}) must be a multiple of the "
                         f"number of kv heads ({NKV})")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"{op}: q, k, v must be on one device")


def _hsp(HS):
    return max(16, triton.next_power_of_2(HS))


def _scale(scale, HS):
    return float(scale) if scale is not None else (1.0 / math.sqrt(HS) if HS > 0 else 1.0)


def _tma_ok(q, k, v):
    """The descriptor kernel's conditions: Hopper, 16-bit, contiguous q, k, v (the (rows, HS) views)
    with 16-byte aligned bases, HS a power of two from 16 to 128."""
    HS = q.shape[3]
    return (q.is_cuda and q.dtype != torch.float32 and HS in (16, 32, 64, 128)
            and all(x.is_contiguous() and x.data_ptr() % 16 == 0 for x in (q, k, v))
            and _has_tma(q.device.index))


def _has_tma(device_index):
    return TensorDescriptor is not None and sm90_or_later(device_index)


def _attn_fwd_tma(q, k, v, out, lse, grid, sc, causal):
    """Launch _attn_fwd_tma_kernel; the boxes are placeholders until the autotuner's pre-hook."""
    B, NH, T, HS = q.shape
    NKV, S = k.shape[1], k.shape[2]
    qd = TensorDescriptor(q, [B * NH * T, HS], [HS, 1], [16, HS])
    kd = TensorDescriptor(k, [B * NKV * S, HS], [HS, 1], [16, HS])
    vd = TensorDescriptor(v, [B * NKV * S, HS], [HS, 1], [16, HS])
    _attn_fwd_tma_kernel[grid](qd, kd, vd, k, v, out, lse, NH, NKV, NH // NKV, T, S, sc * _LOG2E, HS,
                               CAUSAL=bool(causal), FP32=False)


def _stored_like(x, shape):
    """An uninitialised (B, heads, rows, HS) tensor of x's dtype, stored (B, rows, heads, HS) when
    x's heads lie within its rows (x a transposed view of a (B, T, heads, HS) tensor, as a
    Transformer hands q, k, v over), else contiguous. So stored, a result transposes back to a
    contiguous (B, T, heads, HS) tensor: the output projection and RoPE's backward read it
    without a copy."""
    B, H, L, HS = shape
    if x.stride(1) < x.stride(2):
        return torch.empty((B, L, H, HS), dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(shape, dtype=x.dtype, device=x.device)


def attention_forward(q, k, v, mask=None, causal=False, scale=None):
    """(out (B, NH, T, HS) in q's dtype, lse (B, NH, T) natural log, float32 for 16-bit inputs)."""
    if mask is not None:
        raise NotImplementedError("attention: the triton backend does not take a user mask "
                                  "(attn_mask); use the cpu or cuda backend for masked attention")
    _check(q, k, v, "attention")
    B, NH, T, HS = q.shape
    NKV, S = k.shape[1], k.shape[2]
    out = _stored_like(q, q.shape)  # contiguous where the descriptor kernel runs (q contiguous)
    lse_dtype = torch.float32 if q.dtype != torch.float32 else q.dtype
    lse = torch.empty((B, NH, T), dtype=lse_dtype, device=q.device)
    if lse.numel() == 0:
        return out, lse
    if HS == 0:  # every score is 0: lse = log(the keys a row sees), -inf for none
        t = torch.arange(T, device=q.device)
        seen = (t + 1 + S - T).clamp(0, S) if causal else torch.full_like(t, S)
        lse.copy_(torch.where(seen > 0, seen.to(lse_dtype).log(), float("-inf")).expand(B, NH, T))
        return out, lse
    if S == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    sc = _scale(scale, HS)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * NH)
    if _tma_ok(q, k, v):
        _attn_fwd_tma(q, k, v, out, lse, grid, sc, causal)
        return out, lse
    launch(_attn_fwd_kernel, grid, q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(),
           *out.stride(), NH, NH // NKV, T, S, sc * _LOG2E,
           HS=HS, HSP=_hsp(HS), CAUSAL=bool(causal), FP32=q.dtype == torch.float32)
    return out, lse


def _fused_qkv_grads(q, k, v):
    """(dq, dk, dv) for q, k, v that are adjacent head slices of one (B, T, NH + 2 NKV, HS) tensor
    (a fused qkv projection split along its heads, each seen as (B, heads, T, HS)): the same views
    of one buffer in that layout. The wrapper hands them back as views of one llmscratch tensor,
    and the split's backward takes that buffer as the projection's gradient instead of
    concatenating three (concat.cpp). None for any other q, k, v."""
    B, NH, T, HS = q.shape
    NKV, S = k.shape[1], k.shape[2]
    R = (NH + 2 * NKV) * HS  # the fused tensor's row stride
    strides = (T * R, HS, R, 1)
    size = q.element_size()
    if (S != T or q.stride() != strides or k.stride() != strides or v.stride() != strides
            or k.data_ptr() != q.data_ptr() + NH * HS * size
            or v.data_ptr() != q.data_ptr() + (NH + NKV) * HS * size):
        return None
    buf = torch.empty((B, T, NH + 2 * NKV, HS), dtype=q.dtype, device=q.device)
    return (buf[:, :, :NH].transpose(1, 2), buf[:, :, NH:NH + NKV].transpose(1, 2),
            buf[:, :, NH + NKV:].transpose(1, 2))


def attention_backward(q, k, v, mask, out, lse, dout, dlse=None, causal=False, scale=None):
    """(dq, dk, dv) in q's dtype for the forward's (out, lse) and the gradients (dout, dlse)."""
    if mask is not None:
        raise NotImplementedError("attention_backward: the triton backend does not take a user "
                                  "mask (attn_mask); use the cpu or cuda backend for masked attention")
    _check(q, k, v, "attention_backward")
    B, NH, T, HS = q.shape
    NKV, S = k.shape[1], k.shape[2]
    if out.shape != q.shape or dout.shape != q.shape or lse.shape != (B, NH, T):
        raise ValueError(f"attention_backward: out and dout must be {tuple(q.shape)} and lse "
                         f"(B, NH, T); got {tuple(out.shape)}, {tuple(dout.shape)}, {tuple(lse.shape)}")
    if dlse is not None and dlse.shape != lse.shape:
        raise ValueError(f"attention_backward: dlse must have lse's shape {tuple(lse.shape)}")
    # the CUDA kernel's dtype rules (a mixed pair had reached tl.dot)
    if out.dtype != q.dtype or dout.dtype != q.dtype:
        raise TypeError(f"attention_backward: out and dout must have q's dtype {dtype_name(q.dtype)}")
    if not lse.dtype.is_floating_point or (dlse is not None and not dlse.dtype.is_floating_point):
        raise TypeError("attention_backward: lse and dlse must be float tensors")
    fused = _fused_qkv_grads(q, k, v)
    if fused is not None:
        dq, dk, dv = fused
    else:
        dq = _stored_like(q, (B, NH, T, HS))
        dk = _stored_like(k, (B, NKV, S, HS))
        dv = torch.empty_like(dk)  # dk's strides (empty_like keeps a dense layout), as the kernel
        # stores both through dk's strides
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse = lse.contiguous()  # (B, NH, T): tiny
    if dlse is not None:
        dlse = dlse.contiguous()
    sc = _scale(scale, HS)
    HSP, fp32, causal = _hsp(HS), q.dtype == torch.float32, bool(causal)
    D = torch.empty((B, NH, T), dtype=torch.float32, device=q.device)
    launch(_bwd_preprocess_kernel, (B * NH, triton.cdiv(T, 64)),
           out, dout, dlse if dlse is not None else D, D, *out.stride(), *dout.stride(), NH, T,
           HS=HS, HAS_DLSE=dlse is not None, HSP=HSP, BLOCK_M=64)
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    grid = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * NKV)
    launch(_attn_bwd_dkdv_kernel, grid, q, k, v, dout, lse, D, dk, dv, *strides, *dk.stride()[:3],
           NH, NKV, NH // NKV, T, S, sc, sc * _LOG2E, HS=HS, HSP=HSP, CAUSAL=causal, FP32=fp32)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * NH)
    launch(_attn_bwd_dq_kernel, grid, q, k, v, dout, lse, D, dq, *strides, *dq.stride()[:3],
           NH, NH // NKV, T, S, sc, sc * _LOG2E, HS=HS, HSP=HSP, CAUSAL=causal, FP32=fp32)
    return dq, dk, dv


def _attention_op(inputs, attrs):
    """Registry op "attention": inputs {q, k, v, mask}, attrs {causal, scale}, outputs {out, lse}."""
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    return list(attention_forward(q, k, v, mask, attrs.get("causal", False), attrs.get("scale")))


def _attention_backward_op(inputs, attrs):
    """Registry op "attention_backward": inputs {q, k, v, mask, out, lse, dout, dlse},
    attrs {causal, scale}, outputs {dq, dk, dv}."""
    q, k, v, mask, out, lse, dout = inputs[:7]  # 7 or 8 of them (SERVES)
    dlse = inputs[7] if len(inputs) > 7 else None
    return list(attention_backward(q, k, v, mask, out, lse, dout, dlse,
                                   attrs.get("causal", False), attrs.get("scale")))


KERNELS = {"attention": _attention_op, "attention_backward": _attention_backward_op}
# a user mask (input 3 of both ops) runs on the native backend, visibly in backend_report(); so
# does a wrong input count, where the native kernels raise their error
SERVES = {"attention": lambda inputs, attrs: len(inputs) == 3 or (len(inputs) == 4 and inputs[3] is None),
          "attention_backward": lambda inputs, attrs: len(inputs) in (7, 8) and inputs[3] is None}
ONE_BUFFER_OUTPUTS = {"attention_backward"}  # dq, dk, dv as views of one buffer (_fused_qkv_grads)
