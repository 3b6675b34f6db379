"""Embedding lookup and its weight gradient.

    forward   out[n, :] = weight[ids[n], :]
    backward  dweight[v, :] = sum over n with ids[n] == v of grad[n, :]

Shapes: weight (V, C), ids int32/int64 of any shape (N = ids.numel()) -> out ids.shape + (C,);
grad (ids.shape..., C) -> dweight (V, C).
Registry ops (cpp/ops/embedding.cpp): "embedding" {weight, ids} -> {out};
"embedding_backward" {grad, ids} attr num_weights = V -> {dweight}.

Kernels. Programs work on [ROWS, BLOCK_C] tiles of _TILE elements: BLOCK_C is C rounded up to a
power of 2, at most 256 (C = 768 is three whole blocks), and ROWS = _TILE / BLOCK_C.
Forward: one program per (ROWS tokens, block of C) copies the tokens' weight rows (a gather).
Backward, without atomics so that it is deterministic and sums in the CPU op's order: a small
kernel turns the ids into sort keys and torch sorts them (stable, so each id's token positions
stay in increasing order); a second small kernel finds where each id's run of sorted keys starts
(start[v], a binary search per vocabulary row); then one program per (ROWS vocabulary rows,
block of C) writes those rows of dweight once, each lane row adding its run's gradient rows in
token order in float32 (zeros for a row no token has). The binary searches are done once per row
there, not in every program: when each sum program searched for its runs' ends and each zero
program for its rows, the kernel took 185 us at V = 50304, C = 1280, N = 65536 bf16 on the H100.
Limits: ids are not range-checked on the device (a host synchronisation): an id outside [0, V)
gives a zero row in the forward and is skipped by the backward. An id's run is summed serially by
one lane row, so an id that takes a large share of the tokens bounds the backward's time.
"""
import torch
import triton
import triton.language as tl

# Elements per program: 32 per thread at 4 warps, four 16-byte loads of bf16 in flight each.
_TILE = 4096
# Channels per block: a power of 2 that divides the common widths (768, 1024, 1536, ...), so that
# few lanes are masked off.
_MAX_BLOCK_C = 256
_KEYS_BLOCK = 1024  # ids per program of the sort-key kernel


def _tile(C):
    # At least 16 channels: with C = 4 and one token, the backward's [1024, 4] tile crashed the
    # Triton of torch 2.11 (an assertion in its coalescing pass). Narrow tiles and N = 1 compiled
    # as a constant (see _group_starts' decorator) are both avoided since.
    block_c = min(max(triton.next_power_of_2(C), 16), _MAX_BLOCK_C)
    return _TILE // block_c, block_c


@triton.jit
def _embedding_fwd(W, IDS, OUT, N, V, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (cols < C)[None, :]
    v = tl.load(IDS + n, mask=n < N, other=-1)
    ok = (v >= 0) & (v < V)
    row = tl.load(W + v.to(tl.int64)[:, None] * C + cols[None, :], mask=ok[:, None] & cmask,
                  other=0.0)  # weight[ids[n], :], zeros for an id out of range
    tl.store(OUT + n[:, None] * C + cols[None, :], row, mask=(n < N)[:, None] & cmask)


@triton.jit
def _embedding_keys(IDS, KEYS, N, V, key_shift, BLOCK: tl.constexpr):
    # ids out of range become V: they sort after every valid id and no program sums them.
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(IDS + n, mask=n < N, other=0).to(tl.int64)
    v = tl.where((v >= 0) & (v < V), v, V)
    tl.store(KEYS + n, (v + key_shift).to(KEYS.dtype.element_ty), mask=n < N)


@triton.jit
def _lower_bound(KEYS, N, target):
    # First position in the sorted KEYS[0:N] (N >= 1) whose key is >= target, for every lane.
    # Branch-free: the window halves each step alike for all lanes, so the loop is uniform.
    base = tl.zeros_like(target)
    n = N
    while n > 1:
        half = n // 2
        base = tl.where(tl.load(KEYS + base + half).to(tl.int64) < target, base + half, base)
        n -= half
    return base + (tl.load(KEYS + base).to(tl.int64) < target).to(tl.int64)


@triton.jit(do_not_specialize=["N"])  # see _tile
def _group_starts(KEYS, START, N, V, key_shift, BLOCK: tl.constexpr):
    # START[v] = first sorted position whose key is >= v (v = 0..V), so id v's tokens are the
    # sorted positions [START[v], START[v + 1]).
    v = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(START + v, _lower_bound(KEYS, N, v + key_shift).to(tl.int32), mask=v <= V)


@triton.jit
def _embedding_bwd(G, ORDER, START, DW, V, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    v = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (cols < C)[None, :]
    k0 = tl.load(START + v, mask=v < V, other=0)
    count = tl.load(START + v + 1, mask=v < V, other=0) - k0  # 0 past V and for unused ids
    acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    n = tl.load(ORDER + k0, mask=count > 0, other=0).to(tl.int64)  # the run's first token
    for j in tl.range(0, tl.max(count, axis=0)):
        g = tl.load(G + n[:, None] * C + cols[None, :], mask=(j < count)[:, None] & cmask,
                    other=0.0)
        # The next token's position is read while this row is in flight, so each step waits on
        # one load, not two in a row.
        n = tl.load(ORDER + k0 + j + 1, mask=j + 1 < count, other=0).to(tl.int64)
        acc += g.to(tl.float32)
    tl.store(DW + v[:, None] * C + cols[None, :], acc.to(DW.dtype.element_ty),
             mask=(v < V)[:, None] & cmask)


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
    N = ids.numel()
    out = torch.empty((N, C), dtype=weight.dtype, device=weight.device)
    if N and C:
        rows, block_c = _tile(C)
        _embedding_fwd[(triton.cdiv(N, rows), triton.cdiv(C, block_c))](
            weight, ids, out, N, V, C, ROWS=rows, BLOCK_C=block_c, num_warps=4)
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
    N = ids.numel()
    dweight = torch.empty((V, C), dtype=grad.dtype, device=grad.device)
    if not (V and C):
        return [dweight]
    if not N:
        return [dweight.zero_()]
    # Keys 0..V shifted down by half the range of the narrowest signed type that holds them: the
    # radix sort makes one pass per key byte (two for a vocabulary of up to 65535 rows).
    key_dtype = next(t for t in (torch.int16, torch.int32, torch.int64)
                     if V < 1 << torch.iinfo(t).bits)
    key_shift = -(1 << (torch.iinfo(key_dtype).bits - 1))
    keys = torch.empty(N, dtype=key_dtype, device=grad.device)
    _embedding_keys[(triton.cdiv(N, _KEYS_BLOCK),)](ids, keys, N, V, key_shift, BLOCK=_KEYS_BLOCK)
    keys, order = torch.sort(keys, stable=True)
    start = torch.empty(V + 1, dtype=torch.int32, device=grad.device)
    _group_starts[(triton.cdiv(V + 1, _KEYS_BLOCK),)](keys, start, N, V, key_shift,
                                                      BLOCK=_KEYS_BLOCK)
    rows, block_c = _tile(C)
    _embedding_bwd[(triton.cdiv(V, rows), triton.cdiv(C, block_c))](
        grad, order, start, dweight, V, C, ROWS=rows, BLOCK_C=block_c, num_warps=4)
    return [dweight]


KERNELS = {"embedding": embedding_forward, "embedding_backward": embedding_backward}
