"""MoE dispatch ops (cpp/ops/moe.cpp): moe_permute against a numpy counting sort, grouped_matmul
and moe_combine forward and every gradient against torch float64 references (loops over experts
in the reference only), float64 and float32, odd sizes, empty segments, dropped rows."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from op_check import against_torch

_rng = np.random.default_rng()


def ref_permute(ids, E, capacity=None):
    N, k = ids.shape
    flat = ids.reshape(-1)
    counts = np.bincount(flat, minlength=E)
    keep = np.ones(N * k, bool)
    if capacity is not None:
        taken = np.zeros(E, int)
        for s in range(k):
            for n in range(N):
                e = flat[n * k + s]
                keep[n * k + s] = taken[e] < capacity
                taken[e] += keep[n * k + s]
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(flat[kept], kind="stable")]
    dropped = np.flatnonzero(~keep)
    token = np.concatenate([order, dropped]) // k
    row = np.full(N * k, -1)
    row[order] = np.arange(len(order))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(flat[kept], minlength=E))])
    return token, row.reshape(N, k), offsets, counts


@pytest.mark.parametrize("N,k,E", [(1, 1, 1), (3, 2, 3), (127, 2, 8), (64, 1, 5), (33, 3, 4)])
@pytest.mark.parametrize("capacity", [None, 0, 1, 7, 1000])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_permute(N, k, E, capacity, dtype):
    ids = np.stack([_rng.permutation(E)[:k] if k <= E else _rng.integers(0, E, k) for _ in range(N)])
    got = F.moe_permute(ls.tensor(ids.astype(dtype)), E, capacity)
    for g, r, name in zip(got, ref_permute(ids, E, capacity), ["token", "row", "offsets", "counts"]):
        assert g.dtype == ls.int64, name
        np.testing.assert_array_equal(g.numpy(), r, err_msg=name)


def test_permute_errors():
    with pytest.raises(IndexError, match="moe_permute: expert id 4"):
        F.moe_permute(ls.tensor(np.array([[0, 4]])), 4)
    with pytest.raises(ValueError, match="moe_permute: expert_ids must have shape"):
        F.moe_permute(ls.tensor(np.array([0, 1])), 4)
    with pytest.raises(TypeError, match="moe_permute"):
        F.moe_permute(ls.zeros(2, 2), 4)
    ids = ls.tensor(np.array([[0, 1]]))
    with pytest.raises(TypeError, match="moe_permute: n_experts must be an integer, got float"):
        F.moe_permute(ids, 3.7)  # never truncated to 3 experts
    with pytest.raises(ValueError, match="moe_permute: capacity must be None or a non-negative int"):
        F.moe_permute(ids, 4, capacity=True)


def random_offsets(M, E, dropped=0):
    """E+1 offsets over M - dropped rows, with some empty segments."""
    cuts = np.sort(_rng.integers(0, M - dropped + 1, E - 1))
    return np.concatenate([[0], cuts, [M - dropped]]).astype(np.int64)


def torch_grouped(x, w, offsets, transpose_w):
    rows = []
    for e in range(len(offsets) - 1):
        we = w[e].T if transpose_w else w[e]
        rows.append(x[offsets[e]:offsets[e + 1]] @ we)
    M, N = x.shape[0], (w.shape[1] if transpose_w else w.shape[2])
    rows.append(torch.zeros(M - offsets[-1], N, dtype=x.dtype))
    return torch.cat(rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("M,K,N,E,dropped", [(1, 1, 1, 1, 0), (7, 3, 5, 3, 0), (127, 33, 17, 8, 9),
                                             (64, 16, 65, 5, 64), (200, 32, 48, 4, 3)])
@pytest.mark.parametrize("transpose_w", [False, True])
def test_grouped_matmul(M, K, N, E, dropped, transpose_w, dtype):
    offsets = random_offsets(M, E, dropped)
    wshape = (E, N, K) if transpose_w else (E, K, N)
    against_torch(lambda x, w: F.grouped_matmul(x, w, ls.tensor(offsets), transpose_w),
                  lambda x, w: torch_grouped(x, w, offsets, transpose_w),
                  [randn(M, K), randn(*wshape)], dtype)


def test_grouped_matmul_strided_weight():
    """A transposed view of w is read through its strides: same result as a contiguous copy."""
    x, w = randn(20, 6), randn(3, 6, 4)
    offsets = ls.tensor(np.array([0, 5, 5, 20]))
    wt = ls.tensor(np.ascontiguousarray(w.transpose(0, 2, 1)))  # (E, N, K)
    a = F.grouped_matmul(ls.tensor(x), wt.transpose(1, 2), offsets)
    b = F.grouped_matmul(ls.tensor(x), ls.tensor(w), offsets)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


def test_grouped_matmul_errors():
    x, w = ls.zeros(4, 3), ls.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="grouped_matmul: offsets must have shape"):
        F.grouped_matmul(x, w, ls.tensor(np.array([0, 4])))
    with pytest.raises(ValueError, match="grouped_matmul: offsets must be non-decreasing"):
        F.grouped_matmul(x, w, ls.tensor(np.array([0, 3, 2])))
    with pytest.raises(ValueError, match="grouped_matmul: offsets\\[E\\] = 5 exceeds"):
        F.grouped_matmul(x, w, ls.tensor(np.array([0, 2, 5])))
    with pytest.raises(ValueError, match="grouped_matmul: x has 3 columns"):
        F.grouped_matmul(x, ls.zeros(2, 4, 5), ls.tensor(np.array([0, 2, 4])))


def random_rows(N, k, R, drop_p):
    """A one-to-one map of the N*k assignments onto rows of [0, R), some dropped (-1)."""
    row = _rng.permutation(R)[:N * k]
    row[_rng.random(N * k) < drop_p] = -1
    return row.reshape(N, k).astype(np.int64)


def torch_combine(y, gates, row):
    r = torch.tensor(row)
    kept = (r >= 0).to(y.dtype)
    picked = y[r.clamp(min=0)]                          # (N, k, H)
    return (picked * (gates * kept).unsqueeze(-1)).sum(1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,k,H,extra,drop_p", [(1, 1, 1, 0, 0.0), (3, 2, 5, 0, 0.0),
                                                (127, 2, 33, 4, 0.2), (50, 3, 64, 0, 0.5),
                                                (17, 1, 129, 2, 1.0)])
def test_combine(N, k, H, extra, drop_p, dtype):
    row = random_rows(N, k, N * k + extra, drop_p)
    against_torch(lambda y, g: F.moe_combine(y, g, ls.tensor(row)),
                  lambda y, g: torch_combine(y, g, row),
                  [randn(N * k + extra, H), randn(N, k)], dtype)


def test_combine_errors():
    y, g = ls.zeros(4, 3), ls.zeros(2, 2)
    with pytest.raises(IndexError, match="moe_combine: row 4 is out of range"):
        F.moe_combine(y, g, ls.tensor(np.array([[0, 1], [2, 4]])))
    with pytest.raises(ValueError, match="moe_combine: row"):
        F.moe_combine(y, g, ls.tensor(np.array([0, 1])))
    with pytest.raises(TypeError, match="moe_combine"):
        F.moe_combine(y, ls.zeros(2, 2, dtype=ls.float64), ls.tensor(np.array([[0, 1], [2, 3]])))
    # a row read twice would get one of its two gradient terms (the backward writes, not adds)
    with pytest.raises(ValueError, match="row 2 is read by two assignments"):
        F.moe_combine(y, g, ls.tensor(np.array([[0, 2], [2, -1]])))
