"""CUDA max (values and int64 indices along one dim; amax/argmax go through it) against the CPU
op on the same values: every dtype, ties (the first index wins), NaN (wins), odd shapes, the
warp and block kernels, keepdim, 0-d, the gradient (max(dim): to the returned index; max() and
min() of all elements: split over the ties), and the empty-dimension error. sum is tested in
tests/python/test_cuda_ops.py."""
import numpy as np
import pytest

import llmscratch as ls
from cuda_data_ops import FLOATS, both, call, host, make, tie_values

pytestmark = pytest.mark.cuda

DTYPES = FLOATS + [ls.int32, ls.int64, ls.uint8]
SHAPES = [((1,), 0), ((3,), 0), ((7, 1023), 1), ((7, 1023), 0), ((5, 3001), -1), ((4, 1, 5), 1),
          ((2, 3, 129), 0), ((130, 33), 1), ((2, 70000), 1)]  # the last: rows cut into chunks


def cpu_ref(a, dtype):
    """The CPU max has no 16-bit kernels: its reference runs on the float32 of the same values."""
    cpu_dtype = ls.float32 if dtype in (ls.bfloat16, ls.float16) else dtype
    return make(a, dtype, "cpu").to(dtype=cpu_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_matches_cpu(shape, dim, keepdim, dtype):
    a = tie_values(shape, dtype)
    gv, gi = call("max", [make(a, dtype, "cuda")], dim=dim, keepdim=keepdim)
    cv, ci = call("max", [cpu_ref(a, dtype)], dim=dim, keepdim=keepdim)
    assert gv.dtype == dtype and gi.dtype == ls.int64
    assert tuple(gv.shape) == tuple(cv.shape) == tuple(gi.shape)
    np.testing.assert_array_equal(host(gv), host(cv))
    np.testing.assert_array_equal(host(gi), host(ci))


@pytest.mark.parametrize("dtype", [ls.float32, ls.int64])
def test_max_strided_input_and_0d(dtype):
    a = tie_values((9, 40), dtype)
    g = make(a, dtype, "cuda").transpose(0, 1)[::3]
    c = make(a, dtype, "cpu").transpose(0, 1)[::3]
    for d in (0, 1):
        gv, gi = call("max", [g], dim=d, keepdim=False)
        cv, ci = call("max", [c], dim=d, keepdim=False)
        np.testing.assert_array_equal(host(gv), host(cv))
        np.testing.assert_array_equal(host(gi), host(ci))
    gv, gi = call("max", [make(np.array(2.0), dtype, "cuda")], dim=0, keepdim=False)
    assert tuple(gv.shape) == () and host(gv) == 2 and host(gi) == 0


def test_amax_argmax_one_long_row():
    a = np.random.default_rng().standard_normal(100003)
    c, g = both(a, ls.float32)
    assert host(g.amax()) == host(c.amax())
    assert host(g.argmax()) == host(c.argmax()) == np.argmax(a.astype(np.float32))


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16])
@pytest.mark.parametrize("shape,dim", [((6, 1500), 1), ((5, 7, 3), 1), ((33,), 0)])
def test_max_backward(shape, dim, dtype):
    a = tie_values(shape, dtype, nan=False)
    ref_dtype = ls.float32 if dtype == ls.bfloat16 else dtype
    c = make(a, ref_dtype, "cpu", requires_grad=True)
    g = make(a, dtype, "cuda", requires_grad=True)
    cv = call("max", [c], dim=dim, keepdim=False)[0]
    gv = call("max", [g], dim=dim, keepdim=False)[0]
    w = np.random.default_rng().integers(1, 5, tuple(cv.shape)).astype(np.float64)  # exact in bf16
    (cv * make(w, ref_dtype, "cpu")).sum().backward()
    (gv * make(w, dtype, "cuda")).sum().backward()
    np.testing.assert_array_equal(host(g.grad), host(c.grad))


def test_max_empty_dimension_raises():
    with pytest.raises(IndexError, match="max: cannot reduce an empty dimension"):
        call("max", [ls.zeros(3, 0, device="cuda")], dim=1, keepdim=False)
    v, i = call("max", [ls.zeros(0, 4, device="cuda")], dim=1, keepdim=False)
    assert tuple(v.shape) == (0,) and tuple(i.shape) == (0,)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16])
def test_max_min_of_all_elements_split_ties_like_the_cpu(dtype):
    # max() and min() without a dim spread the gradient evenly over the tied maxima (over the
    # NaNs when there are any), as torch and the CPU: the "amax" op's backward is device-generic.
    # bf16: few ties, so that the count is exact in bf16; g / count rounded to bf16 on both sides
    ref_dtype = ls.float32 if dtype == ls.bfloat16 else dtype
    for nan in (False, True):
        a = tie_values((33,) if dtype == ls.bfloat16 else (7, 1023), dtype, nan=nan)
        for name in ("max", "min"):
            c = make(a, ref_dtype, "cpu", requires_grad=True)
            g = make(a, dtype, "cuda", requires_grad=True)
            (getattr(c, name)() * 4.0).backward()
            (getattr(g, name)() * 4.0).backward()
            np.testing.assert_array_equal(host(g.grad), host(c.grad.to(dtype=dtype)))


def test_max_of_many_bf16_ties_counts_them_exactly():
    # 257 tied maxima: a count kept in bf16 rounds to 256 (each share 1/256 instead of 1/257)
    x = ls.zeros(300, device="cuda").to(dtype=ls.bfloat16)
    x[:257] = 1.0
    x.requires_grad_()
    x.max().backward()
    expected = float(np.float32(ls.tensor(1.0 / 257).to(dtype=ls.bfloat16).float().item()))
    got = host(x.grad)
    assert (got[:257] == expected).all() and (got[257:] == 0).all()


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_amax_amin_over_a_dim_like_the_cpu(dtype):
    a = tie_values((7, 300), dtype, nan=False)
    for name in ("amax", "amin"):
        c = make(a, ls.float32, "cpu", requires_grad=True)
        g = make(a, dtype, "cuda", requires_grad=True)
        yc, yg = getattr(c, name)(1), getattr(g, name)(1)
        np.testing.assert_array_equal(host(yg), host(yc))
        (yc * 3.0).sum().backward()
        (yg * 3.0).sum().backward()
        np.testing.assert_array_equal(host(g.grad), host(c.grad.to(dtype=dtype)))
