import numpy as np
import pytest

from triton_check import (CASES, check, compiled_only, raises_index_error, rng, rounded, to_ls, to_np,
                          triton_call)

# (V, C, ids shape): repeated ids, odd widths, widths over one 256-channel block, one id, long runs
# of one id across programs, a vocabulary most of which no token uses, one past 16 bits.
SHAPES = [(1, 1, (3,)), (2, 4, (1,)), (7, 5, (2, 9)), (50, 127, (4, 6)), (3, 1100, (5,)),
          (5, 300, (7, 31)), (3000, 16, (40,)), (70000, 3, (50,))]


PIECE, SORT_MAX = 32, 1024  # triton_kernels/embedding.py's _PIECE and _SORT_MAX


def backward_reference(grad, ids, V):
    """The backward's float32 sum: ids outside [0, V) skipped; a row of up to PIECE tokens summed
    in token order; a longer row in pieces, each summed in token order (float32), added in order:
    pieces of PIECE consecutive tokens of the row, or for a row of more than SORT_MAX tokens its
    tokens at positions [j P, (j + 1) P) for piece j of p = ceil(tokens / PIECE),
    P = ceil(N / p)."""
    N = ids.size
    acc = np.zeros((V, grad.shape[1]), np.float32)
    for v in np.unique(ids[(ids >= 0) & (ids < V)]):
        at = np.flatnonzero(ids == v)
        if at.size <= SORT_MAX:
            pieces = [at[i:i + PIECE] for i in range(0, at.size, PIECE)]
        else:
            p = -(-at.size // PIECE)
            span = -(-N // p)
            pieces = [at[(at >= j * span) & (at < (j + 1) * span)] for j in range(p)]
        for piece in pieces:
            total = np.zeros(grad.shape[1], np.float32)
            for n in piece:
                total += grad[n].astype(np.float32)
            acc[v] += total
    return acc


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("V,C,ids_shape", SHAPES)
@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32])
def test_embedding(device, dtype, V, C, ids_shape, ids_dtype):
    r = rng()
    weight = r.standard_normal((V, C))
    ids = r.integers(0, V, ids_shape).astype(ids_dtype)
    check("embedding", [weight, ids], {}, device, dtype)
    grad = r.standard_normal(ids_shape + (C,))
    check("embedding_backward", [grad, ids], {"num_weights": V}, device, dtype, tol_scale=2)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("V,C", [(4, 9), (65535, 2), (65536, 2)])
@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32])
def test_embedding_ids_out_of_range_and_sum_order(device, dtype, V, C, ids_dtype):
    """Ids outside [0, V): the forward raises the CPU op's IndexError naming the first one (on a
    GPU at the next synchronisation, with rows of NaN for them in the output), the backward skips
    them. Each id's rows are summed in token order in float32 (a row of more than 32 tokens by
    pieces, see backward_reference), so the gradient matches that sum bit for bit. V = 65535 /
    65536 sit on either side of 16 bits, with ids from 32768 up."""
    r = rng()
    big = np.iinfo(ids_dtype)
    lo = 0 if V < 32768 else 32768
    ids = np.concatenate([r.integers(lo, V + 3, 60), r.integers(lo, lo + 3, 40),
                          [lo, V - 1, V, -1, -2, V - 1, big.max, big.min]]).astype(ids_dtype)
    r.shuffle(ids)
    valid = (ids >= 0) & (ids < V)
    weight = rounded(r.standard_normal((V, C)), dtype)
    p = int(np.flatnonzero(~valid)[0])
    first_bad = rf"embedding: id {ids[p]} at position {p} is out of range for {V} embeddings"
    with raises_index_error(device, first_bad):
        (out,) = triton_call("embedding", [to_ls(weight, device, dtype), to_ls(ids, device, dtype)], {})
    if device != "cpu":  # the output was made; readable once the fault is raised
        got = to_np(out)
        assert np.array_equal(got[valid], weight[ids[valid]]) and np.isnan(got[~valid]).all()

    grad = rounded(r.standard_normal((ids.size, C)), dtype)
    (dw,) = triton_call("embedding_backward",
                        [to_ls(grad, device, dtype), to_ls(ids, device, dtype)], {"num_weights": V})
    assert np.array_equal(to_np(dw), rounded(backward_reference(grad, ids, V), dtype))


@pytest.mark.parametrize("device,dtype", CASES)
def test_embedding_backward_long_runs_in_pieces(device, dtype):
    """Rows of more than 8 tokens (the long rows) are summed in pieces of 32 tokens (float32,
    token order), added in order: rows of 1..97 tokens (8, 9, 31, 32, 33, 64, 65 among them),
    checked bit for bit against that sum."""
    r = rng()
    lengths = [1, 31, 32, 33, 2, 64, 65, 5, 97, 1, 40, 8, 9]
    ids = r.permutation(np.concatenate([np.full(n, 3 * v + 1) for v, n in enumerate(lengths)]))
    V, C = 3 * len(lengths) + 2, 20
    grad = rounded(r.standard_normal((ids.size, C)), dtype)
    (dw,) = triton_call("embedding_backward",
                        [to_ls(grad, device, dtype), to_ls(ids, device, dtype)], {"num_weights": V})
    assert np.array_equal(to_np(dw), rounded(backward_reference(grad, ids, V), dtype))


@pytest.mark.parametrize("device,dtype", CASES)
def test_embedding_backward_big_rows(device, dtype):
    """Rows of more than SORT_MAX tokens (a padding id, a comma) are summed in pieces of position
    ranges: a row of 1800 tokens clustered in one stretch, one of 1100 spread over all positions,
    one of SORT_MAX + 1, and one of exactly SORT_MAX (the largest sorted row, 32 full pieces),
    beside medium and short rows and bad ids; bit for bit against backward_reference."""
    r = rng()
    others = r.choice(np.setdiff1d(np.arange(60), [2, 3, 5, 7]), 300)
    ids = np.concatenate([np.full(1800, 5), np.full(1100, 7), np.full(SORT_MAX, 2),
                          np.full(SORT_MAX + 1, 3), np.repeat(np.arange(10, 40), 40), others,
                          [-1, 60]])
    ids = np.concatenate([ids[:1800], r.permutation(ids[1800:])])  # id 5 first, the rest mixed
    V, C = 60, 20
    grad = rounded(r.standard_normal((ids.size, C)), dtype)
    (dw,) = triton_call("embedding_backward",
                        [to_ls(grad, device, dtype), to_ls(ids, device, dtype)], {"num_weights": V})
    assert np.array_equal(to_np(dw), rounded(backward_reference(grad, ids, V), dtype))


@compiled_only
@pytest.mark.cuda
@pytest.mark.parametrize("V,C,N,zipf", [(50304, 48, 65536, 1.1), (300, 40, 40000, 1.2), (4, 24, 30000, 0.0)])
def test_embedding_backward_many_programs(V, C, N, zipf):
    """Ids as text has them (Zipf) and a vocabulary of 4 ids (every row big), at sizes where
    many programs of the long rows' kernel take work at once (scatter tiles, sorts, pieces, the
    last piece's sum): bit for bit against backward_reference, in two calls."""
    r = rng()
    if zipf:
        p = 1.0 / np.arange(1, V + 1) ** zipf
        ids = r.choice(V, N, p=p / p.sum())
    else:
        ids = r.integers(0, V, N)
    grad = rounded(r.standard_normal((N, C)), "bfloat16")
    ref = rounded(backward_reference(grad, ids, V), "bfloat16")
    for _ in range(2):
        (dw,) = triton_call("embedding_backward", [to_ls(grad, "cuda", "bfloat16"),
                                                   to_ls(ids, "cuda", "bfloat16")], {"num_weights": V})
        assert np.array_equal(to_np(dw), ref)
