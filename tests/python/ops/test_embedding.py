"""embedding forward and weight gradient against torch, float64 and float32, odd shapes."""
import numpy as np
import pytest
import torch

import llmscratch as ls
import llmscratch.functional as F

DTYPES = [(ls.float64, torch.float64, 1e-12), (ls.float32, torch.float32, 1e-5)]


@pytest.mark.parametrize("dt,tdt,tol", DTYPES)
@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("V,C,ids_shape", [(1, 1, (1,)), (13, 7, (3, 5)), (50, 33, (2, 3, 17)), (5, 4, ())])
def test_forward_and_grad_match_torch(dt, tdt, tol, ids_dtype, V, C, ids_shape):
    rng = np.random.default_rng()
    w_np = rng.standard_normal((V, C))
    ids_np = rng.integers(0, V, size=ids_shape).astype(ids_dtype)  # repeats guaranteed for small V
    g_np = rng.standard_normal(ids_shape + (C,))

    w = ls.tensor(w_np, dtype=dt, requires_grad=True)
    out = F.embedding(ls.from_numpy(ids_np), w)
    out.backward(ls.tensor(g_np, dtype=dt))

    tw = torch.tensor(w_np, dtype=tdt, requires_grad=True)
    tout = torch.nn.functional.embedding(torch.from_numpy(ids_np.astype(np.int64)), tw)
    tout.backward(torch.tensor(g_np, dtype=tdt))

    assert out.shape == tuple(tout.shape)
    np.testing.assert_array_equal(out.detach().numpy(), tout.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=tol, atol=tol)


def test_empty_ids_give_empty_output_and_zero_grad():
    w = ls.tensor(np.random.standard_normal((4, 3)), dtype=ls.float64, requires_grad=True)
    out = F.embedding(ls.from_numpy(np.zeros((0, 2), dtype=np.int64)), w)
    assert out.shape == (0, 2, 3)
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros((4, 3)))


def test_bad_inputs():
    w = ls.tensor(np.random.standard_normal((5, 3)), dtype=ls.float32)
    with pytest.raises(IndexError, match=r"embedding: id 5 .*5 embeddings"):
        F.embedding(ls.from_numpy(np.array([0, 5])), w)
    with pytest.raises(IndexError, match=r"id -1"):
        F.embedding(ls.from_numpy(np.array([-1], dtype=np.int32)), w)
    with pytest.raises(TypeError, match="ids must be int32 or int64"):
        F.embedding(ls.tensor([1.0]), w)
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        F.embedding(ls.tensor([1]), ls.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="must be Tensors"):
        F.embedding(np.array([1]), w)
