"""Mixture-of-Experts dispatch in Triton, the registry ops of cpp/ops/moe.cpp (read its header for
the exact inputs, attrs and outputs). N tokens, E experts, k experts per token; assignment
a = n * k + s; M = R rows in the expert-sorted layout.

    moe_permute      expert_ids (N, k) -> token (N*k,), row (N, k), offsets (E+1,), counts (E,)
    grouped_matmul   y[r] = x[r] @ w[e] (w[e]^T when transpose_w) for offsets[e] <= r < offsets[e+1],
                     y[r] = 0 past offsets[E]
    grouped_matmul_weight_grad   dw[e] = a[seg e]^T @ b[seg e]
    moe_combine      out[n] = sum_s gates[n, s] y[row[n, s]]
    moe_combine_backward   dy[row[n, s]] = gates[n, s] g[n],  dgates[n, s] = <g[n], y[row[n, s]]>

Nothing waits for the GPU: every output's size is known on the host and offsets stay on the
device.

moe_permute: a stable counting sort over buckets (the E experts, then "dropped") in three
launches. The walk is cut into blocks of BLOCK items; (1) each program counts its block's items
per bucket into cnt[bucket, block]; (2) one program scans cnt in (bucket, block) order, so
cnt[b, blk] becomes where block blk's first item of bucket b goes, and bucket starts are the
offsets; (3) each program ranks its items within their bucket inside the block (a cumsum of
the bucket mask) and places them at cnt[b, blk] + rank. Equal buckets keep walk order, which
gives exactly the CPU op's rows. Capacity mode first runs the same three steps over the
slot-major walk (s, n) to rank assignments within their expert, keeping rank < capacity, then
places kept assignments under their expert and dropped ones in the last bucket. The per-block
work is O(E * BLOCK): meant for the small E of MoE layers. Expert ids outside [0, E) cannot be
reported without a host sync; such an assignment is dropped (row -1) and counted nowhere.

grouped_matmul: one launch over (tile row, tile column) work items. The rows are E + 1
segments (the experts, then the dropped rows); the grid has the worst-case ceil(M / BM) + E tile
rows and each program loads the offsets to find its segment and the tile of it it owns (programs
past the last tile store nothing; the dropped segment stores zeros). fp32 accumulation (tl.dot;
ieee precision for float32 inputs, so no TF32). weight_grad: grid (tiles of P x Q, E); program
(tile, e) reduces over the rows of segment e: each dw element written once, deterministic.

moe_combine: program (token, column block) sums its k gated rows in fp32. moe_combine_backward:
dy through the inverse of row (inv[row[a]] = a; -1 for rows no assignment reads), so each dy row
is written once without atomics; dgates one program per assignment, a dot product over H.
Offsets and rows are trusted to be moe_permute's (the CPU backend validates them); the kernels
clamp them so bad values cannot reach outside the tensors.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from . import interpreted
from ._common import launch


DTYPES = {"moe_permute": ("int32", "int64")}

PERMUTE_BLOCK = 256


@triton.jit
def _bucket_of(IDS, KEEP, j, A, N, K, E, SLOT_MAJOR: tl.constexpr, USE_KEEP: tl.constexpr):
    """(assignment index, bucket) of walk positions j; bucket E + 1 marks positions past the end."""
    valid = j < A
    if SLOT_MAJOR:
        i = (j % N) * K + j // N  # j = s * N + n
    else:
        i = j
    e = tl.load(IDS + i, mask=valid, other=-1).to(tl.int64)
    ok = valid & (e >= 0) & (e < E)
    if USE_KEEP:
        ok = ok & (tl.load(KEEP + i, mask=valid, other=0) != 0)
    bucket = tl.where(ok, e, E)
    return i, tl.where(valid, bucket, E + 1)


@triton.jit
def _permute_count(IDS, KEEP, CNT, A, N, K, E, NBLK, SLOT_MAJOR: tl.constexpr,
                   USE_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    j = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    i, bucket = _bucket_of(IDS, KEEP, j, A, N, K, E, SLOT_MAJOR, USE_KEEP)
    for q in range(0, E + 1):
        tl.store(CNT + q * NBLK + blk, tl.sum((bucket == q).to(tl.int32), axis=0))


@triton.jit
def _scan_counts(CNT, OFF, L, NBLK, BLOCK: tl.constexpr):
    """CNT[0..L) := its exclusive prefix sums; OFF[b] := the start of bucket b (row b * NBLK)."""
    carry = tl.full((), 0, tl.int32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < L
        x = tl.load(CNT + offs, mask=m, other=0)
        excl = tl.cumsum(x, axis=0) - x + carry
        tl.store(CNT + offs, excl, mask=m)
        tl.store(OFF + offs // NBLK, excl.to(tl.int64), mask=m & (offs % NBLK == 0))
        carry += tl.sum(x, axis=0)


@triton.jit
def _permute_place(IDS, KEEP, CNT, TOKEN, ROW, A, N, K, E, NBLK, cap, SLOT_MAJOR: tl.constexpr,
                   USE_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    j = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    i, bucket = _bucket_of(IDS, KEEP, j, A, N, K, E, SLOT_MAJOR, USE_KEEP)
    valid = j < A
    pos = tl.zeros((BLOCK,), dtype=tl.int64)
    for q in range(0, E + 1):
        hit = (bucket == q).to(tl.int32)
        rank = tl.cumsum(hit, axis=0) - hit  # earlier items of bucket q in this block
        base = tl.load(CNT + q * NBLK + blk).to(tl.int64)
        pos = tl.where(hit != 0, base + rank, pos)
    if SLOT_MAJOR:
        # capacity pass: rank within the expert = position - the expert's start (row 0 of its counts)
        start = tl.load(CNT + tl.minimum(bucket, E) * NBLK, mask=valid, other=0).to(tl.int64)
        keep = (bucket < E) & (pos - start < cap)
        tl.store(KEEP + i, keep.to(tl.int8), mask=valid)
    else:
        tl.store(ROW + i, tl.where(bucket < E, pos, -1), mask=valid)
        tl.store(TOKEN + pos, i // K, mask=valid)


def _counting_pass(ids, keep, token, row, A, N, k, E, slot_major, use_keep, cap=0):
    """Steps (1)-(3) over one walk; returns the bucket starts (E + 1,) int64. The capacity pass
    (slot_major) writes keep flags; the placement pass token and row."""
    nblk = triton.cdiv(A, PERMUTE_BLOCK)
    cnt = torch.empty((E + 1) * nblk, dtype=torch.int32, device=ids.device)
    starts = torch.empty(E + 1, dtype=torch.int64, device=ids.device)
    launch(_permute_count, (nblk,), ids, keep, cnt, A, N, k, E, nblk, SLOT_MAJOR=slot_major,
           USE_KEEP=use_keep, BLOCK=PERMUTE_BLOCK)
    launch(_scan_counts, (1,), cnt, starts, cnt.numel(), nblk, BLOCK=1024)
    launch(_permute_place, (nblk,), ids, keep, cnt, token, row, A, N, k, E, nblk, cap,
           SLOT_MAJOR=slot_major, USE_KEEP=use_keep, BLOCK=PERMUTE_BLOCK)
    return starts


def moe_permute(inputs, attrs):
    ids = inputs[0]
    if ids.dim() != 2:
        raise ValueError(f"moe_permute: expert_ids must have shape (N, k), got {tuple(ids.shape)}")
    E, cap = int(attrs["n_experts"]), int(attrs.get("capacity", -1))
    if E <= 0:
        raise ValueError(f"moe_permute: n_experts must be positive, got {E}")
    ids = ids.contiguous()
    N, k = ids.shape
    A = N * k
    dev = ids.device
    token = torch.empty(A, dtype=torch.int64, device=dev)
    row = torch.empty((N, k), dtype=torch.int64, device=dev)
    if A == 0:
        z = torch.zeros(E + 1, dtype=torch.int64, device=dev)
        return [token, row, z, z[:E].clone()]
    keep = torch.empty(A, dtype=torch.int8, device=dev)
    if cap >= 0:
        # bucket E of this pass holds only invalid ids, so starts[E] is the valid total
        first = _counting_pass(ids, keep, token, row, A, N, k, E, True, False, cap)
        counts = first[1:E + 1] - first[:E]
    starts = _counting_pass(ids, keep, token, row, A, N, k, E, False, cap >= 0)
    if cap < 0:
        counts = starts[1:E + 1] - starts[:E]
    return [token, row, starts, counts]


# ---- grouped GEMM ------------------------------------------------------------------------------

def _gemm_blocks(dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    if interpreted():
        return 32, 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 3
    return 128, 128, 64, 8, 3


@triton.jit
def _grouped_mm_kernel(X, W, OFF, Y, M, N, K, E, sxm, sxk, swe, swk, swn,
                       FP32: tl.constexpr, E_POW2: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Find the segment (0..E-1 experts, E the dropped rows) whose tiles include tile row pid_m:
    # all offsets in one load, tiles per segment, their running sum, then a count.
    idx = tl.arange(0, E_POW2)
    starts = tl.load(OFF + idx, mask=idx <= E, other=0)
    starts = tl.where(idx <= E, tl.minimum(tl.maximum(starts, 0), M), M)
    ends = tl.load(OFF + idx + 1, mask=idx < E, other=M)  # segment E ends at M
    ends = tl.minimum(tl.maximum(ends, starts), M)
    nt = (ends - starts + BLOCK_M - 1) // BLOCK_M
    cum = tl.cumsum(nt, axis=0)  # one past each segment's last tile row
    seg = tl.sum((cum <= pid_m).to(tl.int32), axis=0)  # > E: past the last tile
    sel = idx == seg
    r0 = tl.sum(tl.where(sel, starts, 0), axis=0)
    rows = tl.sum(tl.where(sel, ends - starts, 0), axis=0)
    m0 = (pid_m - tl.sum(tl.where(sel, cum - nt, 0), axis=0)) * BLOCK_M
    active = seg < E  # an expert's tile: multiply; else zeros (or nothing)
    we = tl.minimum(seg, E - 1).to(tl.int64)
    k_end = tl.where(active, K, 0)

    rm = m0 + tl.arange(0, BLOCK_M)      # rows within the segment
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < rows
    mask_n = rn < N
    # x points at x[r0 + rm, rk], w at w[e, rk, rn] (strides as given)
    x = X + (r0 + rm)[:, None] * sxm + rk[None, :] * sxk
    w = W + we * swe + rk[:, None] * swk + rn[None, :].to(tl.int64) * swn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_end, BLOCK_K):
        a = tl.load(x, mask=mask_m[:, None] & (rk[None, :] < K - k0), other=0.0)
        b = tl.load(w, mask=(rk[:, None] < K - k0) & mask_n[None, :], other=0.0)
        if FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x += BLOCK_K * sxk
        w += BLOCK_K * swk
    y = Y + (r0 + rm)[:, None] * N + rn[None, :]
    tl.store(y, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def grouped_matmul(inputs, attrs):
    x, w, off = inputs  # shapes and dtypes as CHECKS accepted them
    tw = bool(attrs.get("transpose_w", False))
    M, K = x.shape
    E = w.shape[0]
    N = w.shape[1] if tw else w.shape[2]
    x = x.contiguous()
    off = off.contiguous()
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return [y]
    if K == 0 or E == 0:
        return [y.zero_()]
    swk, swn = (w.stride(2), w.stride(1)) if tw else (w.stride(1), w.stride(2))
    bm, bn, bk, warps, stages = _gemm_blocks(x.dtype)
    grid = (triton.cdiv(M, bm) + E, triton.cdiv(N, bn))
    launch(_grouped_mm_kernel, grid, x, w, off, y, M, N, K, E, x.stride(0), x.stride(1), w.stride(0),
           swk, swn, FP32=x.dtype == torch.float32,
           E_POW2=triton.next_power_of_2(E + 1), BLOCK_M=bm, BLOCK_N=bn,
           BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return [y]


@triton.jit
def _grouped_wgrad_kernel(A, B, OFF, DW, M, P, Q, sam, sap, sbm, sbq, FP32: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tiles_q = tl.cdiv(Q, BLOCK_N)
    pid = tl.program_id(0)
    e = tl.program_id(1)
    rp = (pid // tiles_q) * BLOCK_M + tl.arange(0, BLOCK_M)
    rq = (pid % tiles_q) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = rp < P
    mask_q = rq < Q
    r0 = tl.minimum(tl.maximum(tl.load(OFF + e), 0), M)
    r1 = tl.minimum(tl.maximum(tl.load(OFF + e + 1), r0), M)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(r0, r1, BLOCK_K):
        mk = k0 + rk < r1
        # a^T tile: element (p, m) = a[k0 + m, p]; b tile: (m, q) = b[k0 + m, q]
        at = tl.load(A + (k0 + rk)[None, :] * sam + rp[:, None] * sap,
                     mask=mask_p[:, None] & mk[None, :], other=0.0)
        bt = tl.load(B + (k0 + rk)[:, None] * sbm + rq[None, :] * sbq,
                     mask=mk[:, None] & mask_q[None, :], other=0.0)
        if FP32:
            acc = tl.dot(at, bt, acc, input_precision="ieee")
        else:
            acc = tl.dot(at, bt, acc)
    dw = DW + e.to(tl.int64) * P * Q + rp[:, None].to(tl.int64) * Q + rq[None, :]
    tl.store(dw, acc.to(DW.dtype.element_ty), mask=mask_p[:, None] & mask_q[None, :])


def grouped_matmul_weight_grad(inputs, attrs):
    a, b, off = (t.contiguous() for t in inputs)  # shapes and dtypes as CHECKS accepted them
    M, P = a.shape
    Q = b.shape[1]
    E = off.shape[0] - 1
    dw = torch.empty((E, P, Q), dtype=a.dtype, device=a.device)
    if dw.numel() == 0:
        return [dw]
    if M == 0:
        return [dw.zero_()]
    bm, bn, bk, warps, stages = _gemm_blocks(a.dtype)
    grid = (triton.cdiv(P, bm) * triton.cdiv(Q, bn), E)
    launch(_grouped_wgrad_kernel, grid, a, b, off, dw, M, P, Q, a.stride(0), a.stride(1), b.stride(0),
           b.stride(1), FP32=a.dtype == torch.float32, BLOCK_M=bm,
           BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return [dw]


# ---- combine -----------------------------------------------------------------------------------

def _row_block(H):
    return min(triton.next_power_of_2(max(H, 1)), 1024)


@triton.jit
def _combine_kernel(Y, G, ROW, OUT, R, H, K, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mh = h < H
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, K):
        # the row, broadcast over the block (a scalar mask is not accepted by the interpreter)
        r = tl.load(ROW + n * K + s) + tl.zeros((BLOCK,), dtype=tl.int64)
        ok = (r >= 0) & (r < R)
        g = tl.load(G + n * K + s).to(tl.float32)
        y = tl.load(Y + tl.maximum(r, 0) * H + h, mask=mh & ok, other=0.0).to(tl.float32)
        acc += tl.where(ok, g * y, 0.0)
    tl.store(OUT + n * H + h, acc.to(OUT.dtype.element_ty), mask=mh)


def moe_combine(inputs, attrs):
    y, gates, row = (t.contiguous() for t in inputs)
    (R, H), (N, k) = y.shape, gates.shape
    out = torch.empty((N, H), dtype=y.dtype, device=y.device)
    if out.numel():
        bh = _row_block(H)
        launch(_combine_kernel, (N, triton.cdiv(H, bh)), y, gates, row, out, R, H, k, BLOCK=bh)
    return [out]


@triton.jit
def _invert_rows_kernel(ROW, INV, A, R, BLOCK: tl.constexpr):
    a = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = a < A
    r = tl.load(ROW + a, mask=m, other=-1)
    tl.store(INV + r, a, mask=m & (r >= 0) & (r < R))


@triton.jit
def _combine_dy_kernel(G, GATES, INV, DY, H, K, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mh = h < H
    a = tl.load(INV + r) + tl.zeros((BLOCK,), dtype=tl.int64)  # broadcast: a vector mask
    ok = a >= 0
    ac = tl.maximum(a, 0)
    gate = tl.load(GATES + ac, mask=mh & ok, other=0.0).to(tl.float32)
    g = tl.load(G + (ac // K) * H + h, mask=mh & ok, other=0.0).to(tl.float32)
    tl.store(DY + r * H + h, (gate * g).to(DY.dtype.element_ty), mask=mh)


@triton.jit
def _combine_dgates_kernel(G, Y, ROW, DG, R, H, K, BLOCK: tl.constexpr):
    a = tl.program_id(0).to(tl.int64)
    r = tl.load(ROW + a) + tl.zeros((BLOCK,), dtype=tl.int64)  # broadcast: a vector mask
    ok = (r >= 0) & (r < R)
    rc = tl.maximum(r, 0)
    n = a // K
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for h0 in range(0, H, BLOCK):
        h = h0 + tl.arange(0, BLOCK)
        m = (h < H) & ok
        g = tl.load(G + n * H + h, mask=m, other=0.0).to(tl.float32)
        y = tl.load(Y + rc * H + h, mask=m, other=0.0).to(tl.float32)
        acc += g * y
    tl.store(DG + a, tl.sum(acc, axis=0).to(DG.dtype.element_ty))


def moe_combine_backward(inputs, attrs):
    g, y, gates, row = (t.contiguous() for t in inputs)
    (R, H), (N, k) = y.shape, gates.shape
    want_dy, want_dg = bool(attrs.get("dy", True)), bool(attrs.get("dgates", True))
    dy = torch.empty((R, H) if want_dy else (0,), dtype=y.dtype, device=y.device)
    dg = torch.empty((N, k) if want_dg else (0,), dtype=y.dtype, device=y.device)
    A = N * k
    bh = _row_block(H)
    if want_dy and dy.numel():
        inv = torch.full((R,), -1, dtype=torch.int64, device=y.device)
        if A:
            launch(_invert_rows_kernel, (triton.cdiv(A, 1024),), row, inv, A, R, BLOCK=1024)
        launch(_combine_dy_kernel, (R, triton.cdiv(H, bh)), g, gates, inv, dy, H, k, BLOCK=bh)
    if want_dg and A:
        launch(_combine_dgates_kernel, (A,), g, y, row, dg, R, H, k, BLOCK=bh)
    return [dy, dg]


KERNELS = {
    "moe_permute": moe_permute,
    "grouped_matmul": grouped_matmul,
    "grouped_matmul_weight_grad": grouped_matmul_weight_grad,
    "moe_combine": moe_combine,
    "moe_combine_backward": moe_combine_backward,
}

def _check_combine(inputs, attrs):
    _core.ops.expect_inputs(inputs, 3, 3, "moe_combine")
    _core.ops.check_moe_combine_args(*inputs, None, "moe_combine")


def _check_combine_backward(inputs, attrs):
    _core.ops.expect_inputs(inputs, 4, 4, "moe_combine_backward")
    _core.ops.check_moe_combine_args(*inputs[1:], inputs[0], "moe_combine_backward")


# The CPU and CUDA kernels' checks of inputs, shapes and dtypes (bound from cpp/ops); row's values
# are not checked (the kernels skip a row outside [0, R), as the CUDA ones do).
CHECKS = {"moe_combine": _check_combine, "moe_combine_backward": _check_combine_backward,
          # (mixed dtypes had reached tl.dot; the offsets' values are trusted, as on CUDA)
          "grouped_matmul": lambda inputs, attrs: _core.ops.check_grouped_matmul_args(
              inputs, bool(attrs.get("transpose_w", False))),
          "grouped_matmul_weight_grad": lambda inputs, attrs: _core.ops.check_grouped_matmul_weight_grad_args(inputs),
          "moe_permute": lambda inputs, attrs: _core.ops.expect_inputs(inputs, 1, 1, "moe_permute")}
