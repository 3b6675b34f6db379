"""Embedding lookup and its weight gradient.

    forward   out[n, :] = weight[ids[n], :]
    backward  dweight[v, :] = sum over n with ids[n] == v of grad[n, :]

Shapes: weight (V, C), ids int32/int64 of any shape (N = ids.numel()) -> out ids.shape + (C,);
grad (ids.shape..., C) -> dweight (V, C).
Registry ops (cpp/ops/embedding.cpp): "embedding" {weight, ids} -> {out};
"embedding_backward" {grad, ids} attr num_weights = V -> {dweight}.

Kernels: forward, one program per (token, chunk of C) copying one row. Backward without atomics,
so it is deterministic and sums in the CPU op's order: torch sorts the token positions by id
(stable, so each id's positions stay in token order) and counts each id; then one program per
(vocabulary row, chunk of C) adds its tokens' gradient rows in float32 and writes the row once
(zeros for ids that never occur). Limit: ids are not range-checked on the device (a host
synchronisation): an id outside [0, V) gives a zero row in the forward and is skipped by the
backward.
"""
import torch
import triton
import triton.language as tl

_BLOCK_C = 1024  # channels per program


@triton.jit
def _embedding_fwd(W, IDS, OUT, V, C, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < C
    v = tl.load(IDS + n).to(tl.int64)
    ok = (v >= 0) & (v < V)
    row = tl.load(W + tl.where(ok, v, 0) * C + cols, mask=mask, other=0.0)  # weight[ids[n], :]
    tl.store(OUT + n * C + cols, tl.where(ok, row, 0.0).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _embedding_bwd(G, ORDER, START, COUNT, DW, C, BLOCK: tl.constexpr):
    v = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < C
    begin = tl.load(START + v)
    count = tl.load(COUNT + v)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.range(0, count):
        n = tl.load(ORDER + begin + k).to(tl.int64)  # a token position with ids[n] == v
        acc += tl.load(G + n * C + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DW + v * C + cols, acc.to(DW.dtype.element_ty), mask=mask)


def _ids(ids, op):
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: ids must be int32 or int64, got {ids.dtype}")
    return ids.contiguous().reshape(-1)


def embedding_forward(inputs, attrs):
    weight = inputs[0].contiguous()
    if weight.dim() != 2:
        raise ValueError(f"embedding: weight must be (V, C), got shape {tuple(weight.shape)}")
    ids = _ids(inputs[1], "embedding")
    V, C = weight.shape
    out = torch.empty((ids.numel(), C), dtype=weight.dtype, device=weight.device)
    if ids.numel() and C:
        _embedding_fwd[(ids.numel(), triton.cdiv(C, _BLOCK_C))](weight, ids, out, V, C,
                                                                BLOCK=_BLOCK_C)
    return [out.reshape(*inputs[1].shape, C)]


def embedding_backward(inputs, attrs):
    V = int(attrs["num_weights"])
    if V < 0:
        raise ValueError(f"embedding_backward: num_weights must be >= 0, got {V}")
    grad = inputs[0].contiguous()
    ids = _ids(inputs[1], "embedding_backward")
    C = grad.shape[-1] if grad.dim() else 0
    if grad.numel() != ids.numel() * C:
        raise ValueError(f"embedding_backward: grad of shape {tuple(grad.shape)} does not match "
                         f"ids of shape {tuple(inputs[1].shape)} plus C = {C}")
    dweight = torch.empty((V, C), dtype=grad.dtype, device=grad.device)
    if V and C:
        ids64 = ids.to(torch.int64)
        # ids outside [0, V) go to a bin past the end that no program reads.
        binned = torch.where((ids64 >= 0) & (ids64 < V), ids64, V)
        order = torch.sort(binned, stable=True).indices
        count = torch.bincount(binned, minlength=V + 1)[:V]
        start = torch.cumsum(count, 0) - count
        _embedding_bwd[(V, triton.cdiv(C, _BLOCK_C))](grad, order, start, count, dweight, C,
                                                       BLOCK=_BLOCK_C)
    return [dweight]


KERNELS = {"embedding": embedding_forward, "embedding_backward": embedding_backward}
