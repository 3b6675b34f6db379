"""CUDA cat against the CPU op on the same values: every dtype, each dim, odd sizes (1-, 2- and
16-byte copy units), non-contiguous inputs, 1-D empty inputs, more than one launch of pieces
(over 32 inputs), and the gradient (slices of the output gradient)."""
import pytest

import llmscratch as ls
from cuda_data_ops import FLOATS, INTS, assert_same, backward_both, call, make, normal_values, rng

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("shapes,dim", [
    ([(3, 5), (4, 5), (1, 5)], 0),
    ([(3, 5), (3, 1), (3, 7)], 1),
    ([(2, 3, 8), (2, 5, 8)], 1),        # rows of whole 16-byte units for 16-bit dtypes
    ([(2, 3, 127), (2, 3, 1)], -1),
    ([(1,), (1023,), (3,)], 0),
    ([(4, 2, 3)], 2),
])
def test_cat_matches_cpu(shapes, dim, dtype):
    arrays = [normal_values(s, dtype) for s in shapes]
    g = call("cat", [make(a, dtype, "cuda") for a in arrays], dim=dim)[0]
    c = call("cat", [make(a, dtype, "cpu") for a in arrays], dim=dim)[0]
    assert_same(g, c, "cat")


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16, ls.uint8])
def test_cat_strided_empty_and_many(dtype):
    a, b = normal_values((6, 9), dtype), normal_values((9, 6), dtype)
    gs = [make(a, dtype, "cuda")[:, ::2], make(b, dtype, "cuda").transpose(0, 1)[:, 1:]]
    cs = [make(a, dtype, "cpu")[:, ::2], make(b, dtype, "cpu").transpose(0, 1)[:, 1:]]
    gs.insert(1, ls.zeros(0, device="cuda", dtype=dtype))  # (0,): skipped whatever the rank
    cs.insert(1, ls.zeros(0, dtype=dtype))
    assert_same(call("cat", gs, dim=1)[0], call("cat", cs, dim=1)[0], "strided + empty")
    pieces = [normal_values((2, int(rng.integers(1, 6))), dtype) for _ in range(41)]
    assert_same(call("cat", [make(p, dtype, "cuda") for p in pieces], dim=1)[0],
                call("cat", [make(p, dtype, "cpu") for p in pieces], dim=1)[0], "41 inputs")
    e = call("cat", [ls.zeros(0, device="cuda", dtype=dtype)] * 2, dim=0)[0]
    assert tuple(e.shape) == (0,)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64])
def test_cat_backward(dtype):
    arrays = [rng.standard_normal(s) for s in [(3, 4, 5), (3, 1, 5), (3, 7, 5)]]
    cs = [make(a, dtype, "cpu", requires_grad=True) for a in arrays]
    gs = [make(a, dtype, "cuda", requires_grad=True) for a in arrays]
    backward_both(call("cat", cs, dim=1)[0], call("cat", gs, dim=1)[0], dtype)
    for c, g in zip(cs, gs):
        assert_same(g.grad, c.grad, "grad")


def test_cat_errors_name_the_op():
    with pytest.raises(ValueError, match="cat: sizes of tensors must match"):
        call("cat", [ls.zeros(2, 3, device="cuda"), ls.zeros(3, 4, device="cuda")], dim=0)
    with pytest.raises(TypeError, match="cat: expected all tensors to have dtype"):
        call("cat", [ls.zeros(2, device="cuda"), ls.zeros(2, device="cuda", dtype=ls.int64)], dim=0)
