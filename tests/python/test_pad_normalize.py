"""F.pad (constant mode) and F.normalize against torch in float64, values and gradients."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from conftest import torch


@pytest.mark.parametrize("amounts,value", [((1, 2), None), ((0, 0, 2, 1), 1.5), ((1, -1), None),
                                           ((-2, 1, 1, 0, 0, 1), -3.0), ((-1, -1), None), ((0, 0), None)])
def test_pad_matches_torch(amounts, value):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4))
    a, b = ls.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours, ref = F.pad(a, amounts, value=value), torch.nn.functional.pad(b, amounts, value=value)
    assert ours.shape == tuple(ref.shape)
    g = rng.standard_normal(tuple(ref.shape))
    ours.backward(ls.tensor(g))
    ref.backward(torch.tensor(g))
    np.testing.assert_array_equal(ours.detach().numpy(), ref.detach().numpy())
    np.testing.assert_array_equal(a.grad.numpy(), b.grad.numpy())


def test_pad_keeps_the_dtype_and_refuses_what_it_does_not_do():
    x = ls.tensor([[1, 2], [3, 4]])
    assert F.pad(x, (1, 1)).tolist() == [[0, 1, 2, 0], [0, 3, 4, 0]] and F.pad(x, (1, 1)).dtype == ls.int64
    with pytest.raises(ValueError, match="pad: pad must be a sequence of"):
        F.pad(x, (1,))
    with pytest.raises(ValueError, match="leaves a negative size"):
        F.pad(x, (-2, -1))
    with pytest.raises(NotImplementedError, match="only mode='constant'"):
        F.pad(x, (1, 1), mode="reflect")


@pytest.mark.parametrize("p,dim", [(2.0, 1), (1, -1), (3.0, 0), (2, -1)])
def test_normalize_matches_torch_with_a_zero_vector(p, dim):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5))
    x[1, :, 2] = 0  # a zero vector along dim 1: zeros out, a finite gradient
    x[:, 1, :] = 0  # and along dim -1
    a, b = ls.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours, ref = F.normalize(a, p=p, dim=dim), torch.nn.functional.normalize(b, p=p, dim=dim)
    g = rng.standard_normal(x.shape)
    ours.backward(ls.tensor(g))
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="normalize: p must be"):
        F.normalize(a, p=0)
