"""CUDA layer_norm (cuda/layer_norm.cu) against the CPU op and torch float64: every float dtype,
odd shapes, with and without weight and bias, forward and the gradients of x, weight and bias;
the saved statistics; bitwise-reproducible parameter gradients; rows too long for the
shared-memory accumulators; many rows over a capped grid. add_layer_norm (the residual add fused
with the norm) the same way, through both outputs h and y, including a residual whose rows are
not 16-byte aligned (the scalar path of the kernels)."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as core
from conftest import randn, rel_err, torch
from rows_vs_cpu import DTYPES, REG_ROWS, SHAPES, TOL, check, host, rounded

pytestmark = pytest.mark.cuda

PARAMS = {"weight+bias": (True, True), "weight": (True, False), "none": (False, False)}


def inputs(shape, weight, bias):
    C = shape[-1]
    # A mean offset and a scale away from 1 so that centring and normalising both matter.
    return [randn(*shape, scale=2.0) + 0.5, randn(C) if weight else None, randn(C) if bias else None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + REG_ROWS + [(3, 40000)])
@pytest.mark.parametrize("params", list(PARAMS))
def test_forward_and_gradients(params, shape, dtype):
    C = shape[-1]
    check(lambda x, w, b: F.layer_norm(x, C, w, b, eps=1e-5),
          lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), w, b, eps=1e-5),
          inputs(shape, *PARAMS[params]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_input(dtype):
    C = 96
    check(lambda x, w, b: F.layer_norm(x.transpose(0, 1), C, w, b),
          lambda x, w, b: torch.nn.functional.layer_norm(x.transpose(0, 1), (C,), w, b),
          [randn(C, 37), randn(C), randn(C)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_saved_statistics(dtype):
    x = rounded(randn(5, 300) + 1.0, dtype)
    y, mean, rstd = core.call("layer_norm", [ls.tensor(x).to(dtype=dtype).cuda(), None, None], {"eps": 1e-5})
    assert mean.dtype == rstd.dtype == (ls.float64 if dtype == ls.float64 else ls.float32)
    assert tuple(mean.shape) == tuple(rstd.shape) == (5,)
    tol = 1e-12 if dtype == ls.float64 else 1e-6  # statistics are computed in float32 or wider
    assert rel_err(host(mean), x.mean(-1)) < tol
    assert rel_err(host(rstd), 1 / np.sqrt(x.var(-1) + 1e-5)) < tol


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_parameter_gradients_are_reproducible(dtype):
    x, w, b = (ls.tensor(a).to(dtype=dtype).cuda() for a in (randn(3000, 257), randn(257), randn(257)))
    g = ls.tensor(randn(3000, 257)).to(dtype=dtype).cuda()
    _, mean, rstd = core.call("layer_norm", [x, w, b], {"eps": 1e-5})
    runs = [core.call("layer_norm_backward", [g, x, w, mean, rstd], {"dweight": True, "dbias": True})
            for _ in range(3)]
    for r in runs[1:]:
        for a, b_ in zip(r, runs[0]):
            assert np.array_equal(host(a), host(b_))


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
@pytest.mark.parametrize("C", [257, 1024, 40000])
def test_each_parameter_gradient_alone_matches_both(C, dtype):
    # dweight alone, dbias alone and both use different accumulator blocks (norm.cuh); every
    # column is still summed in the same order, so the results agree bitwise. C = 1024 takes the
    # 16-byte vector path, 257 the scalar one, 40000 the global-memory accumulators.
    R = 600
    x, w = (ls.tensor(a).to(dtype=dtype).cuda() for a in (randn(R, C), randn(C)))
    g = ls.tensor(randn(R, C)).to(dtype=dtype).cuda()
    _, mean, rstd = core.call("layer_norm", [x, w, None], {"eps": 1e-5})
    call = lambda dw, db: core.call("layer_norm_backward", [g, x, w, mean, rstd], {"dweight": dw, "dbias": db})
    both, w_only, b_only = call(True, True), call(True, False), call(False, True)
    assert tuple(w_only[2].shape) == (0,) and tuple(b_only[1].shape) == (0,)
    for got, ref in ((w_only[0], both[0]), (b_only[0], both[0]), (w_only[1], both[1]), (b_only[2], both[2])):
        assert np.array_equal(host(got), host(ref))
    # and against float64 sums of the same rounded values
    gd, xd = host(g), host(x)
    xhat = (xd - host(mean)[:, None]) * host(rstd)[:, None]
    assert rel_err(host(both[1]), (gd * xhat).sum(0)) < TOL[dtype]
    assert rel_err(host(both[2]), gd.sum(0)) < TOL[dtype]


def test_backward_accepts_statistics_in_the_input_dtype():
    x, w = (ls.tensor(a).to(dtype=ls.bfloat16).cuda() for a in (randn(7, 130), randn(130)))
    g = ls.tensor(randn(7, 130)).to(dtype=ls.bfloat16).cuda()
    _, mean, rstd = core.call("layer_norm", [x, w, None], {"eps": 1e-5})
    a = core.call("layer_norm_backward", [g, x, w, mean, rstd], {"dweight": True, "dbias": False})
    b = core.call("layer_norm_backward", [g, x, w, mean.to(dtype=ls.bfloat16), rstd.to(dtype=ls.bfloat16)],
                  {"dweight": True, "dbias": False})
    assert tuple(a[2].shape) == (0,) and tuple(b[2].shape) == (0,)
    for u, v in zip(a[:2], b[:2]):
        assert rel_err(host(v), host(u)) < TOL[ls.bfloat16]


def test_empty_rows():
    x = ls.zeros(0, 8, device="cuda")
    w = ls.ones(8, device="cuda", requires_grad=True)
    x.requires_grad_()
    y = F.layer_norm(x, 8, w)
    assert tuple(y.shape) == (0, 8)
    y.sum().backward()
    assert np.array_equal(host(w.grad), np.zeros(8))


# ---- add_layer_norm ----

def _torch_add_layer_norm(x, r, w, b):
    h = x + r
    return torch.stack([h, torch.nn.functional.layer_norm(h, (h.shape[-1],), w, b, eps=1e-5)])


def _add_layer_norm(x, r, w, b):
    return F.stack(list(F.add_layer_norm(x, r, w, b, eps=1e-5)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + REG_ROWS + [(3, 40000)])
@pytest.mark.parametrize("params", list(PARAMS))
def test_add_layer_norm_forward_and_gradients(params, shape, dtype):
    # The loss uses h and y, so dx = dh + the norm's gradient, every term non-zero.
    x, w, b = inputs(shape, *PARAMS[params])
    check(_add_layer_norm, _torch_add_layer_norm, [x, randn(*shape), w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_only_y_used(dtype):
    # dh arrives as zeros (filled by autograd): dx is the norm's gradient alone.
    C = 200
    check(lambda x, r, w, b: F.add_layer_norm(x, r, w, b)[1],
          lambda x, r, w, b: torch.nn.functional.layer_norm(x + r, (C,), w, b, eps=1e-5),
          [randn(9, C) + 1.0, randn(9, C), randn(C), randn(C)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_misaligned_and_non_contiguous(dtype):
    # r starts one element into its storage (rows not 16-byte aligned: the scalar kernels);
    # x is a transposed view (copied to contiguous first).
    R, C = 37, 96
    check(lambda x, r, w, b: _add_layer_norm(x.transpose(0, 1), r[1:].view(R, C), w, b),
          lambda x, r, w, b: _torch_add_layer_norm(x.transpose(0, 1), r[1:].view(R, C), w, b),
          [randn(C, R), randn(R * C + 1), randn(C), randn(C)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_statistics(dtype):
    x, r = rounded(randn(5, 300) + 1.0, dtype), rounded(randn(5, 300), dtype)
    h, y, mean, rstd = core.call("add_layer_norm", [ls.tensor(a).to(dtype=dtype).cuda() for a in (x, r)]
                                 + [None, None], {"eps": 1e-5})
    hh = rounded(x + r, dtype)  # h is rounded to the input dtype, as a separate add would
    assert np.array_equal(host(h), hh)
    assert mean.dtype == rstd.dtype == (ls.float64 if dtype == ls.float64 else ls.float32)
    tol = 1e-12 if dtype == ls.float64 else 1e-6
    assert rel_err(host(mean), hh.mean(-1)) < tol
    assert rel_err(host(rstd), 1 / np.sqrt(hh.var(-1) + 1e-5)) < tol


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16])
def test_add_layer_norm_backward_op(dtype):
    # The fused backward matches layer_norm_backward plus dh (one rounding instead of two), and
    # its parameter gradients are bitwise reproducible.
    dev = lambda a: ls.tensor(a).to(dtype=dtype).cuda()
    x, r, w, b = dev(randn(3000, 257)), dev(randn(3000, 257)), dev(randn(257)), dev(randn(257))
    dy, dh = dev(randn(3000, 257)), dev(randn(3000, 257))
    h, _, mean, rstd = core.call("add_layer_norm", [x, r, w, b], {"eps": 1e-5})
    attrs = {"dweight": True, "dbias": True}
    runs = [core.call("add_layer_norm_backward", [dy, dh, h, w, mean, rstd], attrs) for _ in range(3)]
    for run_ in runs[1:]:
        for a, b_ in zip(run_, runs[0]):
            assert np.array_equal(host(a), host(b_))
    ref = core.call("layer_norm_backward", [dy, h, w, mean, rstd], attrs)
    assert rel_err(host(runs[0][0]), host(ref[0]) + host(dh)) < TOL[dtype]
    for a, b_ in zip(runs[0][1:], ref[1:]):
        assert rel_err(host(a), host(b_)) < TOL[dtype]
