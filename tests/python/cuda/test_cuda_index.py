"""CUDA index_select (and index_select_backward), gather, scatter_add, one_hot against the CPU op
on the same values: every dtype, each dim, int32/int64 indices, repeated indices (sums), odd and
strided shapes, every gradient, and out-of-range indices raising IndexError with the CPU's
message at the next synchronisation (the check runs on the device). The sums (scatter_add, index_select_backward) add in the CPU's order, so even floating
results must match bit for bit."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as core
from conftest import raises_at_sync
from cuda_data_ops import FLOATS, INTS, assert_same, backward_both, call, host, make, normal_values, rng

pytestmark = pytest.mark.cuda

IDX = [ls.int64, ls.int32]
# Autograd runs the CPU reference through mul/sum, which have no 16-bit CPU kernels; the 16-bit
# gradient kernel is compared directly (test_index_select_backward_op_directly).
GRAD_DTYPES = [ls.float32, ls.float64]


def index(shape, n, dtype, device):
    return make(rng.integers(0, n, shape), dtype, device)


# ---- index_select --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("shape,dim,m", [((4, 5, 3), 0, 9), ((4, 5, 3), 1, 1), ((4, 5, 3), 2, 7),
                                         ((3, 1000), -1, 5), ((7, 33), 0, 300), ((1,), 0, 4)])
@pytest.mark.parametrize("idx_dtype", IDX)
def test_index_select_matches_cpu(shape, dim, m, idx_dtype, dtype):
    a = normal_values(shape, dtype)
    i = rng.integers(0, shape[dim], (m,))
    g = call("index_select", [make(a, dtype, "cuda"), make(i, idx_dtype, "cuda")], dim=dim)[0]
    c = call("index_select", [make(a, dtype, "cpu"), make(i, idx_dtype, "cpu")], dim=dim)[0]
    assert_same(g, c, "index_select")


def test_index_select_strided_0d_and_empty():
    a = rng.standard_normal((6, 10))
    i = np.array([9, 0, 9, 3])
    g = make(a, ls.float32, "cuda").transpose(0, 1)[:, 1:]
    c = make(a, ls.float32, "cpu").transpose(0, 1)[:, 1:]
    for d in (0, 1):
        j = i % (10 if d == 0 else 5)
        assert_same(call("index_select", [g, make(j, ls.int64, "cuda")], dim=d)[0],
                    call("index_select", [c, make(j, ls.int64, "cpu")], dim=d)[0], f"strided dim {d}")
    s = call("index_select", [make(np.array(2.5), ls.float32, "cuda"), make(np.array(0), ls.int64, "cuda")], dim=0)[0]
    assert tuple(s.shape) == () and host(s) == 2.5
    e = call("index_select", [make(a, ls.float32, "cuda"), ls.zeros(0, dtype=ls.int64, device="cuda")], dim=0)[0]
    assert tuple(e.shape) == (0, 10)


@pytest.mark.parametrize("dtype", GRAD_DTYPES)
@pytest.mark.parametrize("shape,dim,m", [((4, 5, 3), 1, 40), ((6, 700), 0, 50), ((9,), 0, 1000),
                                         ((2, 64, 3), 1, 5)])
def test_index_select_backward_matches_cpu(shape, dim, m, dtype):
    a = rng.standard_normal(shape)
    i = rng.integers(0, shape[dim], (m,))  # m > size: repeats accumulate
    c = make(a, dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    backward_both(call("index_select", [c, make(i, ls.int64, "cpu")], dim=dim)[0],
                  call("index_select", [g, make(i, ls.int64, "cuda")], dim=dim)[0], dtype)
    assert_same(g.grad, c.grad, "grad")


@pytest.mark.parametrize("dtype", FLOATS)
def test_index_select_backward_op_directly(dtype):
    shape, dim, m = (3, 11, 4), 1, 25
    gr = rng.standard_normal((3, m, 4))
    i = rng.integers(0, 11, (m,))
    for idx_dtype in IDX:
        g = call("index_select_backward", [make(gr, dtype, "cuda"), make(i, idx_dtype, "cuda")], dim=dim, shape=list(shape))[0]
        c = call("index_select_backward", [make(gr, dtype, "cpu"), make(i, idx_dtype, "cpu")], dim=dim, shape=list(shape))[0]
        assert_same(g, c, "index_select_backward")


# ---- gather / scatter_add ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("xshape,ishape,dim", [((4, 5, 3), (4, 9, 3), 1), ((4, 5, 3), (2, 3, 3), 0),
                                               ((4, 5, 3), (3, 5, 8), 2), ((1,), (7,), 0),
                                               ((70, 129), (70, 40), 1)])
@pytest.mark.parametrize("idx_dtype", IDX)
def test_gather_matches_cpu(xshape, ishape, dim, idx_dtype, dtype):
    a = normal_values(xshape, dtype)
    i = rng.integers(0, xshape[dim], ishape)
    g = call("gather", [make(a, dtype, "cuda"), make(i, idx_dtype, "cuda")], dim=dim)[0]
    c = call("gather", [make(a, dtype, "cpu"), make(i, idx_dtype, "cpu")], dim=dim)[0]
    assert_same(g, c, "gather")


def test_gather_strided_and_0d():
    a = rng.standard_normal((8, 6))
    i = rng.integers(0, 8, (3, 4))
    g = make(a, ls.float64, "cuda").transpose(0, 1)
    c = make(a, ls.float64, "cpu").transpose(0, 1)
    assert_same(call("gather", [g, make(i, ls.int64, "cuda")], dim=1)[0],
                call("gather", [c, make(i, ls.int64, "cpu")], dim=1)[0], "strided")
    s = call("gather", [make(np.array(1.5), ls.float32, "cuda"), make(np.array(0), ls.int64, "cuda")], dim=0)[0]
    assert tuple(s.shape) == () and host(s) == 1.5


@pytest.mark.parametrize("dtype", GRAD_DTYPES)
@pytest.mark.parametrize("xshape,ishape,dim", [((4, 5, 3), (4, 9, 3), 1), ((40, 5), (300, 5), 0),
                                               ((6, 50), (6, 200), 1)])
def test_gather_backward(xshape, ishape, dim, dtype):
    a = rng.standard_normal(xshape)
    i = rng.integers(0, xshape[dim], ishape)
    c = make(a, dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    backward_both(call("gather", [c, make(i, ls.int64, "cpu")], dim=dim)[0],
                  call("gather", [g, make(i, ls.int64, "cuda")], dim=dim)[0], dtype)
    assert_same(g.grad, c.grad, "grad")


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("xshape,ishape,sshape,dim", [
    ((4, 5, 3), (4, 9, 3), (4, 9, 3), 1),
    ((4, 5, 3), (2, 3, 2), (3, 4, 2), 0),      # src larger than index
    ((6, 40), (6, 300), (6, 300), 1),          # long runs of repeated targets
    ((50, 7), (400, 7), (400, 7), 0),
    ((3,), (1,), (2,), 0),
])
@pytest.mark.parametrize("idx_dtype", IDX)
def test_scatter_add_matches_cpu(xshape, ishape, sshape, dim, idx_dtype, dtype):
    a, s = normal_values(xshape, dtype), normal_values(sshape, dtype)
    i = rng.integers(0, xshape[dim], ishape)
    g = call("scatter_add", [make(a, dtype, "cuda"), make(i, idx_dtype, "cuda"), make(s, dtype, "cuda")], dim=dim)[0]
    c = call("scatter_add", [make(a, dtype, "cpu"), make(i, idx_dtype, "cpu"), make(s, dtype, "cpu")], dim=dim)[0]
    assert_same(g, c, "scatter_add")


def test_scatter_add_strided_and_0d():
    a, s = rng.standard_normal((5, 8)), rng.standard_normal((9, 5))
    i = rng.integers(0, 5, (4, 5))
    args = lambda dev: [make(a, ls.float32, dev), make(i, ls.int64, dev).transpose(0, 1),
                        make(s, ls.float32, dev).transpose(0, 1)[:, ::2]]
    assert_same(call("scatter_add", args("cuda"), dim=0)[0], call("scatter_add", args("cpu"), dim=0)[0], "strided")
    z = lambda dev: [make(np.array(1.0), ls.float32, dev), make(np.array(0), ls.int64, dev),
                     make(np.array(2.0), ls.float32, dev)]
    assert_same(call("scatter_add", z("cuda"), dim=0)[0], call("scatter_add", z("cpu"), dim=0)[0], "0-d")


@pytest.mark.parametrize("dtype", GRAD_DTYPES)
def test_scatter_add_backward(dtype):
    a, s = rng.standard_normal((6, 5)), rng.standard_normal((9, 7))
    i = rng.integers(0, 6, (8, 5))
    cx, cs = make(a, dtype, "cpu", True), make(s, dtype, "cpu", True)
    gx, gs = make(a, dtype, "cuda", True), make(s, dtype, "cuda", True)
    backward_both(call("scatter_add", [cx, make(i, ls.int64, "cpu"), cs], dim=0)[0],
                  call("scatter_add", [gx, make(i, ls.int64, "cuda"), gs], dim=0)[0], dtype)
    assert_same(gx.grad, cx.grad, "grad x")
    assert_same(gs.grad, cs.grad, "grad src")


# ---- one_hot -------------------------------------------------------------------------------

@pytest.mark.parametrize("idx_dtype", IDX)
@pytest.mark.parametrize("shape,classes", [((7,), -1), ((3, 5), 9), ((1,), 1), ((4, 2, 3), 5)])
def test_one_hot_matches_cpu(shape, classes, idx_dtype):
    i = rng.integers(0, classes if classes > 0 else 6, shape)
    g = call("one_hot", [make(i, idx_dtype, "cuda")], num_classes=classes)[0]
    c = call("one_hot", [make(i, idx_dtype, "cpu")], num_classes=classes)[0]
    assert_same(g, c, "one_hot")


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 5, 1 << 40])
def test_out_of_range_indices_raise(bad):
    x = ls.zeros(3, 5, device="cuda")
    i1 = make(np.array([0, 2, bad, 1]), ls.int64, "cuda")
    msg = f"index {bad} is out of range for dimension 1 of size 5"
    with raises_at_sync("index_select: " + msg):
        out = call("index_select", [x, i1], dim=1)[0]
    assert np.array_equal(host(out)[:, 2], np.zeros(3))  # zero bits where the index is bad
    with raises_at_sync("index_select: " + msg):
        call("index_select_backward", [ls.ones(3, 4, device="cuda"), i1], dim=1, shape=[3, 5])
    i2 = make(np.array([[0, 1, bad], [1, 1, 1], [0, 0, 0]]), ls.int64, "cuda")
    with raises_at_sync("gather: " + msg):
        call("gather", [x, i2], dim=1)
    with raises_at_sync("scatter_add: " + msg):
        call("scatter_add", [x, i2, ls.ones(3, 3, device="cuda")], dim=1)
    with raises_at_sync("one_hot: " + msg):
        call("one_hot", [make(np.array([1, bad]), ls.int64, "cuda")], num_classes=5)
    # Only the first fault since the last raise is kept; the device then works as before. (Any
    # host wait raises it, a copy to the GPU too: the one_hot index is made before.)
    i3 = make(np.array([bad]), ls.int64, "cuda")
    with raises_at_sync("gather: " + msg):
        call("gather", [x, i2], dim=1)
        call("one_hot", [i3], num_classes=5)
    ls.cuda.synchronize()
    assert host(call("gather", [x, make(np.zeros((3, 1)), ls.int64, "cuda")], dim=1)[0]).shape == (3, 1)


def test_index_errors_match_cpu_messages():
    for dev in ("cpu", "cuda"):
        with pytest.raises(TypeError, match="index must be int32 or int64"):
            call("gather", [ls.zeros(3, device=dev), ls.zeros(3, device=dev)], dim=0)
        with pytest.raises(ValueError, match="index must have as many dimensions"):
            call("gather", [ls.zeros(3, 2, device=dev), ls.zeros(3, dtype=ls.int64, device=dev)], dim=0)
        with pytest.raises(ValueError, match="one_hot: cannot infer num_classes"):
            call("one_hot", [ls.zeros(0, dtype=ls.int64, device=dev)], num_classes=-1)
        bad = make(np.array([-1, -2]), ls.int64, dev)
        if dev == "cpu":
            with pytest.raises(IndexError, match="one_hot: index -1 is out of range"):
                call("one_hot", [bad], num_classes=-1)
        else:
            with raises_at_sync("one_hot: index -1 is out of range"):
                call("one_hot", [bad], num_classes=-1)


@pytest.mark.parametrize("idx_dtype", [ls.int32, ls.int64])
def test_index_check_records_the_first_bad_value(idx_dtype):
    """The op "index_check" on the GPU: the CPU op's message for the first bad value (of three,
    far apart), raised at the next synchronisation; valid input records nothing."""
    i = np.zeros(100000, np.int64)
    i[[70001, 99999]] = 9
    i[50000] = -3
    i[2] = -100  # ignore_index, for kind "target"
    idx = make(i, idx_dtype, "cuda")
    with raises_at_sync(r"cross_entropy: target -3 at position 50000 is out of range for 9 classes "
                        r"\(ignore_index is -100\) \(found on the GPU"):
        core.call("index_check", [idx], {"kind": "target", "op": "cross_entropy", "size": 9, "ignore_index": -100})
    with raises_at_sync(r"embedding: id -100 at position 2 is out of range for 9 embeddings"):
        core.call("index_check", [idx], {"kind": "id", "op": "embedding", "size": 9})
    with raises_at_sync(r"gather: index -100 is out of range for dimension 1 of size 9"):
        core.call("index_check", [idx], {"kind": "index", "op": "gather", "size": 9, "dim": 1})
    core.call("index_check", [make(np.arange(10), idx_dtype, "cuda")], {"kind": "id", "op": "embedding", "size": 10})
    ls.cuda.synchronize()
