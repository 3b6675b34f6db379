"""CUDA embedding (cuda/embedding.cu) against the CPU op and torch float64: the lookup (exact),
the weight gradient with many repeated ids (deterministic: two runs give the same bits), int32
and int64 ids, odd sizes, ids out of range, and autograd through the lookup."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn, rel_err, torch
from cuda_vs_cpu import FLOATS, ITEMSIZE, TOL, check, host, poison_next_allocation, ref_dtype, rounded

pytestmark = pytest.mark.cuda

CASES = [(1, 1, (1,)), (3, 5, (7,)), (10, 127, (4, 33)), (257, 768, (2, 64)), (5000, 96, (20000,)),
         (50304, 3, (3, 1023))]


def ids_for(V, shape, dtype=np.int64):
    ids = np.random.default_rng().integers(0, V, size=shape)
    ids.flat[: min(ids.size, 8)] = 0  # a repeated id, whatever V
    return ids.astype(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("V,C,shape", CASES)
def test_lookup_and_gradient_match_cpu_and_torch(V, C, shape, dtype):
    ids = ids_for(V, shape)
    check(lambda w, i: F.embedding(i, w), [randn(V, C), ids], dtype,
          lambda w, i: torch.nn.functional.embedding(i, w))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_backward_with_repeated_ids_is_deterministic(id_dtype, dtype):
    V, C, N = 37, 129, 40_000  # about a thousand tokens per id
    ids = ls.tensor(ids_for(V, (N,), id_dtype)).cuda()
    grad = ls.tensor(randn(N, C)).to(dtype=dtype).cuda()
    attrs = {"num_weights": V}
    a = _core.call("embedding_backward", [grad, ids], attrs)[0]
    b = _core.call("embedding_backward", [grad, ids], attrs)[0]
    assert tuple(a.shape) == (V, C) and a.dtype == dtype
    np.testing.assert_array_equal(host(a), host(b))
    ref = _core.call("embedding_backward", [grad.cpu().to(dtype=ref_dtype(dtype)), ids.cpu()], attrs)[0]
    # 16-bit: float32 accumulation, one rounding at the end
    assert rel_err(host(a), host(ref)) <= TOL[dtype]


def _run_lengths_ids(lengths, seed):
    """Ids with lengths[v] tokens of id v, in shuffled order."""
    ids = np.concatenate([np.full(n, v) for v, n in enumerate(lengths)])
    return np.random.default_rng(seed).permutation(ids)


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16, ls.float64])
def test_backward_with_runs_around_the_chunk_length(dtype):
    # Rows of up to 8 tokens are summed from their slots; longer ones from their sorted segments,
    # and a row of more than 32 tokens in pieces of 32: runs of 1..97 tokens (8, 9, 31, 32, 33,
    # 64, 65 among them) in shuffled order, against float64.
    lengths = [1, 31, 32, 33, 2, 64, 65, 5, 97, 1, 40, 8, 9]
    ids = _run_lengths_ids(lengths, seed=1) * 3 + 1  # ids 1, 4, 7, ...: rows between stay empty
    V, C = 3 * len(lengths) + 2, 24
    g = randn(len(ids), C)
    grad, gids = ls.tensor(g).to(dtype=dtype).cuda(), ls.tensor(ids).cuda()
    poison_next_allocation(V * C * ITEMSIZE[dtype])  # a row left unwritten reads NaN
    got = host(_core.call("embedding_backward", [grad, gids], {"num_weights": V})[0])
    ref = np.zeros((V, C))
    np.add.at(ref, ids, rounded(g, dtype))
    assert rel_err(got, ref) <= TOL[dtype]
    assert (got[[v for v in range(V) if v % 3 != 1 or v // 3 >= len(lengths)]] == 0).all()


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16, ls.float64])
def test_rows_of_one_token_copy_its_gradient_and_rows_of_none_are_zero(dtype):
    # Rows of at most 8 tokens are written from the tokens' slots; the rest on the side stream.
    # Here most rows have no token or one, some several, row 0 more than 8; every row of the
    # poisoned output must be written.
    V, C, N = 5000, 40, 3000
    ids = ids_for(V, (N,))
    ids[:12] = 0
    g = randn(N, C)
    grad, gids = ls.tensor(g).to(dtype=dtype).cuda(), ls.tensor(ids).cuda()
    poison_next_allocation(V * C * ITEMSIZE[dtype])
    got = host(_core.call("embedding_backward", [grad, gids], {"num_weights": V})[0])
    counts = np.bincount(ids, minlength=V)
    token_of = {v: n for n, v in enumerate(ids)}
    single = np.flatnonzero(counts == 1)
    assert len(single) > 1000 and (counts > 1).sum() > 100
    np.testing.assert_array_equal(got[single], host(grad)[[token_of[v] for v in single]])
    assert (got[counts == 0] == 0).all()
    ref = np.zeros((V, C))
    np.add.at(ref, ids, rounded(g, dtype))
    assert rel_err(got, ref) <= TOL[dtype]


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("lengths", [[8], [9], [9, 9], [2, 0, 3, 8, 1, 5, 9, 17, 32, 4, 7, 6]])
def test_rows_sum_their_tokens_in_increasing_order(lengths, id_dtype):
    # float32 sums in float32, token by token in increasing n, exactly as numpy's add.at (which
    # adds in index order): the short rows' tokens come from atomics in any order and must be
    # sorted, the long rows' (9 to 32 tokens) come from their sorted segments. Lengths 8 and 9
    # alone: no long row (N < 9) and exactly one.
    ids = _run_lengths_ids(lengths, seed=len(lengths))
    V, C = len(lengths) + 1, 37
    g = randn(len(ids), C).astype(np.float32)
    got = host(_core.call("embedding_backward", [ls.tensor(g).cuda(), ls.tensor(ids.astype(id_dtype)).cuda()],
                          {"num_weights": V})[0])
    ref = np.zeros((V, C), np.float32)
    np.add.at(ref, ids, g)
    np.testing.assert_array_equal(got, ref)


def _sum_in_pieces_float32(g, ids, V):
    """The backward's float32 order: each row's tokens in increasing n; a row of 33 to 512 in
    pieces of 32 consecutive tokens from its first; a row of more in p = ceil(tokens / 32) pieces
    of positions [j P, (j + 1) P), P = ceil(N / p); each piece summed so, the pieces added in
    order."""
    ref = np.zeros((V, g.shape[1]), np.float32)
    for v in range(V):
        at = np.flatnonzero(ids == v)
        if len(at) <= 32:
            groups = [at]
        elif len(at) <= 512:
            groups = [at[c:c + 32] for c in range(0, len(at), 32)]
        else:
            p = -(-len(at) // 32)
            span = -(-len(ids) // p)
            groups = [at[(at >= j * span) & (at < (j + 1) * span)] for j in range(p)]
        for group in groups:
            piece = np.zeros(g.shape[1], np.float32)
            for n in group:
                piece += g[n]
            ref[v] += piece
    return ref


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_long_rows_sum_in_pieces_bit_for_bit(id_dtype):
    # Long rows (more than 8 tokens) are laid out on the device: 9..512 tokens sorted per row by
    # a bitonic network in shared memory, past 32 tokens in pieces of 32; 513, 700 and 9000 in
    # pieces of ranges of positions (the order of _sum_in_pieces_float32).
    lengths = [9, 31, 32, 33, 64, 65, 100, 1, 0, 512, 513, 2, 9000, 700]
    ids = _run_lengths_ids(lengths, seed=7)
    V, C = len(lengths) + 1, 20
    g = randn(len(ids), C).astype(np.float32)
    gids = ls.tensor(ids.astype(id_dtype)).cuda()
    got = host(_core.call("embedding_backward", [ls.tensor(g).cuda(), gids], {"num_weights": V})[0])
    np.testing.assert_array_equal(got, _sum_in_pieces_float32(g, ids, V))
    again = host(_core.call("embedding_backward", [ls.tensor(g).cuda(), gids], {"num_weights": V})[0])
    np.testing.assert_array_equal(again, got)


def test_more_long_rows_than_one_layout_tile():
    # 3000 long rows (about 20 tokens each, a few past 32), more than the layout block's 1024 a
    # tile: their segments and pieces continue across tiles.
    V, N = 3000, 60000
    ids = np.random.default_rng(3).integers(0, V, N)
    ids[:400] = 17  # a row of 400+ tokens: pieces
    ids[400:500] = 2999
    g = randn(N, 8).astype(np.float32)
    got = host(_core.call("embedding_backward", [ls.tensor(g).cuda(), ls.tensor(ids).cuda()], {"num_weights": V})[0])
    assert (np.bincount(ids, minlength=V) > 8).sum() > 2048
    np.testing.assert_array_equal(got, _sum_in_pieces_float32(g, ids, V))


def test_unused_rows_are_zero_and_empty_ids():
    V, C = 11, 6
    ids = ls.tensor(np.array([[3, 3], [7, 3]])).cuda()
    grad = ls.tensor(randn(2, 2, C)).cuda()
    dw = host(_core.call("embedding_backward", [grad, ids], {"num_weights": V})[0])
    g = host(grad)
    np.testing.assert_allclose(dw[3], g[0, 0] + g[0, 1] + g[1, 1], rtol=1e-14)
    np.testing.assert_array_equal(dw[7], g[1, 0])
    assert (dw[[0, 1, 2, 4, 5, 6, 8, 9, 10]] == 0).all()
    empty = _core.call("embedding_backward", [ls.zeros(0, C, device="cuda"),
                                              ls.tensor(np.zeros(0, np.int64)).cuda()], {"num_weights": V})[0]
    assert tuple(empty.shape) == (V, C) and (host(empty) == 0).all()


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_lookup_of_a_strided_weight_is_exact(dtype):
    w = rounded(randn(40, 24), dtype)
    ids = ids_for(20, (3, 17))
    table = ls.tensor(w).to(dtype=dtype).cuda()[::2, 1:]  # a non-contiguous (20, 23) view
    got = host(F.embedding(ls.tensor(ids).cuda(), table))
    np.testing.assert_array_equal(got, w[::2, 1:][ids])


def test_ids_out_of_range_raise_at_sync_with_nan_rows_and_are_ignored_backward():
    V, C = 5, 8
    ids = ls.tensor(np.array([1, 5, -1, 2])).cuda()
    out = F.embedding(ids, ls.randn(V, C, device="cuda"))
    # the CPU op's IndexError, for one of the bad positions, recorded by the lookup itself
    with pytest.raises(IndexError, match=r"embedding: id (5 at position 1|-1 at position 2) is out of "
                                         r"range for 5 embeddings \(valid ids are 0..4\) \(found on the GPU"):
        ls.cuda.synchronize()
    out = host(out)
    assert np.isnan(out[[1, 2]]).all() and np.isfinite(out[[0, 3]]).all()
    dw = host(_core.call("embedding_backward", [ls.ones(4, C, device="cuda"), ids], {"num_weights": V})[0])
    assert dw.sum() == 2 * C and dw[1].sum() == C and dw[2].sum() == C


def test_served_by_cuda():
    _core.backend_report(True)
    w = ls.randn(9, 4, device="cuda").requires_grad_()
    F.embedding(ls.tensor(np.array([1, 1, 8])).cuda(), w).sum().backward()
    report = _core.backend_report(True)
    assert report["embedding"] == "cuda" and report["embedding_backward"] == "cuda"


def test_backward_waits_for_ids_made_late_on_its_stream():
    # The ids come from a device op queued on the user stream behind a long product, so the
    # counting kernel runs late; the side stream's long rows (every row here) must wait for it.
    V, C, N = 50, 24, 5000
    s = ls.cuda.Stream()
    ids = ls.tensor(ids_for(V, (N,))).cuda()
    grad = ls.tensor(randn(N, C)).cuda()
    a = ls.randn(4096, 4096, device="cuda")
    s.wait_stream(ls.cuda.current_stream())
    with ls.cuda.stream(s):
        for _ in range(4):
            a = a @ a * (1.0 / 64)
        late_ids = ids + 0
        dw = _core.call("embedding_backward", [grad, late_ids], {"num_weights": V})[0]
    s.synchronize()
    ref = _core.call("embedding_backward", [grad.cpu(), ids.cpu()], {"num_weights": V})[0]
    np.testing.assert_allclose(host(dw), host(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("V,N", [(50304, 16384), (300, 70000)])
def test_backward_on_a_user_stream_matches_cpu(V, N):
    # Every step of the backward (the counts, the short rows, the long rows on the side stream)
    # is ordered on the current stream: after the ids and grad written there, before what follows.
    C = 40
    s = ls.cuda.Stream()
    with ls.cuda.stream(s):
        ids = ls.tensor(ids_for(V, (N,))).cuda()
        grad = ls.tensor(randn(N, C)).cuda()
        dw = _core.call("embedding_backward", [grad, ids], {"num_weights": V})[0] * 2.0
    s.synchronize()
    ref = _core.call("embedding_backward", [grad.cpu(), ids.cpu()], {"num_weights": V})[0]
    np.testing.assert_allclose(host(dw), 2.0 * host(ref), rtol=1e-6, atol=1e-6)
