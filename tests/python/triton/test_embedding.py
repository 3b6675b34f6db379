import numpy as np
import pytest

from triton_check import CASES, check, rng

# (V, C, ids shape): repeated ids, odd widths, a width over one 1024-channel program.
SHAPES = [(1, 1, (3,)), (7, 5, (2, 9)), (50, 127, (4, 6)), (3, 1100, (5,))]


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
