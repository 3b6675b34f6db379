"""The kernels behind layer_norm.py and rms_norm.py: one forward and one backward, rms_norm
being the case without centring (CENTERED false: no mean, no bias); the math of each op is in
its own module's docstring.

Forward: one program per row, the row in registers (C <= 65536): for layer_norm the mean, then
the variance as the mean of squared deviations (two passes over registers, no cancellation); for
rms_norm one sum of squares; one scaled store. With ADD (the add_ variants) the program first
forms h = x + r, rounded to x's dtype as a separate add would be, stores it and normalises it
from registers.
Backward: a fixed number of programs (two per SM) stride over the rows; each writes dx of its
rows (with HAS_DH the residual stream's gradient dh added before the one store) and keeps float32
partials of dw/db in registers, stored as one row of a (parts, programs, C) buffer that a second
kernel sums over the programs and rounds to x's dtype, so the result does not depend on
scheduling (no atomics). A program loads the next row's x, g, mean and rstd into registers
before it reduces the current row (a register double buffer, as cuda/norm.cuh's
backward_regs_kernel), so the memory system stays busy through the row's reductions.
Statistics are float32 for 16-bit x (as torch); arithmetic is float32 throughout.
References: Liger-Kernel's layer_norm and rms_norm (the same partial-sum scheme for dw/db).
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import check_row, launch, num_programs, row_warps, stat_dtype


@triton.jit
def _norm_fwd(X, RES, H, W, B, Y, MEAN, RSTD, C, eps, CENTERED: tl.constexpr, ADD: tl.constexpr,
              HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(X + row * C + cols, mask=mask, other=0.0)  # x[row, :]
    if ADD:  # normalise h = x + r (RES, H: r[row, :], h[row, :]), rounded as a separate add
        r = tl.load(RES + row * C + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + row * C + cols, x, mask=mask)
    x = x.to(tl.float32)
    if CENTERED:
        mean = tl.sum(x, axis=0) / C
        d = tl.where(mask, x - mean, 0.0)
    else:
        d = x
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * C + cols, y.to(Y.dtype.element_ty), mask=mask)
    if CENTERED:
        tl.store(MEAN + row, mean.to(MEAN.dtype.element_ty))
    tl.store(RSTD + row, rstd.to(RSTD.dtype.element_ty))


@triton.jit
def _load_row(X, G, MEAN, RSTD, row, R, C, cols, CENTERED: tl.constexpr):
    # x and g of the row in their dtype, its mean (0 without CENTERED) and rstd in float32; zeros
    # past the last row. The columns' mask is one comparison because the interpreter rejected a
    # block mask and'ed with the scalar row < R.
    live = cols < tl.where(row < R, C, 0)
    x = tl.load(X + row * C + cols, mask=live, other=0.0)
    g = tl.load(G + row * C + cols, mask=live, other=0.0)
    rstd = tl.load(RSTD + row, mask=row < R, other=0.0).to(tl.float32)
    if CENTERED:
        mean = tl.load(MEAN + row, mask=row < R, other=0.0).to(tl.float32)
    else:
        mean = tl.zeros_like(rstd)
    return x, g, mean, rstd


@triton.jit
def _norm_bwd(G, DH, X, W, MEAN, RSTD, DX, PART, R, C, CENTERED: tl.constexpr,
              HAS_DH: tl.constexpr, HAS_W: tl.constexpr, WANT_DW: tl.constexpr,
              WANT_DB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    # Rows pid, pid + nprog, ...; row indices are int64 so row * C cannot overflow. The next row
    # is loaded at the top of each step, before this row's reductions: the layer_norm backward
    # kernel ran at 88% of copy bandwidth on the H100 with tl.range's cp.async pipelining instead
    # (num_stages=2, 4 programs per SM, 8 warps), at 97% with this (bench/notes_triton_tuning.md).
    row = pid.to(tl.int64)
    nx, ng, nmean, nrstd = _load_row(X, G, MEAN, RSTD, row, R, C, cols, CENTERED)
    for _ in tl.range(0, tl.cdiv(R - pid, nprog), num_stages=1):
        x = nx.to(tl.float32)  # x[row, :]
        g = ng.to(tl.float32)
        mean = nmean
        rstd = nrstd
        nxt = row + nprog
        nx, ng, nmean, nrstd = _load_row(X, G, MEAN, RSTD, nxt, R, C, cols, CENTERED)
        if HAS_DH:  # the add_ variants: the residual stream's gradient joins dx
            dh = tl.load(DH + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        if CENTERED:
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        else:
            xhat = x * rstd
        if HAS_W:
            dxhat = g * w
        else:
            dxhat = g
        if CENTERED:
            # Both row sums in one reduction of a [BLOCK, 2] tile: one trip through shared memory
            # and its barriers instead of two.
            sums = tl.sum(tl.join(dxhat * xhat, dxhat), axis=0)
            s2, s1 = tl.split(sums)
            dx = rstd * (dxhat - s1 / C - xhat * (s2 / C))
        else:
            dx = rstd * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=0) / C))
        if HAS_DH:
            dx += dh
        tl.store(DX + row * C + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if WANT_DW:
            dw += g * xhat
        if WANT_DB:
            db += g
        row = nxt
    # PART is (parts, nprog, C): dw's partials first, then db's
    if WANT_DW:
        tl.store(PART + pid * C + cols, dw, mask=mask)
    if WANT_DB:
        if WANT_DW:
            tl.store(PART + (nprog + pid) * C + cols, db, mask=mask)
        else:
            tl.store(PART + pid * C + cols, db, mask=mask)


@triton.jit
def _sum_partials(PART, OUT, P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # OUT[part, c] = sum over p of PART[part, p, c] in float32, rounded once; one program per
    # (BLOCK_C columns, part), over [BLOCK_P, BLOCK_C] tiles of the partials, so a 4096-wide norm
    # has 128 programs on the SMs.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    part = tl.program_id(1).to(tl.int64)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in tl.range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(PART + (part * P + p[:, None]) * C + cols[None, :],
                       mask=(p < P)[:, None] & (cols < C)[None, :], other=0.0)
    tl.store(OUT + part * C + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=cols < C)


def check_forward(op, add):
    """CHECKS entry of a norm forward {x, [r,] w?, b?}: the CPU and CUDA kernels' checks (their
    input counts: x and r given, then a weight, and a bias for layer_norm)."""
    given = 2 if add else 1

    def check(inputs, attrs):
        _core.ops.expect_inputs(inputs, given, given + (2 if "layer_norm" in op else 1), op)
        params = list(inputs[given:]) + [None, None]
        _core.ops.check_norm_args(inputs[0], params[0], params[1], float(attrs.get("eps", 0.0)), op)
        if add:
            _core.ops.check_norm_residual(inputs[0], inputs[1], op, "residual")
    return check


def check_backward(op, add, stats):
    """CHECKS entry of a norm backward {g, [dh,] x, w?, [mean,] rstd}: the shared checks of the
    inputs and of the statistics (floating, one per row of x, which the kernels index by row)."""
    def check(inputs, attrs):
        g, dh, x, w = (inputs[0], inputs[1], inputs[2], inputs[3]) if add else (inputs[0], None, inputs[1], inputs[2])
        _core.ops.check_norm_backward_args(x, w, g, dh, op)
        _core.ops.check_norm_stats(x, inputs[-2] if stats == 2 else None, inputs[-1], stats == 2, op)
    return check


def optional(inputs, i):
    return inputs[i].contiguous() if len(inputs) > i and inputs[i] is not None else None


def forward(op, x, res, w, b, eps, centered):
    """[h] (with res) + [y] + [mean] (centered) + [rstd]."""
    x = x.contiguous()
    C = x.shape[-1]
    check_row(op, C)
    R = x.numel() // C if C else 0
    h = torch.empty_like(x) if res is not None else None
    y = torch.empty_like(x)
    rstd = torch.empty(x.shape[:-1], dtype=stat_dtype(x.dtype), device=x.device)
    mean = torch.empty_like(rstd) if centered else None
    if R and C:
        block = triton.next_power_of_2(C)
        launch(_norm_fwd, (R,), x, res if res is not None else x, h if h is not None else y,
               w if w is not None else x, b if b is not None else x, y,
               mean if centered else rstd, rstd, C, eps, CENTERED=centered,
               ADD=res is not None, HAS_W=w is not None, HAS_B=b is not None,
               BLOCK=block, num_warps=row_warps(block))
    elif not C:  # rows of no elements: their statistics are 0 / 0, as the CPU kernel's
        rstd.fill_(float("nan"))
        if centered:
            mean.fill_(float("nan"))
    return ([h] if h is not None else []) + [y] + ([mean] if centered else []) + [rstd]


def backward(op, g, dh, x, w, mean, rstd, attrs):
    """[dx, dw] + [db] for layer_norm (mean given); a gradient not asked for has shape (0,)."""
    centered = mean is not None
    g, x, rstd = g.contiguous(), x.contiguous(), rstd.contiguous()
    mean = mean.contiguous() if centered else rstd
    want_dw = bool(attrs.get("dweight", False))
    want_db = centered and bool(attrs.get("dbias", False))
    C = x.shape[-1]
    check_row(op, C)
    R = rstd.numel()
    dx = torch.empty_like(x)
    nprog = num_programs(x.device, R, per_sm=2)
    parts = int(want_dw) + int(want_db)
    part = torch.empty((parts, nprog, C), dtype=torch.float32, device=x.device)
    sums = torch.empty((parts, C), dtype=x.dtype, device=x.device)
    if not R:
        sums.zero_()
    elif C:
        block = triton.next_power_of_2(C)
        # 4 warps up to 4096 (row_warps gives 4096 eight): two rows in flight per program
        # fit their registers, and beat 8 and 16 warps on the H100 (notes_triton_tuning.md)
        warps = 4 if block <= 4096 else row_warps(block)
        launch(_norm_bwd, (nprog,), g, dh if dh is not None else g, x, w if w is not None else x, mean,
               rstd, dx, part, R, C, CENTERED=centered, HAS_DH=dh is not None,
               HAS_W=w is not None, WANT_DW=want_dw, WANT_DB=want_db, BLOCK=block,
               num_warps=warps)
        if parts:
            launch(_sum_partials, (triton.cdiv(C, 64), parts), part, sums, nprog, C, BLOCK_P=64,
                   BLOCK_C=64)
    empty = x.new_empty((0,))
    dw = sums[0] if want_dw else empty
    db = sums[int(want_dw)] if want_db else empty
    return [dx, dw] + ([db] if centered else [])
