"""CUDA MoE ops (cuda/moe.cu) against the CPU ops of cpp/ops/moe.cpp on the same values:
moe_permute exactly (stable order, capacity mode with drops, int32/int64 ids, N*k from 1 to
beyond one thread's share of the one-block kernel), grouped_matmul forward and both gradients
(grouped_matmul in the other layout, grouped_matmul_weight_grad) in both weight layouts, with
empty experts, one expert, dropped rows, row lengths that need the padded copy and ones that do
not; moe_combine forward and both gradients (moe_combine_backward), each backward output alone;
and the whole dispatch (permute, gather, two grouped GEMMs, combine) with gradients. Every
float dtype; outputs poisoned with NaN before the kernels run (cuda_vs_cpu.check)."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
import llmscratch.functional as F
from conftest import randn
from cuda_vs_cpu import FLOATS, TOL, check, host, rounded

pytestmark = pytest.mark.cuda

_rng = np.random.default_rng()


def routed_ids(N, k, E):
    """(N, k) expert ids, distinct per token when k <= E, skewed: some experts get many
    assignments, some none."""
    p = _rng.dirichlet(np.full(E, 0.3))
    if k <= E:
        return np.stack([_rng.choice(E, k, replace=False, p=p) for _ in range(N)])
    return _rng.integers(0, E, (N, k))


def permute_both(ids, E, capacity):
    attrs = {"n_experts": E, "capacity": -1 if capacity is None else capacity}
    got = _core.call("moe_permute", [ls.tensor(ids).cuda()], attrs)
    ref = _core.call("moe_permute", [ls.tensor(ids)], attrs)
    return got, ref


@pytest.mark.parametrize("N,k,E", [(1, 1, 1), (5, 2, 3), (127, 2, 8), (1023, 2, 8), (77, 3, 4),
                                   (40, 1, 16), (3000, 2, 64), (20000, 2, 8), (700, 4, 1)])
@pytest.mark.parametrize("capacity", [None, 0, 1, 13, 1000000])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_permute_matches_cpu(N, k, E, capacity, idtype):
    ids = routed_ids(N, k, E).astype(idtype)
    got, ref = permute_both(ids, E, capacity)
    for g, r, name in zip(got, ref, ["token", "row", "offsets", "counts"]):
        assert g.dtype == ls.int64 and g.device.type == "cuda", name
        np.testing.assert_array_equal(np.asarray(g.cpu()), np.asarray(r), err_msg=name)


def test_permute_capacity_from_load():
    """A capacity near the mean load drops part of the overloaded experts only."""
    N, k, E = 4099, 2, 8
    ids = routed_ids(N, k, E)
    got, ref = permute_both(ids, E, (N * k) // E)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g.cpu()), np.asarray(r))
    assert int(np.asarray(ref[2])[-1]) < N * k  # something was dropped


def test_permute_empty_and_errors():
    got, ref = permute_both(np.zeros((0, 2), np.int64), 4, None)
    assert [tuple(g.shape) for g in got] == [(0,), (0, 2), (5,), (4,)]
    np.testing.assert_array_equal(np.asarray(got[2].cpu()), np.zeros(5))
    np.testing.assert_array_equal(np.asarray(got[3].cpu()), np.zeros(4))
    with pytest.raises(ValueError, match="moe_permute: expert_ids must have shape"):
        _core.call("moe_permute", [ls.tensor(np.array([0, 1])).cuda()], {"n_experts": 2})
    with pytest.raises((TypeError, NotImplementedError), match="moe_permute"):  # float ids
        _core.call("moe_permute", [ls.zeros(2, 2, device="cuda")], {"n_experts": 2})


def test_combine_input_counts_raise_the_cpu_error():
    # the CPU's and Triton's ValueError (CUDA had raised a TypeError of its own)
    y, gates = ls.zeros(4, 3, device="cuda"), ls.zeros(2, 2, device="cuda")
    with pytest.raises(ValueError, match="moe_combine: expected 3 inputs, got 2"):
        _core.call("moe_combine", [y, gates], {})
    with pytest.raises(ValueError, match="moe_combine_backward: expected 4 inputs, got 3"):
        _core.call("moe_combine_backward", [y, y, gates], {})


def offsets_for(M, E, dropped=0, empty=0):
    """E+1 offsets over the first M - dropped rows; `empty` of the first E-1 experts get none."""
    sizes = _rng.multinomial(M - dropped, np.full(E, 1.0 / E))
    for e in _rng.permutation(E - 1)[:empty]:
        sizes[e] = 0
    sizes[-1] += M - dropped - sizes.sum()
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


# (M, K, N, E, dropped rows, empty experts): tiny; one expert; all rows dropped; K and N that
# are and are not multiples of 8 (padded copies); several 128-row tiles per expert.
GEMM_SHAPES = [(1, 1, 1, 1, 0, 0), (7, 3, 5, 3, 0, 1), (67, 33, 17, 4, 5, 1), (80, 16, 40, 1, 0, 0),
               (50, 20, 9, 6, 50, 0), (300, 64, 136, 5, 7, 2), (513, 100, 70, 3, 0, 0),
               (1000, 136, 264, 8, 33, 3)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M,K,N,E,dropped,empty", GEMM_SHAPES + [(4100, 72, 2100, 8, 100, 1)])  # big tile
@pytest.mark.parametrize("transpose_w", [False, True])
def test_grouped_matmul_matches_cpu(M, K, N, E, dropped, empty, transpose_w, dtype):
    off = offsets_for(M, E, dropped, empty)
    wshape = (E, N, K) if transpose_w else (E, K, N)
    # Entries at least 0.25 from 0: with M = K = N = 1 a product of two near-zero normals
    # (0.03 x 0.0001) fell among float16's subnormals, 0.8% from the float32 result.
    x, w = (np.copysign(np.abs(a) + 0.25, a) for a in (randn(M, K), randn(*wshape)))
    check(lambda x, w, o: F.grouped_matmul(x, w, o, transpose_w), [x, w, off], dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M,P,Q,E,dropped,empty", GEMM_SHAPES + [(600, 520, 1030, 8, 10, 1)])  # big tile
def test_grouped_matmul_weight_grad_matches_cpu(M, P, Q, E, dropped, empty, dtype):
    off = offsets_for(M, E, dropped, empty)
    a, b = rounded(randn(M, P), dtype), rounded(randn(M, Q), dtype)
    got = _core.call("grouped_matmul_weight_grad",
                     [ls.tensor(t).to(dtype=dtype).cuda() for t in (a, b)] + [ls.tensor(off).cuda()], {})[0]
    ref_dt = ls.float64 if dtype == ls.float64 else ls.float32
    ref = _core.call("grouped_matmul_weight_grad",
                     [ls.tensor(t).to(dtype=ref_dt) for t in (a, b)] + [ls.tensor(off)], {})[0]
    g, r = host(got), host(ref)
    assert g.shape == r.shape and not np.isnan(g).any()
    assert np.linalg.norm(g - r) <= TOL[dtype] * max(np.linalg.norm(r), 1e-30)


def test_grouped_matmul_strided_weight():
    """A transposed view of w gives the same result as a contiguous copy."""
    x, w = randn(40, 24), randn(3, 24, 16)
    off = ls.tensor(np.array([0, 10, 10, 40])).cuda()
    for dtype in FLOATS:
        wt = ls.tensor(np.ascontiguousarray(w.transpose(0, 2, 1))).to(dtype=dtype).cuda()
        xd = ls.tensor(x).to(dtype=dtype).cuda()
        a = F.grouped_matmul(xd, wt.transpose(1, 2), off)
        b = F.grouped_matmul(xd, ls.tensor(w).to(dtype=dtype).cuda(), off)
        np.testing.assert_allclose(host(a), host(b), rtol=TOL[dtype], atol=TOL[dtype])


def one_to_one_rows(N, k, R, drop_p):
    row = _rng.permutation(R)[:N * k]
    row[_rng.random(N * k) < drop_p] = -1
    return row.reshape(N, k).astype(np.int64)


COMBINE_SHAPES = [(1, 1, 1, 0, 0.0), (3, 2, 5, 0, 0.0), (127, 2, 33, 4, 0.2), (50, 3, 300, 0, 0.5),
                  (17, 1, 129, 2, 1.0), (513, 2, 1023, 3, 0.1)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N,k,H,extra,drop_p", COMBINE_SHAPES)
def test_combine_matches_cpu(N, k, H, extra, drop_p, dtype):
    row = one_to_one_rows(N, k, N * k + extra, drop_p)
    check(F.moe_combine, [randn(N * k + extra, H), randn(N, k), row], dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("want", [(True, False), (False, True)])
def test_combine_backward_one_output(want, dtype):
    N, k, H, R = 37, 2, 70, 80
    row = one_to_one_rows(N, k, R, 0.2)
    g, y, gates = (rounded(randn(*s), dtype) for s in [(N, H), (R, H), (N, k)])
    attrs = {"dy": want[0], "dgates": want[1]}
    got = _core.call("moe_combine_backward",
                     [ls.tensor(t).to(dtype=dtype).cuda() for t in (g, y, gates)] + [ls.tensor(row).cuda()],
                     attrs)
    ref = _core.call("moe_combine_backward", [ls.tensor(t) for t in (g, y, gates)] + [ls.tensor(row)],
                     attrs)
    for i in range(2):
        assert tuple(got[i].shape) == tuple(ref[i].shape)
        if want[i]:
            np.testing.assert_allclose(host(got[i]), host(ref[i]), rtol=TOL[dtype] * 4,
                                       atol=TOL[dtype] * 4 * np.sqrt(H))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N,C,H,E,k,capacity", [(33, 16, 24, 4, 2, None), (100, 40, 72, 8, 2, 20),
                                                (9, 8, 16, 1, 1, None), (64, 20, 30, 3, 3, 0)])
def test_dispatch_pipeline_matches_cpu(N, C, H, E, k, capacity, dtype):
    """permute -> gather -> grouped GEMM (x @ fc) -> grouped GEMM (h @ proj^T) -> combine, with
    gradients for x, both expert weights and the gates."""
    ids = routed_ids(N, k, E)

    def moe(x, fc, proj, gates, ids_t):
        token, row, off, _ = F.moe_permute(ids_t, E, capacity)
        h = F.grouped_matmul(F.index_select(x, 0, token), fc, off)
        y = F.grouped_matmul(h, proj, off, transpose_w=True)
        return F.moe_combine(y, gates, row)

    # 16-bit: h and y are rounded on the GPU but not in the float32 reference, so the error
    # compounds over the chain
    tol = TOL[dtype] * (4 if dtype in (ls.bfloat16, ls.float16) else 1)
    check(moe, [randn(N, C), randn(E, C, H, scale=0.3), randn(E, C, H, scale=0.3),
                randn(N, k), ids], dtype, tol=tol)
