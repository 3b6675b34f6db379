"""Embedding lookup and its weight gradient.

    forward   out[n, :] = weight[ids[n], :]
    backward  dweight[v, :] = sum over n with ids[n] == v of grad[n, :]

Shapes: weight (V, C), ids int32/int64 of any shape (N = ids.numel()) -> out ids.shape + (C,);
grad (ids.shape..., C) -> dweight (V, C).
Registry ops (cpp/ops/embedding.cpp): "embedding" {weight, ids} -> {out};
"embedding_backward" {grad, ids} attr num_weights = V -> {dweight}.

Forward: one program per (ROWS tokens, block of C) copies the tokens' weight rows (a gather), over
[ROWS, BLOCK_C] tiles of _TILE elements: BLOCK_C is C rounded up to a power of 2, at most 256
(C = 768 is three whole blocks), and ROWS = _TILE / BLOCK_C.

Backward: the CUDA backend's design (cuda/embedding.cu) in three kernels, without float atomics
(two runs give the same bits) and without sorting all tokens:
  1. counting: int atomics count each id's tokens and hand each token a ticket (0, 1, ... in
     arrival order); a row's first _SLOTS tokens keep their positions in slots of their own, and a
     row that passes _SLOTS tokens (a long row) is listed;
  2. short rows: every vocabulary row of at most _SLOTS tokens (nearly all rows of a large
     vocabulary) is written whole: its slots sorted (a sorting network), its tokens' rows added
     in token order in float32, zeros for a row no token has;
  3. long rows: one persistent grid that hands out its work through atomic counters (a program
     waits only for work that a running program has taken, so no program waits on one that has
     not started; the interpreter runs its programs one after another, and the first takes all
     the work):
       a. the layout, by every program alike: each long row of at most _SORT_MAX tokens (a medium
          row) owns a segment of a token buffer, each long row ceil(tokens / _PIECE) pieces;
       b. each token of a medium row writes its position into its row's segment at its ticket;
       c. each medium row's segment is sorted (tl.sort), once every token is in place;
       d. pieces, once every segment is sorted: a medium row's piece j is its sorted tokens
          [_PIECE j, _PIECE (j + 1)); a big row's (more than _SORT_MAX tokens: "," or a padding
          id) piece j is its tokens at positions [j P, (j + 1) P), P = ceil(N / pieces), listed
          from the ids _SCAN at a time. Each piece is summed in token order in float32; a row of
          one piece is written at once, a longer row's pieces go to a float32 buffer and the
          program that finishes a row's last piece adds them in order and writes the row.
The sums: a row of at most _PIECE tokens in token order; a longer row piece by piece, each piece
in token order and the pieces in order (backward_reference in the tests). The uniform ids of a
large vocabulary have no long row: step 3's programs read the long-row count and leave.
On a GPU (Hopper on) the kernels chain by programmatic dependent launch, in the order 1, 3, 2:
step 3 is launched while the counting runs and waits on it (gdc_wait), then lets step 2 start
(gdc_launch_dependents), so a long row's serial phases run beside the short rows instead of
after them; step 2 needs only the counts and slots, which every step 3 program has seen by then
(the same wait covers them). Step 2 moves nearly all the bytes: its programs hold
[ROWS, BLOCK_C] tiles of _ROWS_TILE elements and load their rows' first two tokens at once, a
further one only where some row of the tile has it: all eight at once took 106 us against 81 on
an H200, tiles of 2048 elements 120 us against 109 on an H100, at V50304 C1280 N65536 bf16
(bench/notes_triton_tuning.md).
Ids outside [0, V): the forward runs the native backend's range check first (CHECKS: the op
"index_check", which on a GPU records the first bad id and raises the CPU op's IndexError at the
next synchronisation, as the CUDA kernels do) and writes a row of NaN for such an id; the backward
skips them. Temporaries: about 14 bytes a token and 40 a vocabulary row of int32, and the
pieces' buffer, N / 16 rows of C float32 (touched only by rows of more than _PIECE tokens).
Slow pattern (correct): a big row's pieces read all N ids between them, so (big rows) x N id
reads in all, at most N^2 / _SORT_MAX.
"""
import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from . import interpreted
from ._common import cuda_index, dtype_name, launch, num_programs, sm90_or_later


# Elements per program: 32 per thread at 4 warps, four 16-byte loads of bf16 in flight each.
_TILE = 4096
# Channels per block: a power of 2 that divides the common widths (768, 1024, 1536, ...), so that
# few lanes are masked off.
_MAX_BLOCK_C = 256


def _block_c(C):
    # At least 16 channels: with C = 4 and one token, a [1024, 4] tile crashed the Triton of
    # torch 2.11 (an assertion in its coalescing pass). Narrow tiles and N = 1 compiled as a
    # constant (the backward kernels' do_not_specialize) are both avoided since.
    return min(max(triton.next_power_of_2(C), 16), _MAX_BLOCK_C)


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


# Backward: a row's first _SLOTS tokens keep their positions in slots (a row of more is a long
# row); a long row of more than _PIECE tokens is summed in pieces of _PIECE; a long row of more
# than _SORT_MAX tokens (a big row) is never sorted, its pieces list its tokens from the ids,
# _SCAN ids at a time.
_SLOTS = 8
_PIECE = 32
_SORT_MAX = 1024
_SCAN = 1024
_COUNT_BLOCK = 256  # ids per program of the counting kernel
_ROWS_TILE = 1024  # elements per program of the short rows' kernel, on _SHORT_WARPS warps
# 8 elements a thread (one 16-byte bf16 vector): 81.7 us against 83.7 on 2 warps (H200)
_SHORT_WARPS = 4
_LAYOUT = 1024  # long rows a step of the layout
_LONG_PROGRAMS_PER_SM = 4
# after count[V] (the number of long rows): the tokens past their row's slots (the counting
# kernel's), work taken and work done for the scatter (b) and the sort (c), pieces taken (d); then
# from count[V + _COUNTERS] one per long row, its pieces done
_COUNTERS = 8


@triton.jit
def _workspace(WS, N, V, max_long):
    """The int32 temporaries, one buffer: the tokens' tickets, the medium rows' segments, the
    tokens past their row's slots, each long row's index by id, the slots, the long rows' ids, the
    three layouts (segment, piece and buffer starts, max_long each) and the big rows' lists
    (_SCAN a program)."""
    ticket = WS
    seg = ticket + N
    over = seg + N
    row_of = over + N
    slots = row_of + V
    long_ids = slots + V.to(tl.int64) * 8
    seg_start = long_ids + max_long
    piece_start = seg_start + max_long
    part_start = piece_start + max_long
    scratch = part_start + max_long
    return ticket, seg, over, row_of, slots, long_ids, seg_start, piece_start, part_start, scratch


def _workspace_size(N, V, max_long, programs):
    return 3 * N + 9 * V + 4 * max_long + programs * _SCAN


@triton.jit(do_not_specialize=["N", "V", "max_long"])
def _embedding_count(IDS, COUNT, WS, N, V, max_long, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # count[v] = tokens of id v (zeroed before), ticket[n] = the order in which token n was
    # counted among its id's, slots[v, t] = the t-th token of id v to be counted for t < _SLOTS;
    # an id whose count passes _SLOTS goes on the long-row list (count[V] of them), and each token
    # past its row's slots on the list `over` (count[V + 1] of them).
    if PDL:
        gdc_launch_dependents()
    ticket, seg, over, row_of, slots, long_ids, seg_start, piece_start, part_start, scratch = \
        _workspace(WS, N, V, max_long)
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = n < N
    v = tl.load(IDS + n, mask=inside, other=-1)
    if PDL:
        gdc_wait()  # the zeroed counts (the ids are the op's input, read before)
    ok = inside & (v >= 0) & (v < V)
    v = tl.where(ok, v, 0).to(tl.int32)
    t = tl.atomic_add(COUNT + v, 1, mask=ok, sem="relaxed")
    tl.store(ticket + n, t, mask=ok)
    tl.store(slots + v.to(tl.int64) * 8 + t, n, mask=ok & (t < 8))
    listed = ok & (t == 8)
    b = tl.atomic_add(COUNT + V + tl.zeros_like(n), 1, mask=listed, sem="relaxed")
    tl.store(long_ids + b, v, mask=listed)
    past = ok & (t >= 8)
    at = tl.atomic_add(COUNT + V + 1, tl.sum(past.to(tl.int32), 0))  # one atomic a program
    tl.store(over + at + tl.cumsum(past.to(tl.int32), 0) - 1, n, mask=past)


@triton.jit(do_not_specialize=["N", "V", "max_long"])
def _embedding_short_rows(G, COUNT, WS, DW, N, V, C, max_long, ROWS: tl.constexpr,
                          BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    # dweight[v, :] for ROWS rows of at most 8 tokens: the sum of grad[n, :] over the row's slots
    # in increasing n, zeros for none.
    # No gdc_wait: this kernel starts only once every long-rows program has passed its own wait
    # on the counting kernel (see embedding_backward), so the counts and slots are written; they
    # are read from L2 (.cg), past any line an SM's L1 kept from before.
    ticket, seg, over, row_of, slots, long_ids, seg_start, piece_start, part_start, scratch = \
        _workspace(WS, N, V, max_long)
    v = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    inside = v < V
    if WIDE:
        v = v.to(tl.int64)
    count = tl.load(COUNT + v, mask=inside, other=0, cache_modifier=".cg")
    short = inside & (count <= 8)
    # The slots are loaded beside the count, not after it (unused ones were never written; they
    # become INT32_MAX and sort last), then sorted by Batcher's odd-even merge network.
    s0 = _slot(slots, v, 0, count, inside)
    s1 = _slot(slots, v, 1, count, inside)
    s2 = _slot(slots, v, 2, count, inside)
    s3 = _slot(slots, v, 3, count, inside)
    s4 = _slot(slots, v, 4, count, inside)
    s5 = _slot(slots, v, 5, count, inside)
    s6 = _slot(slots, v, 6, count, inside)
    s7 = _slot(slots, v, 7, count, inside)
    s0, s1 = _order(s0, s1)
    s2, s3 = _order(s2, s3)
    s4, s5 = _order(s4, s5)
    s6, s7 = _order(s6, s7)
    s0, s2 = _order(s0, s2)
    s1, s3 = _order(s1, s3)
    s4, s6 = _order(s4, s6)
    s5, s7 = _order(s5, s7)
    s1, s2 = _order(s1, s2)
    s5, s6 = _order(s5, s6)
    s0, s4 = _order(s0, s4)
    s1, s5 = _order(s1, s5)
    s2, s6 = _order(s2, s6)
    s3, s7 = _order(s3, s7)
    s2, s4 = _order(s2, s4)
    s3, s5 = _order(s3, s5)
    s1, s2 = _order(s1, s2)
    s3, s4 = _order(s3, s4)
    s5, s6 = _order(s5, s6)
    # The first two tokens' rows are loaded at once, a further token's only where some row of the
    # tile has it (a uniform id of a large vocabulary has one or two tokens; Triton has no indexed
    # list of tensors, hence the unrolled lines).
    most = tl.max(tl.where(short, count, 0), axis=0)
    acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    acc += _slot_row(G, s0, short & (count > 0), cols, cmask, C, WIDE)
    acc += _slot_row(G, s1, short & (count > 1), cols, cmask, C, WIDE)
    if most > 2:
        acc += _slot_row(G, s2, short & (count > 2), cols, cmask, C, WIDE)
    if most > 3:
        acc += _slot_row(G, s3, short & (count > 3), cols, cmask, C, WIDE)
    if most > 4:
        acc += _slot_row(G, s4, short & (count > 4), cols, cmask, C, WIDE)
    if most > 5:
        acc += _slot_row(G, s5, short & (count > 5), cols, cmask, C, WIDE)
    if most > 6:
        acc += _slot_row(G, s6, short & (count > 6), cols, cmask, C, WIDE)
    if most > 7:
        acc += _slot_row(G, s7, short & (count > 7), cols, cmask, C, WIDE)
    # streaming store: dweight is not read again here
    tl.store(DW + v[:, None] * C + cols[None, :], acc.to(DW.dtype.element_ty),
             mask=short[:, None] & cmask[None, :], cache_modifier=".cs")


@triton.jit
def _slot(slots, v, t: tl.constexpr, count, inside):
    # slot t of rows v, INT32_MAX where unused
    n = tl.load(slots + v * 8 + t, mask=inside, other=0, cache_modifier=".cg")
    return tl.where(count > t, n, 2147483647)


@triton.jit
def _order(a, b):
    return tl.minimum(a, b), tl.maximum(a, b)


@triton.jit
def _slot_row(G, n, use, cols, cmask, C, WIDE: tl.constexpr):
    # grad[n, cols] as float32 for the rows where use, else 0
    if WIDE:
        n = n.to(tl.int64)
    g = tl.load(G + n[:, None] * C + cols[None, :], mask=use[:, None] & cmask[None, :], other=0.0,
                eviction_policy="evict_first")
    return g.to(tl.float32)


@triton.jit
def _add_rows(acc, G, LIST, count, cols, cmask, C, PIECE: tl.constexpr, WIDE: tl.constexpr):
    # acc + grad[LIST[t], cols] for t = 0 .. count - 1 (count <= PIECE), added in that order; the
    # loads are one unrolled block, so the compiler can issue them before the first add
    for t in tl.static_range(PIECE):
        used = count > t
        n = tl.load(LIST + t, mask=used, other=0, cache_modifier=".cg")
        if WIDE:
            n = n.to(tl.int64)
        # (where, not &: the interpreter rejects a block mask & a scalar as a mask)
        g = tl.load(G + n * C + cols, mask=tl.where(used, cmask, False), other=0.0)
        acc += g.to(tl.float32)
    return acc


@triton.jit
def _sort_segment(SEG, SLOTS, count, SIZE: tl.constexpr):
    # SEG[0 .. count) = the row's tokens in increasing positions: tickets 0..7 from its slots, the
    # later ones from SEG (count <= SIZE)
    i = tl.arange(0, SIZE)
    first = tl.load(SLOTS + i, mask=i < 8, other=0)
    later = tl.load(SEG + i, mask=(i >= 8) & (i < count), other=2147483647, cache_modifier=".cg")
    x = tl.where(i < 8, first, later)
    tl.store(SEG + i, tl.sort(x), mask=i < count)


@triton.jit
def _wait_for(COUNTER, target):
    # until COUNTER reaches target: work that running programs have taken (see step 3)
    while tl.atomic_add(COUNTER, 0, sem="acquire") < target:
        pass
    tl.debug_barrier()


@triton.jit(do_not_specialize=["N", "V", "max_long"])
def _embedding_long_rows(G, IDS, COUNT, WS, PARTS, DW, N, V, C, max_long, BLOCK_C: tl.constexpr,
                         SORT_MAX: tl.constexpr, PIECE: tl.constexpr, SCAN: tl.constexpr,
                         LAYOUT: tl.constexpr, WIDE: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()  # the counting kernel's results
        gdc_launch_dependents()  # the short rows may start: they need only the counts and slots
    m = tl.load(COUNT + V)
    if m > 0:
        ticket, seg, over, row_of, slots, long_ids, seg_start, piece_start, part_start, scratch = \
            _workspace(WS, N, V, max_long)
        scratch += tl.program_id(0) * SCAN
        counters = COUNT + V + 1
        row_done = COUNT + V + 8  # _COUNTERS
        # a. the layout, by every program (the same values): exclusive sums over the long rows
        tokens_before = 0
        pieces_before = 0
        parts_before = 0
        for base in range(0, m, LAYOUT):
            b = base + tl.arange(0, LAYOUT)
            listed = b < m
            vb = tl.load(long_ids + b, mask=listed, other=0)
            cb = tl.load(COUNT + vb, mask=listed, other=0)
            tokens = tl.where(cb <= SORT_MAX, cb, 0)
            pieces = (cb + PIECE - 1) // PIECE
            parts = tl.where(cb > PIECE, pieces, 0)
            tl.store(seg_start + b, tokens_before + tl.cumsum(tokens, 0) - tokens, mask=listed)
            tl.store(piece_start + b, pieces_before + tl.cumsum(pieces, 0) - pieces, mask=listed)
            tl.store(part_start + b, parts_before + tl.cumsum(parts, 0) - parts, mask=listed)
            tl.store(row_of + vb, b, mask=listed)
            tokens_before += tl.sum(tokens, 0)
            pieces_before += tl.sum(pieces, 0)
            parts_before += tl.sum(parts, 0)
        tl.debug_barrier()
        # Programs past the work of every phase leave (a few long rows: a few programs, not
        # hundreds that take nothing and wait on the counters).
        past = tl.load(counters + 0)
        if tl.program_id(0) < tl.maximum(tl.maximum(tl.cdiv(past, SCAN), m), pieces_before):
            # b. the medium rows' tokens past their slots into their segments, at their tickets
            # (the first 8 places stay empty: the sort takes those tokens from the slots)
            tiles = tl.cdiv(past, SCAN)
            k = tl.atomic_add(counters + 1, 1)
            while k < tiles:
                i = k * SCAN + tl.arange(0, SCAN)
                listed = i < past
                n = tl.load(over + i, mask=listed, other=0)
                v = tl.load(IDS + n, mask=listed, other=0).to(tl.int32)
                medium = listed & (tl.load(COUNT + v, mask=listed, other=0) <= SORT_MAX)
                row = tl.load(row_of + v, mask=medium, other=0)
                at = tl.load(seg_start + row, mask=medium, other=0)
                tl.store(seg + at + tl.load(ticket + n, mask=medium, other=0), n, mask=medium)
                tl.debug_barrier()
                tl.atomic_add(counters + 2, 1, sem="release")
                k = tl.atomic_add(counters + 1, 1)
            _wait_for(counters + 2, tiles)
            # c. each medium row's tokens (slots, then segment) sorted into its segment
            b = tl.atomic_add(counters + 3, 1)
            while b < m:
                v = tl.load(long_ids + b)
                cb = tl.load(COUNT + v)
                at = tl.load(seg_start + b)
                if cb <= 64:
                    _sort_segment(seg + at, slots + v.to(tl.int64) * 8, cb, 64)
                elif cb <= SORT_MAX:
                    _sort_segment(seg + at, slots + v.to(tl.int64) * 8, cb, SORT_MAX)
                tl.debug_barrier()
                tl.atomic_add(counters + 4, 1, sem="release")
                b = tl.atomic_add(counters + 3, 1)
            _wait_for(counters + 4, m)
            # d. the pieces
            q = tl.atomic_add(counters + 5, 1)
            while q < pieces_before:
                # the long row b of piece q: piece_start[b] <= q < piece_start[b + 1]
                lo = 0
                hi = m
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    right = tl.load(piece_start + mid) <= q
                    lo = tl.where(right, mid, lo)
                    hi = tl.where(right, hi, mid)
                b = lo
                j = q - tl.load(piece_start + b)
                v = tl.load(long_ids + b)
                cb = tl.load(COUNT + v)
                pieces = (cb + PIECE - 1) // PIECE
                part = tl.load(part_start + b) + j
                if WIDE:
                    v = v.to(tl.int64)
                    part = part.to(tl.int64)
                if cb <= SORT_MAX:
                    # a medium row's piece: its sorted tokens [j PIECE, j PIECE + PIECE)
                    listed = seg + tl.load(seg_start + b) + j * PIECE
                    tokens = tl.minimum(cb - j * PIECE, PIECE)
                    for c0 in range(0, C, BLOCK_C):
                        cols = c0 + tl.arange(0, BLOCK_C)
                        cmask = cols < C
                        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
                        acc = _add_rows(acc, G, listed, tokens, cols, cmask, C, PIECE, WIDE)
                        if pieces == 1:
                            tl.store(DW + v * C + cols, acc.to(DW.dtype.element_ty), mask=cmask)
                        else:
                            tl.store(PARTS + part * C + cols, acc, mask=cmask)
                else:
                    # a big row's piece: its tokens at positions [j span, j span + span), listed
                    # SCAN ids at a time and added PIECE rows at a time onto its row of PARTS
                    for c0 in range(0, C, BLOCK_C):
                        cols = c0 + tl.arange(0, BLOCK_C)
                        tl.store(PARTS + part * C + cols, tl.zeros([BLOCK_C], dtype=tl.float32),
                                 mask=cols < C)
                    # in int64: j span reaches N + pieces - 1, past 2^31 for N near it
                    span = tl.cdiv(N, pieces).to(tl.int64)
                    start = j.to(tl.int64) * span
                    end = tl.minimum(start + span, N)
                    for n0 in range(start, end, SCAN):
                        n = n0 + tl.arange(0, SCAN)
                        hit = (n < end) & (tl.load(IDS + n, mask=n < end, other=-1) == v)
                        tl.store(scratch + tl.cumsum(hit.to(tl.int32), 0) - 1, n.to(tl.int32),
                                 mask=hit)
                        tl.debug_barrier()
                        hits = tl.sum(hit.to(tl.int32), 0)
                        for h in range(0, hits, PIECE):
                            for c0 in range(0, C, BLOCK_C):
                                cols = c0 + tl.arange(0, BLOCK_C)
                                cmask = cols < C
                                acc = tl.load(PARTS + part * C + cols, mask=cmask, other=0.0)
                                acc = _add_rows(acc, G, scratch + h, tl.minimum(hits - h, PIECE),
                                                cols, cmask, C, PIECE, WIDE)
                                tl.store(PARTS + part * C + cols, acc, mask=cmask)
                        tl.debug_barrier()  # the list is read before the next step rewrites it
                if pieces > 1:
                    tl.debug_barrier()
                    if tl.atomic_add(row_done + b, 1, sem="acq_rel") == pieces - 1:
                        # the row's last piece: add its pieces in order
                        tl.debug_barrier()
                        first = tl.load(part_start + b)
                        if WIDE:
                            first = first.to(tl.int64)
                        for c0 in range(0, C, BLOCK_C):
                            cols = c0 + tl.arange(0, BLOCK_C)
                            cmask = cols < C
                            acc = tl.zeros([BLOCK_C], dtype=tl.float32)
                            for w0 in range(0, pieces, PIECE):
                                for t in tl.static_range(PIECE):
                                    use = tl.where(pieces > w0 + t, cmask, False)
                                    acc += tl.load(PARTS + (first + w0 + t) * C + cols, mask=use,
                                                   other=0.0, cache_modifier=".cg")
                            tl.store(DW + v * C + cols, acc.to(DW.dtype.element_ty), mask=cmask)
                q = tl.atomic_add(counters + 5, 1)


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
        block_c = _block_c(C)
        rows = _TILE // block_c
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
    if N >= 2**31 - _SCAN or V >= 2**31 - _COUNTERS:
        raise ValueError(f"embedding_backward (triton): at most 2^31 - {_SCAN} ids and "
                         f"2^31 - {_COUNTERS} rows, got {N} and {V}")
    dweight = torch.empty((V, C), dtype=grad.dtype, device=grad.device)
    if not (V and C):
        return [dweight]
    if not N:
        return [dweight.zero_()]
    dev = grad.device
    max_long = N // (_SLOTS + 1) + 1
    # the long rows' programs: a few an SM on a GPU (they mostly wait on loads); a handful in the
    # interpreter, which runs them one after another (the first takes all the work)
    programs = num_programs(dev, 1 << 30, per_sm=_LONG_PROGRAMS_PER_SM)
    count = torch.zeros(V + _COUNTERS + max_long, dtype=torch.int32, device=dev)
    ws = torch.empty(_workspace_size(N, V, max_long, programs), dtype=torch.int32, device=dev)
    # one float32 row a piece of the rows of more than _PIECE tokens: at most N / 32 + N / 33
    parts = torch.empty((N // _PIECE + N // (_PIECE + 1) + 1, C), dtype=torch.float32, device=dev)
    wide = max(N + _SCAN, V) * max(C, _SLOTS) >= 2**31
    pdl = _pdl(dev)
    launch(_embedding_count, (triton.cdiv(N, _COUNT_BLOCK),), ids, count, ws, N, V, max_long,
           BLOCK=_COUNT_BLOCK, PDL=bool(pdl), **pdl)
    block_c = _block_c(C)
    # The long rows are launched before the short rows, which start as soon as every long-rows
    # program has seen the counts: the two write different rows and run side by side, instead of
    # a long row's serial phases after all the short rows (17-23 us for one long row). The short
    # rows may finish first (by 200 us with Zipf ids); an op launched plainly after them still
    # waits for both, as the GPU tests see, reading dweight right after the call. (Holding the
    # short rows' grid open until the long rows end, one program waiting on them, cost 4 us on an
    # H200.) Every op here starts with a plain launch; an op that began with a dependent launch
    # would wait only on the short rows.
    launch(_embedding_long_rows, (programs,), grad, ids, count, ws, parts, dweight, N, V, C,
           max_long, BLOCK_C=block_c, SORT_MAX=_SORT_MAX, PIECE=_PIECE, SCAN=_SCAN,
           LAYOUT=_LAYOUT, WIDE=wide, PDL=bool(pdl), num_warps=4, **pdl)
    # (the interpreter takes tiles 8 times as large: it runs each program's few dozen block
    # operations one at a time, so its time goes with the number of programs)
    rows = _ROWS_TILE * (8 if interpreted() else 1) // block_c
    launch(_embedding_short_rows, (triton.cdiv(V, rows), triton.cdiv(C, block_c)), grad, count, ws,
           dweight, N, V, C, max_long, ROWS=rows, BLOCK_C=block_c, WIDE=wide,
           num_warps=_SHORT_WARPS, **pdl)
    return [dweight]


def _pdl(device) -> dict:
    """The launch option for programmatic dependent launch where the GPU has it (Hopper on; its
    griddepcontrol instructions need sm_90), none in the interpreter, and none while the stream is
    captured into a CUDA graph: there the short rows' edge to the next node would not cover the
    long rows, which the short rows overtake."""
    if interpreted() or device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return {}
    return {"launch_pdl": True} if sm90_or_later(cuda_index(device)) else {}


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
