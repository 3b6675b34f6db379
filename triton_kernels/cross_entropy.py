"""cross_entropy: log-softmax fused with the negative log-likelihood, forward and backward.

    lse[n]  = m + log sum_v exp(logits[n, v] - m),   m = max_v logits[n, v]
    loss[n] = (1 - eps) (lse[n] - logits[n, t[n]]) + eps (lse[n] - mean_v logits[n, v])
              (label smoothing eps, torch's definition); 0 where t[n] == ignore_index
    reduction "none" -> loss (N,); "sum" -> sum_n loss; "mean" -> sum_n loss / #(not ignored)
    backward, p = exp(logits - lse), k[n] the gradient reaching loss[n] (g[n], g or g / count;
    0 for ignored rows), h[n] that of the lse output:
      dlogits[n, v] = (k[n] + h[n]) p[n, v] - k[n] eps / V - k[n] (1 - eps) [v == t[n]]
    The forwards never subtract a rounded lse (as cpp/ops/cross_entropy.cpp): lse - x is taken
    as log s - (x - m) and p as exp((x - m) - log s), s = sum_v exp(logits[n, v] - m), since
    m + log s rounded loses the low bits of log s next to a large m. The backward has only lse.

Shapes: logits (N, V) (N = B*T, V vocab), targets (N,) int32/int64, lse (N,). Logits whose rows
are each contiguous are read at their row stride (the output layer's logits have rows padded to 16
bytes, see _common.matmul_output), others copied; dlogits gets the padded rows.
Registry ops (cpp/ops/cross_entropy.cpp): "cross_entropy" {logits, targets} attrs ignore_index,
reduction, label_smoothing -> {loss, lse}; "cross_entropy_backward" {g_loss, logits, targets, lse,
g_lse} same attrs -> {dlogits}.

Kernels: one program per row walking V in chunks of up to 4096 (8192 in the in-place forward;
any V): the forward keeps an online max and rescaled sum per group of 8 adjacent logits (and the
row sum with label smoothing) and writes one lse and one float32 row loss, never the
probabilities; torch reduces the row losses on the device (no host synchronisation, the "mean"
count included). The backward writes dlogits in one pass
from the saved lse. lse is float32 for 16-bit logits. Targets out of range: the wrapper runs the
native range check first (CHECKS; on a GPU it raises at the next synchronisation); the kernels
then read logit 0 for such a target, a result not to be used.

In-place gradient (the contract is in cpp/ops/cross_entropy.cpp): "cross_entropy_inplace"
{logits, targets} -> {loss} writes d(loss)/d(logits) at an upstream gradient of 1 over the
logits (rows contiguous, at any row stride), k p - k eps / V - k (1 - eps) [v == t] with
k = 1/count (mean, the count read on the device) or 1, zeros for ignored rows (not read);
"cross_entropy_inplace_backward" {g_loss, dlogits} -> {dlogits} multiplies that memory by g (per
row for "none") in place, masking off every element whose factor is exactly 1, so loss.backward()
on the mean itself moves no data and needs no host synchronisation. The forward program walks its
row twice: the statistics (and the target logit, picked from the chunks it loads, so it is read
before anything is overwritten), then the gradient from the last chunk back to the first, each
chunk stored where it was loaded. The registry bumps the logits' version counter after either
op, whichever backend ran it (OpSchema.writes_inputs).
References: Liger-Kernel's fused linear cross-entropy (its in-place logits gradient); llm.c's fused
classifier.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, launch, matmul_output, num_programs, row_block, row_stride, stat_dtype

_GROUP = tl.constexpr(8)  # adjacent logits sharing a running max (a 16-byte load of bf16)


def _whole(V):
    """V rounded down to a multiple of 16 elements: the VB of _load_chunk / _store_chunk."""
    return V - V % 16


@triton.jit
def _load_chunk(row, off, V, VB, other, BLOCK: tl.constexpr):
    """row[off : off + BLOCK] in float32, `other` from V on. The loads are masked against VB (V
    rounded down to 16 elements), which triton can prove covers whole 16-byte vectors, so they are
    vector loads where row is 16-byte aligned; the chunk holding VB .. V - 1 loads those one by
    one. A mask against V itself, of no known divisibility (GPT-2's 50257), made every load an
    element load."""
    cols = off + tl.arange(0, BLOCK)
    x = tl.load(row + cols, mask=cols < VB, other=other)
    if off + BLOCK > VB:
        x = tl.where(cols < VB, x, tl.load(row + cols, mask=(cols >= VB) & (cols < V), other=other))
    return x.to(tl.float32)


@triton.jit
def _store_chunk(row, off, V, VB, value, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    """row[off : off + BLOCK] = value below V, as _load_chunk loads. EVICT: the stores'
    eviction_policy hint ("" for none; triton emits "evict_first" as st.global.L1::evict_first)."""
    cols = off + tl.arange(0, BLOCK)
    value = value.to(row.dtype.element_ty)
    tl.store(row + cols, value, mask=cols < VB, eviction_policy=EVICT)
    if off + BLOCK > VB:
        tl.store(row + cols, value, mask=(cols >= VB) & (cols < V), eviction_policy=EVICT)


@triton.jit
def _row_lse(x_row, V, VB, t, SMOOTH: tl.constexpr, WANT_XT: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over the logits row at x_row: its log-sum-exp as the pair (m, log s) (online max
    and sum of exp; not added up, see the module docstring), the target's logit x[t] when WANT_XT,
    and the row sum for label smoothing (0 without). The running max and sum are kept per group
    of _GROUP adjacent logits, which one thread holds: one exp per logit plus one per group, where
    a running max per logit costs two exps per logit."""
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK // _GROUP], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK // _GROUP], dtype=tl.float32)
    xsum = tl.zeros([BLOCK], dtype=tl.float32)
    xt = tl.zeros([BLOCK], dtype=tl.float32)
    for off in tl.range(0, V, BLOCK):
        mask = off + cols < V
        x = _load_chunk(x_row, off, V, VB, float("-inf"), BLOCK)
        xg = tl.reshape(x, [BLOCK // _GROUP, _GROUP])
        m_new = tl.maximum(m, tl.max(xg, axis=1))
        seen = m_new > float("-inf")  # a group of -inf so far keeps s = 0 (exp(-inf + inf) is NaN)
        s = tl.where(seen, s * tl.exp(m - m_new) + tl.sum(tl.exp(xg - m_new[:, None]), axis=1), 0.0)
        m = m_new
        if WANT_XT:
            xt += tl.where(off + cols == t, x, 0.0)
        if SMOOTH:
            xsum += tl.where(mask, x, 0.0)
    m_row = tl.max(m, axis=0)
    log_s = tl.log(tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - m_row), 0.0), axis=0))
    return m_row, log_s, tl.sum(xt, axis=0), tl.sum(xsum, axis=0)


@triton.jit
def _cross_entropy_fwd(X, TGT, LSE, LOSS, V, VB, ld, ignore_index, eps,
                       SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    x_row = X + n * ld  # points at logits[n, :]
    m, log_s, _, xsum = _row_lse(x_row, V, VB, 0, SMOOTH, False, BLOCK)
    t = tl.load(TGT + n).to(tl.int64)
    valid = t != ignore_index
    x_t = tl.load(x_row + t, mask=valid & (t >= 0) & (t < V), other=0.0).to(tl.float32)
    loss = (1.0 - eps) * (log_s - (x_t - m))
    if SMOOTH:
        loss += eps * (log_s + (m - xsum / V))
    tl.store(LSE + n, (m + log_s).to(LSE.dtype.element_ty))
    tl.store(LOSS + n, tl.where(valid, loss, 0.0))


@triton.jit
def _cross_entropy_bwd(G, SCALE, X, TGT, LSE, GLSE, DX, V, VB, ldx, ldd, ignore_index, eps,
                       PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    t = tl.load(TGT + n).to(tl.int64)
    if PER_ROW:
        k = tl.load(G + n).to(tl.float32)
    else:
        k = tl.load(SCALE).to(tl.float32)
    k = tl.where(t != ignore_index, k, 0.0)
    kp = k + tl.load(GLSE + n).to(tl.float32)
    lse = tl.load(LSE + n).to(tl.float32)
    off_all = k * eps / V
    cols = tl.arange(0, BLOCK)
    for off in tl.range(0, V, BLOCK):
        x = _load_chunk(X + n * ldx, off, V, VB, 0.0, BLOCK)  # logits[n, off:]
        d = kp * tl.exp(x - lse) - off_all - tl.where(off + cols == t, k * (1.0 - eps), 0.0)
        _store_chunk(DX + n * ldd, off, V, VB, d, BLOCK, "")


@triton.jit
def _cross_entropy_inplace_fwd(X, TGT, LOSS, COUNT, V, VB, ld, ignore_index, eps,
                               MEAN: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    x_row = X + n * ld  # points at logits[n, :]; the gradient goes to the same place
    cols = tl.arange(0, BLOCK)
    t = tl.load(TGT + n).to(tl.int64)
    if t != ignore_index:
        # x[t] is taken in the same pass: the second pass overwrites the row
        m, log_s, xt, xsum = _row_lse(x_row, V, VB, t, SMOOTH, True, BLOCK)
        loss = (1.0 - eps) * (log_s - (xt - m))
        if SMOOTH:
            loss += eps * (log_s + (m - xsum / V))
        tl.store(LOSS + n, loss)
        if MEAN:
            k = 1.0 / tl.load(COUNT).to(tl.float32)
        else:
            k = 1.0
        shift = k * eps / V
        # The gradient pass walks the chunks last to first: the row's end was read last and is
        # the part most likely still in L2. Its stores carry the evict-first hint, which measured
        # as keeping more of the unread rest there (scratch A/Bs at V = 50k on an H100,
        # bench/notes_triton_tuning.md: 79% -> 83% of copy bandwidth reversed, 83% -> 90% with
        # the hint; streaming .cs stores did the same).
        chunks = tl.cdiv(V, BLOCK)
        for i in tl.range(0, chunks):
            off = (chunks - 1 - i) * BLOCK
            x = _load_chunk(x_row, off, V, VB, 0.0, BLOCK)
            d = k * tl.exp((x - m) - log_s) - shift - tl.where(off + cols == t, k * (1.0 - eps), 0.0)
            _store_chunk(x_row, off, V, VB, d, BLOCK, "evict_first")
    else:
        tl.store(LOSS + n, 0.0)
        for off in tl.range(0, V, BLOCK):
            _store_chunk(x_row, off, V, VB, tl.zeros([BLOCK], dtype=tl.float32), BLOCK, "")


@triton.jit
def _scale_inplace(X, G, R, C, CB, ld, PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    # R rows of C elements, ld apart (contiguous dlogits with one factor: a single row of N V),
    # times g[r] (PER_ROW) or g[0]. Programs stride over the [row, BLOCK chunk] tiles (a bounded
    # grid: one program per chunk was 800k programs at 16384 x 50304, whose scheduling alone took
    # 0.49 ms when the factor was 1); a factor of exactly 1 reads and writes nothing.
    chunks = tl.cdiv(C, BLOCK)
    tiles = R * chunks
    if not PER_ROW:
        s0 = tl.load(G).to(tl.float32)
        tiles = tl.where(s0 != 1.0, tiles, 0)
    for i in range(tl.program_id(0), tiles, tl.num_programs(0)):
        r = i // chunks
        off = (i - r * chunks) * BLOCK
        if PER_ROW:
            s = tl.load(G + r).to(tl.float32)
        else:
            s = s0
        if s != 1.0:
            row = X + r.to(tl.int64) * ld
            _store_chunk(row, off, C, CB, _load_chunk(row, off, C, CB, 0.0, BLOCK) * s, BLOCK, "")


def _attrs(attrs):
    """(ignore_index, reduction, label_smoothing): CHECKS' shared checks have validated them."""
    return (int(attrs.get("ignore_index", -100)), attrs.get("reduction", "mean"),
            float(attrs.get("label_smoothing", 0.0)))


def cross_entropy_forward(inputs, attrs):
    ignore, reduction, eps = _attrs(attrs)
    logits, targets = inputs[0], inputs[1].contiguous()
    logits, ld = _logits_rows(logits)
    N, V = logits.shape
    lse = torch.empty(N, dtype=stat_dtype(logits.dtype), device=logits.device)
    row_loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N:
        block = max(row_block(V), _GROUP.value)
        launch(_cross_entropy_fwd, (N,), logits, targets, lse, row_loss, V, _whole(V), ld, ignore, eps,
               SMOOTH=eps > 0, BLOCK=block, num_warps=4 if block <= 1024 else 8)
    if reduction == "none":
        loss = row_loss
    elif reduction == "sum":
        loss = row_loss.sum()
    else:  # 0 / 0 = NaN when every target is ignored, as torch
        loss = row_loss.sum() / (targets != ignore).sum()
    return [loss.to(stat_dtype(logits.dtype)), lse]  # float32 for 16-bit logits, like lse


def cross_entropy_backward(inputs, attrs):
    ignore, reduction, eps = _attrs(attrs)
    g, targets, lse, g_lse = (t.contiguous() for t in (inputs[0], inputs[2], inputs[3], inputs[4]))
    logits, ldx = _logits_rows(inputs[1])
    N, V = logits.shape
    # The gradient reaching every row's loss, kept on the device.
    if reduction == "sum":
        scale = g.float().reshape(1)
    elif reduction == "mean":
        scale = g.float().reshape(1) / (targets != ignore).sum()
    else:
        scale = g
    # rows as a matmul output's: the output layer's GEMMs read dlogits in place
    dlogits = matmul_output((N, V), logits.dtype, logits.device)
    if N and V:
        block = max(row_block(V), _GROUP.value)
        launch(_cross_entropy_bwd, (N,), g, scale, logits, targets, lse, g_lse, dlogits, V, _whole(V), ldx,
               dlogits.stride(0), ignore, eps, PER_ROW=reduction == "none",
               BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return [dlogits]


def _logits_row_stride(logits):
    """The stride between the rows of (N, V) logits whose rows are each contiguous and do not
    overlap (a row-padded matmul output, or a contiguous tensor; V for one row), else None: the
    rule of llmscratch_core's cross_entropy_row_stride."""
    ld = row_stride(logits)
    return ld if ld is not None and ld >= logits.shape[1] else None  # rows that do not overlap


def _logits_rows(logits):
    """logits and their row stride: in place when each row is contiguous, else a contiguous copy."""
    ld = _logits_row_stride(logits)
    if ld is None:
        logits = logits.contiguous()
        ld = logits.shape[1]
    return logits, ld


def _inplace_tiling(V, itemsize):
    """(BLOCK, num_warps) of _cross_entropy_inplace_fwd. Its row is read twice, and the second read
    comes from L2 only while the rows in flight fit there (50 MB on an H100); the programs per SM
    that registers allow set how many are in flight (register counts from triton's compiled
    kernels in the scratch sweep of bench/notes_triton_tuning.md). 4096-wide chunks at 16 warps
    take 31 registers (four programs per SM) where V is a multiple of 16, 58 otherwise (two). A
    row over 128 KiB takes 8192-wide chunks (64 registers, two programs per SM) where V is a
    multiple of 16; otherwise the chunk holding the row's last V % 16 elements loads them one by
    one, and at 8192 that took 105 registers (one program per SM). H100, bf16, the op with its
    restoring copy (`compare_backends.py --ops cross_entropy`, bench/results/nvidia-h100-6718bf9):
    16384 x 50304 at 89% of copy bandwidth, 8192 x 128256 at 85% (77% / 77% before the reversed
    pass, the evicting stores and these tilings)."""
    block = max(row_block(V), _GROUP.value)
    if block < 4096:
        return block, 4 if block <= 1024 else 8
    if V % 16 == 0 and V * itemsize > 128 * 1024:
        return 8192, 16
    return block, 16


def cross_entropy_inplace_forward(inputs, attrs):
    ignore, reduction, eps = _attrs(attrs)
    logits, targets = inputs[0], inputs[1].contiguous()
    ld = _logits_row_stride(logits)  # rows CHECKS accepted
    N, V = logits.shape
    row_loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    count = (targets != ignore).sum()  # on the device: the mean's 1/count is read by the kernel
    if N:
        block, warps = _inplace_tiling(V, logits.element_size())
        launch(_cross_entropy_inplace_fwd, (N,), logits, targets, row_loss, count, V, _whole(V), ld, ignore, eps,
               MEAN=reduction == "mean", SMOOTH=eps > 0, BLOCK=block, num_warps=warps)
    if reduction == "none":
        loss = row_loss
    elif reduction == "sum":
        loss = row_loss.sum()
    else:  # 0 / 0 = NaN when every target is ignored, as torch
        loss = row_loss.sum() / count
    return [loss.to(stat_dtype(logits.dtype))]


def cross_entropy_inplace_backward(inputs, attrs):
    _, reduction, _ = _attrs(attrs)
    g, dlogits = inputs[0].contiguous(), inputs[1]
    ld = _logits_row_stride(dlogits)  # rows CHECKS accepted
    N, V = dlogits.shape
    if dlogits.numel():
        per_row = reduction == "none"
        # one factor over contiguous dlogits: a single row (its stride unused: 0, which triton
        # knows divides 16, where N V might not and would cost the 16-byte loads)
        R, C, ld = (1, N * V, 0) if not per_row and ld == V else (N, V, ld)
        programs = num_programs(dlogits.device, R * triton.cdiv(C, ELEMENTWISE_BLOCK), per_sm=16)
        launch(_scale_inplace, (programs,), dlogits, g, R, C, _whole(C), ld, PER_ROW=per_row,
               BLOCK=ELEMENTWISE_BLOCK)
    return [dlogits]


KERNELS = {"cross_entropy": cross_entropy_forward, "cross_entropy_backward": cross_entropy_backward,
           "cross_entropy_inplace": cross_entropy_inplace_forward,
           "cross_entropy_inplace_backward": cross_entropy_inplace_backward}


def _check_targets(op, logits, targets, attrs):
    """The targets' range (the op "index_check": on a GPU the first bad target raises the CPU op's
    IndexError at the next synchronisation, as the CUDA kernels' check does)."""
    _core.call_native("index_check", [targets], {"kind": "target", "op": op, "size": logits.shape[1],
                                                 "ignore_index": int(attrs.get("ignore_index", -100))})


def _check_forward(op):
    """CHECKS entry of a forward {logits, targets}: the CPU and CUDA kernels' checks (the count,
    logits with no classes, a smoothing outside [0, 1], an unknown reduction), then the targets'
    range; for the in-place one also the logits' rows, which the gradient is written into."""
    def check(inputs, attrs):
        _core.ops.expect_inputs(inputs, 2, 2, op)
        _core.ops.check_cross_entropy_args(inputs[0], inputs[1], str(attrs.get("reduction", "mean")),
                                           float(attrs.get("label_smoothing", 0.0)))
        if op == "cross_entropy_inplace":
            _core.ops.check_cross_entropy_inplace_logits(inputs[0], op)
        _check_targets(op, inputs[0], inputs[1], attrs)
    return check


def _check_backward(inputs, attrs):
    """CHECKS entry of the backward: its five inputs as every backend checks them (the gradients'
    and lse's sizes and dtypes: a short g_lse was read past its end), then the targets' range."""
    _core.ops.check_cross_entropy_backward_args(inputs, str(attrs.get("reduction", "mean")),
                                                float(attrs.get("label_smoothing", 0.0)))
    _check_targets("cross_entropy_backward", inputs[1], inputs[2], attrs)


def _check_inplace_backward(inputs, attrs):
    """CHECKS entry of the in-place backward: {g_loss, dlogits} as every backend checks them."""
    _core.ops.expect_inputs(inputs, 2, 2, "cross_entropy_inplace_backward")
    _core.ops.check_cross_entropy_inplace_backward_args(inputs[0], inputs[1], str(attrs.get("reduction", "mean")))


CHECKS = {"cross_entropy": _check_forward("cross_entropy"),
          "cross_entropy_inplace": _check_forward("cross_entropy_inplace"),
          "cross_entropy_backward": _check_backward,
          "cross_entropy_inplace_backward": _check_inplace_backward}
