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
Backward, without atomics so that it is deterministic and sums in the CPU op's order (a run of
more than _CHUNK tokens: in pieces of that order, added in order): a small kernel turns the ids
into sort keys and torch sorts them (stable, so each id's token positions stay in increasing
order); a second small kernel finds where each id's run of sorted keys starts
(start[v], a binary search per vocabulary row). A run longer than _CHUNK tokens (a frequent id:
real text puts a few percent of its tokens on "," or " the") is cut where the sorted positions
cross a multiple of _CHUNK, and one program per (chunk, block of C) sums the pieces inside its
chunk into a float32 buffer. Then one program per (ROWS vocabulary rows, block of C) writes those
rows of dweight once: each lane row adds its run's gradient rows in token order in float32, or
its long run's pieces in chunk order, or writes zeros for a row no token has. The binary searches
are done once per row there, not in every program: when each sum program searched for its runs'
ends and each zero program for its rows, the kernel took 185 us at V = 50304, C = 1280,
N = 65536 bf16 on the H100. Before the pieces, a lane row walked its whole run: with text-like
ids (the most frequent 3.7% of the tokens) the backward ran at 0.74x torch.
Ids outside [0, V): the forward runs the native backend's range check first (CHECKS: the op
"index_check", which on a GPU records the first bad id and raises the CPU op's IndexError at the
next synchronisation, as the CUDA kernels do) and writes a row of NaN for such an id; the backward
skips them. The pieces buffer holds two float32 rows per chunk of _CHUNK tokens (N C / 4 bytes).
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import dtype_name, launch


# Elements per program: 32 per thread at 4 warps, four 16-byte loads of bf16 in flight each.
_TILE = 4096
# Channels per block: a power of 2 that divides the common widths (768, 1024, 1536, ...), so that
# few lanes are masked off.
_MAX_BLOCK_C = 256
_KEYS_BLOCK = 1024  # ids per program of the sort-key kernel
_CHUNK = 32  # sorted positions per chunk: a longer run is summed in pieces


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
                  other=float("nan"))  # weight[ids[n], :], NaN for an id out of range
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
def _embedding_pieces(G, KEYS, ORDER, START, PIECES, V, C, key_shift, CHUNK: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    # The chunk [q * CHUNK, (q + 1) * CHUNK) of the sorted positions: the pieces inside it of runs
    # longer than CHUNK (each touches the chunk's first or last position), PIECES[2q] for the run
    # at the chunk's start, PIECES[2q + 1] for one that begins inside it.
    q = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    nvalid = tl.load(START + V).to(tl.int64)
    p0 = q * CHUNK
    if p0 < nvalid:
        p1 = tl.minimum(p0 + CHUNK, nvalid)
        for slot in tl.static_range(2):
            if slot == 0:
                v = tl.load(KEYS + p0).to(tl.int64) - key_shift
            else:
                v = tl.load(KEYS + p1 - 1).to(tl.int64) - key_shift
            s = tl.load(START + v).to(tl.int64)
            e = tl.load(START + v + 1).to(tl.int64)
            if (e - s > CHUNK) & ((slot == 0) | (s > p0)):
                acc = tl.zeros([BLOCK_C], dtype=tl.float32)
                for k in tl.range(tl.maximum(s, p0), tl.minimum(e, p1)):
                    n = tl.load(ORDER + k).to(tl.int64)
                    acc += tl.load(G + n * C + cols, mask=cmask, other=0.0).to(tl.float32)
                tl.store(PIECES + (2 * q + slot) * C + cols, acc, mask=cmask)


@triton.jit
def _embedding_bwd(G, ORDER, START, PIECES, DW, V, C, CHUNK: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    v = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (cols < C)[None, :]
    k0 = tl.load(START + v, mask=v < V, other=0).to(tl.int64)
    count = tl.load(START + v + 1, mask=v < V, other=0) - k0  # 0 past V and for unused ids
    long = count > CHUNK
    short = tl.where(long, 0, count)
    acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    n = tl.load(ORDER + k0, mask=short > 0, other=0).to(tl.int64)  # the run's first token
    for j in tl.range(0, tl.max(short, axis=0)):
        g = tl.load(G + n[:, None] * C + cols[None, :], mask=(j < short)[:, None] & cmask,
                    other=0.0)
        # The next token's position is read while this row is in flight, so each step waits on
        # one load, not two in a row.
        n = tl.load(ORDER + k0 + j + 1, mask=j + 1 < short, other=0).to(tl.int64)
        acc += g.to(tl.float32)
    # a long run adds its pieces, chunks q0 .. (k0 + count - 1) // CHUNK (a loop of no steps
    # where the rows have no long run)
    q0 = k0 // CHUNK
    pieces = tl.where(long, (k0 + count - 1) // CHUNK - q0 + 1, 0)
    for j in tl.range(0, tl.max(pieces, axis=0)):
        q = q0 + j
        acc += tl.load(PIECES + (2 * q + (k0 > q * CHUNK).to(tl.int64))[:, None] * C + cols[None, :],
                       mask=(j < pieces)[:, None] & cmask, other=0.0)
    tl.store(DW + v[:, None] * C + cols[None, :], acc.to(DW.dtype.element_ty),
             mask=(v < V)[:, None] & cmask)


def _ids(ids, op):
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: ids must be int32 or int64, got {dtype_name(ids.dtype)}")
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
        launch(_embedding_fwd, (triton.cdiv(N, rows), triton.cdiv(C, block_c)),
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
    launch(_embedding_keys, (triton.cdiv(N, _KEYS_BLOCK),), ids, keys, N, V, key_shift,
           BLOCK=_KEYS_BLOCK)
    keys, order = torch.sort(keys, stable=True)
    start = torch.empty(V + 1, dtype=torch.int32, device=grad.device)
    launch(_group_starts, (triton.cdiv(V + 1, _KEYS_BLOCK),), keys, start, N, V, key_shift,
           BLOCK=_KEYS_BLOCK)
    rows, block_c = _tile(C)
    chunks = triton.cdiv(N, _CHUNK)
    pieces = torch.empty((2 * chunks, C), dtype=torch.float32, device=grad.device)  # long runs only
    launch(_embedding_pieces, (chunks, triton.cdiv(C, block_c)), grad, keys, order, start, pieces,
           V, C, key_shift, CHUNK=_CHUNK, BLOCK_C=block_c, num_warps=4)
    launch(_embedding_bwd, (triton.cdiv(V, rows), triton.cdiv(C, block_c)), grad, order, start,
           pieces, dweight, V, C, CHUNK=_CHUNK, ROWS=rows, BLOCK_C=block_c, num_warps=4)
    return [dweight]


KERNELS = {"embedding": embedding_forward, "embedding_backward": embedding_backward}


def _check_ids(inputs, attrs):
    """CHECKS entry of the forward: the ids against the rows of a 2-D weight (the wrapper's own
    checks name any other shape)."""
    _core.ops.expect_inputs(inputs, 2, 2, "embedding")
    weight, ids = inputs[0], inputs[1]
    if weight.dim() == 2 and ids.dtype in (_core.DType.int32, _core.DType.int64):
        _core.call_native("index_check", [ids], {"kind": "id", "op": "embedding", "size": weight.shape[0]})


CHECKS = {"embedding": _check_ids,
          "embedding_backward": lambda inputs, attrs: _core.ops.expect_inputs(inputs, 2, 2, "embedding_backward")}
