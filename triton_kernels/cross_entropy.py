"""cross_entropy: log-softmax fused with the negative log-likelihood, forward and backward.

    lse[n]  = m + log sum_v exp(logits[n, v] - m),   m = max_v logits[n, v]
    loss[n] = (1 - eps) (lse[n] - logits[n, t[n]]) + eps (lse[n] - mean_v logits[n, v])
              (label smoothing eps, torch's definition); 0 where t[n] == ignore_index
    reduction "none" -> loss (N,); "sum" -> sum_n loss; "mean" -> sum_n loss / #(not ignored)
    backward, p = exp(logits - lse), k[n] the gradient reaching loss[n] (g[n], g or g / count;
    0 for ignored rows), h[n] that of the lse output:
      dlogits[n, v] = (k[n] + h[n]) p[n, v] - k[n] eps / V - k[n] (1 - eps) [v == t[n]]

Shapes: logits (N, V) (N = B*T, V vocab), targets (N,) int32/int64, lse (N,).
Registry ops (cpp/ops/cross_entropy.cpp): "cross_entropy" {logits, targets} attrs ignore_index,
reduction, label_smoothing -> {loss, lse}; "cross_entropy_backward" {g_loss, logits, targets, lse,
g_lse} same attrs -> {dlogits}.

Kernels: one program per row walking V in chunks of up to 4096 (any V): the forward keeps an
online max and rescaled sum per lane (and the row sum with label smoothing) and writes one lse
and one float32 row loss, never the probabilities; torch reduces the row losses on the device
(no host synchronisation, the "mean" count included). The backward writes dlogits in one pass
from the saved lse. lse is float32 for 16-bit logits. Limit: targets are not range-checked on
the device (that would need a host synchronisation); an out-of-range target reads logit 0.
References: Liger-Kernel's fused linear cross-entropy; llm.c's fused classifier.
"""
import torch
import triton
import triton.language as tl

from ._common import row_block, stat_dtype

_REDUCTIONS = ("none", "sum", "mean")


@triton.jit
def _cross_entropy_fwd(X, TGT, LSE, LOSS, V, ignore_index, eps,
                       SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    x_row = X + n * V  # points at logits[n, :]
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    xsum = tl.zeros([BLOCK], dtype=tl.float32)
    for off in tl.range(0, V, BLOCK):
        mask = off + cols < V
        x = tl.load(x_row + off + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        seen = m_new > float("-inf")
        s = tl.where(seen, s * tl.exp(m - m_new) + tl.exp(x - m_new), 0.0)
        m = m_new
        if SMOOTH:
            xsum += tl.where(mask, x, 0.0)
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - m_row), 0.0), axis=0))
    t = tl.load(TGT + n).to(tl.int64)
    valid = t != ignore_index
    x_t = tl.load(x_row + t, mask=valid & (t >= 0) & (t < V), other=0.0).to(tl.float32)
    loss = (1.0 - eps) * (lse - x_t)
    if SMOOTH:
        loss += eps * (lse - tl.sum(xsum, axis=0) / V)
    tl.store(LSE + n, lse.to(LSE.dtype.element_ty))
    tl.store(LOSS + n, tl.where(valid, loss, 0.0))


@triton.jit
def _cross_entropy_bwd(G, SCALE, X, TGT, LSE, GLSE, DX, V, ignore_index, eps,
                       PER_ROW: tl.constexpr, HAS_GLSE: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    t = tl.load(TGT + n).to(tl.int64)
    if PER_ROW:
        k = tl.load(G + n).to(tl.float32)
    else:
        k = tl.load(SCALE).to(tl.float32)
    k = tl.where(t != ignore_index, k, 0.0)
    kp = k
    if HAS_GLSE:
        kp += tl.load(GLSE + n).to(tl.float32)
    lse = tl.load(LSE + n).to(tl.float32)
    off_all = k * eps / V
    cols = tl.arange(0, BLOCK)
    for off in tl.range(0, V, BLOCK):
        v = off + cols
        mask = v < V
        x = tl.load(X + n * V + v, mask=mask, other=0.0).to(tl.float32)  # logits[n, v]
        d = kp * tl.exp(x - lse) - off_all - tl.where(v == t, k * (1.0 - eps), 0.0)
        tl.store(DX + n * V + v, d.to(DX.dtype.element_ty), mask=mask)


def _attrs(attrs, op):
    reduction = attrs.get("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got '{reduction}'")
    eps = float(attrs.get("label_smoothing", 0.0))
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {eps}")
    return int(attrs.get("ignore_index", -100)), reduction, eps


def _check(op, logits, targets):
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{op}: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: targets must be int32 or int64, got {targets.dtype}")


def cross_entropy_forward(inputs, attrs):
    ignore, reduction, eps = _attrs(attrs, "cross_entropy")
    logits, targets = inputs[0].contiguous(), inputs[1].contiguous()
    _check("cross_entropy", logits, targets)
    N, V = logits.shape
    lse = torch.empty(N, dtype=stat_dtype(logits.dtype), device=logits.device)
    row_loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N:
        block = row_block(V)
        _cross_entropy_fwd[(N,)](logits, targets, lse, row_loss, V, ignore, eps,
                                 SMOOTH=eps > 0, BLOCK=block, num_warps=4 if block <= 1024 else 8)
    if reduction == "none":
        loss = row_loss
    elif reduction == "sum":
        loss = row_loss.sum()
    else:  # 0 / 0 = NaN when every target is ignored, as torch
        loss = row_loss.sum() / (targets != ignore).sum()
    return [loss.to(stat_dtype(logits.dtype)), lse]  # float32 for 16-bit logits, like lse


def cross_entropy_backward(inputs, attrs):
    ignore, reduction, eps = _attrs(attrs, "cross_entropy_backward")
    g, logits, targets, lse = (t.contiguous() for t in inputs[:4])
    g_lse = inputs[4].contiguous() if inputs[4] is not None else None
    _check("cross_entropy_backward", logits, targets)
    N, V = logits.shape
    if g.numel() != (N if reduction == "none" else 1) or lse.numel() != N:
        raise ValueError(f"cross_entropy_backward: gradients of shapes {tuple(g.shape)} and lse "
                         f"{tuple(lse.shape)} do not match N = {N}")
    # The gradient reaching every row's loss, kept on the device.
    if reduction == "sum":
        scale = g.float().reshape(1)
    elif reduction == "mean":
        scale = g.float().reshape(1) / (targets != ignore).sum()
    else:
        scale = g
    dlogits = torch.empty_like(logits)
    if N and V:
        block = row_block(V)
        _cross_entropy_bwd[(N,)](g, scale, logits, targets, lse,
                                 g_lse if g_lse is not None else lse, dlogits, V, ignore, eps,
                                 PER_ROW=reduction == "none", HAS_GLSE=g_lse is not None,
                                 BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return [dlogits]


KERNELS = {"cross_entropy": cross_entropy_forward, "cross_entropy_backward": cross_entropy_backward}
