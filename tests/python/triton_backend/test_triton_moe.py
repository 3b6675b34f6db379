"""Triton MoE ops (triton_kernels/moe.py) against the CPU ops of cpp/ops/moe.cpp: moe_permute
exactly (stable order, capacity mode, more items than one program's block), grouped_matmul in both
weight layouts with empty segments and dropped rows, its weight gradient, moe_combine and its
backward (each output alone and both), odd sizes."""
import numpy as np
import pytest

import llmscratch as ls

from triton_check import CASES, INTERPRET, check, cpu_call, rng, to_ls, triton_call

PERMUTE_DEVICES = (["cpu"] if INTERPRET else []) + [pytest.param("cuda", marks=pytest.mark.cuda)]


def routed_ids(N, k, E):
    """(N, k) expert ids, distinct per token when k <= E (as top-k gives), skewed so that some
    experts get far more than others and some none."""
    r = rng()
    p = r.dirichlet(np.full(E, 0.3))
    if k <= E:
        return np.stack([r.choice(E, k, replace=False, p=p) for _ in range(N)])
    return r.integers(0, E, (N, k))


@pytest.mark.parametrize("device", PERMUTE_DEVICES)
@pytest.mark.parametrize("N,k,E", [(1, 1, 1), (5, 2, 3), (127, 2, 8), (300, 2, 5), (77, 3, 4),
                                   (40, 1, 16)])
@pytest.mark.parametrize("capacity", [-1, 0, 1, 13, 10000])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_permute(device, N, k, E, capacity, idtype):
    ids = routed_ids(N, k, E).astype(idtype)
    attrs = {"n_experts": E, "capacity": capacity}
    got = triton_call("moe_permute", [to_ls(ids, device, None)], attrs)
    ref = cpu_call("moe_permute", [ls.tensor(ids)], attrs)
    for g, r, name in zip(got, ref, ["token", "row", "offsets", "counts"]):
        assert g.dtype == ls.int64, name
        np.testing.assert_array_equal(np.asarray(g.to("cpu")), np.asarray(r), err_msg=name)


def offsets_for(M, E, dropped, empty):
    """E+1 offsets over the first M - dropped rows; `empty` experts get no rows."""
    r = rng()
    sizes = r.multinomial(M - dropped, np.full(E, 1.0 / E)) if E else np.zeros(0, int)
    for e in r.permutation(E - 1)[:empty]:  # the last expert takes the rest
        sizes[e] = 0
    sizes[-1] += M - dropped - sizes.sum()
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


# (M, K, N, E, dropped rows, empty experts)
GEMM_SHAPES = [(1, 1, 1, 1, 0, 0), (7, 3, 5, 3, 0, 1), (67, 33, 17, 4, 5, 1),
               (80, 16, 40, 1, 0, 0), (50, 20, 9, 6, 50, 0), (45, 40, 70, 3, 2, 0)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("M,K,N,E,dropped,empty", GEMM_SHAPES)
@pytest.mark.parametrize("transpose_w", [False, True])
def test_grouped_matmul(device, dtype, M, K, N, E, dropped, empty, transpose_w):
    r = rng()
    off = offsets_for(M, E, dropped, empty)
    w = r.standard_normal((E, N, K) if transpose_w else (E, K, N))
    check("grouped_matmul", [r.standard_normal((M, K)), w, off], {"transpose_w": transpose_w},
          device, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("M,P,Q,E,dropped,empty", GEMM_SHAPES)
def test_grouped_matmul_weight_grad(device, dtype, M, P, Q, E, dropped, empty):
    r = rng()
    off = offsets_for(M, E, dropped, empty)
    check("grouped_matmul_weight_grad", [r.standard_normal((M, P)), r.standard_normal((M, Q)), off],
          {}, device, dtype)


def one_to_one_rows(N, k, R, drop_p):
    r = rng()
    row = r.permutation(R)[:N * k]
    row[r.random(N * k) < drop_p] = -1
    return row.reshape(N, k).astype(np.int64)


COMBINE_SHAPES = [(1, 1, 1, 0, 0.0), (3, 2, 5, 0, 0.0), (67, 2, 33, 4, 0.2), (20, 3, 130, 0, 0.5),
                  (9, 1, 17, 2, 1.0)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("N,k,H,extra,drop_p", COMBINE_SHAPES)
def test_combine(device, dtype, N, k, H, extra, drop_p):
    r = rng()
    row = one_to_one_rows(N, k, N * k + extra, drop_p)
    check("moe_combine", [r.standard_normal((N * k + extra, H)), r.standard_normal((N, k)), row],
          {}, device, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("N,k,H,extra,drop_p", COMBINE_SHAPES)
@pytest.mark.parametrize("want", [(True, True), (True, False), (False, True)])
def test_combine_backward(device, dtype, N, k, H, extra, drop_p, want):
    r = rng()
    R = N * k + extra
    row = one_to_one_rows(N, k, R, drop_p)
    arrays = [r.standard_normal((N, H)), r.standard_normal((R, H)), r.standard_normal((N, k)), row]
    got, _ = check("moe_combine_backward", arrays, {"dy": want[0], "dgates": want[1]}, device,
                   dtype, outputs=[i for i in (0, 1) if want[i]])
    for i in (0, 1):
        if not want[i]:
            assert tuple(got[i].shape) == (0,)
