"""CUDA softmax / log_softmax (cuda/softmax.cu) against the CPU op and torch float64: every float
dtype, odd shapes, the last dim (row kernel) and other dims (column kernel), forward and gradient,
non-contiguous inputs, masked (-inf) entries and rows longer than the register cache."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import randn, torch
from rows_vs_cpu import DTYPES, SHAPES, check, host

pytestmark = pytest.mark.cuda

OPS = {"softmax": (F.softmax, torch.softmax), "log_softmax": (F.log_softmax, torch.log_softmax)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(2, 131072)])
@pytest.mark.parametrize("op", list(OPS))
def test_last_dim(op, shape, dtype):
    f, tf = OPS[op]
    check(lambda x: f(x, -1), lambda x: tf(x, -1), [randn(*shape, scale=3.0)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((3, 127), 0), ((2, 3, 129), 0), ((2, 3, 129), 1), ((7, 1023, 1), 1),
                                       ((4, 33, 5, 2), 2)])
@pytest.mark.parametrize("op", list(OPS))
def test_other_dims(op, shape, dim, dtype):
    f, tf = OPS[op]
    check(lambda x: f(x, dim), lambda x: tf(x, dim), [randn(*shape, scale=3.0)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_input(op, dtype):
    f, tf = OPS[op]
    check(lambda x: f(x.transpose(0, 1), -1), lambda x: tf(x.transpose(0, 1), -1), [randn(300, 17)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_rows(dtype):
    # Causal-attention style: -inf above the diagonal; the first row has a single finite entry.
    T = 77
    x = randn(3, T, T)
    x[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    check(lambda x: F.softmax(x, -1), lambda x: torch.softmax(x, -1), [x], dtype)


def test_output_dtype_and_shape():
    x = ls.tensor(randn(4, 5, 6)).to(dtype=ls.bfloat16).cuda()
    for dim in (0, 1, 2, -1):
        y = F.softmax(x, dim)
        assert y.dtype == ls.bfloat16 and tuple(y.shape) == (4, 5, 6) and y.device.type == "cuda"
        s = host(y).sum(axis=dim)
        assert np.allclose(s, 1.0, atol=2e-2)


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16])  # float16 ends at 65504
@pytest.mark.parametrize("dim", [-1, 0])  # the row kernel and the column kernel
def test_log_softmax_of_large_logits(dtype, dim):
    # (x - m) - log s: m + log s rounded first put an error of up to 4e-3 into every output at
    # logits near 1e5 in float32 (cpp/ops/softmax.cpp, the reference, does the same)
    check(lambda x: F.log_softmax(x, dim), lambda x: torch.log_softmax(x, dim),
          [1e5 + randn(9, 1023)], dtype)
