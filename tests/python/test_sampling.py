"""Sampling: the filters, seeded reproducibility and the draw's distribution."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.nn as nn
from llmscratch.sampling import filter_logits, generate


def test_filters():
    logits = np.array([[1.0, 2.0, 3.0, 0.5]])
    p = filter_logits(logits, 1.0)
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum())
    assert (filter_logits(logits, 1.0, top_k=2)[0] > 0).tolist() == [False, True, True, False]
    # top_p keeps the smallest set whose mass reaches p: 0.63 alone is short of 0.7
    assert (filter_logits(logits, 1.0, top_p=0.7)[0] > 0).tolist() == [False, True, True, False]
    assert (filter_logits(logits, 1.0, top_p=0.5)[0] > 0).tolist() == [False, False, True, False]
    assert filter_logits(logits, 0.0)[0].tolist() == [0, 0, 1, 0]
    sharp = filter_logits(logits, 0.1)[0]
    assert sharp[2] > 0.99
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, 1.0, top_p=0)


class Table(nn.Module):
    """Next-token logits from a fixed table."""

    def __init__(self, table):
        super().__init__()
        self.emb = nn.Embedding(*table.shape)
        self.emb.load_state_dict({"weight": ls.tensor(table)})

    def forward(self, ids):
        return self.emb(ids)


def test_seed_fixes_the_sample_and_frequencies_follow_the_distribution():
    V = 5
    table = np.log(np.full((V, V), 1e-9) + np.eye(V)[[1, 2, 3, 4, 0]])  # i -> i+1 deterministically
    model = Table(table.astype(np.float32))
    out = generate(model, [[0]], 6, temperature=1.0)
    assert out.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    model = Table(np.tile(np.log(probs + 1e-12), (V, 1)).astype(np.float32))
    ls.manual_seed(5)
    a = generate(model, np.zeros((2000, 1), np.int64), 1)
    ls.manual_seed(5)
    b = generate(model, np.zeros((2000, 1), np.int64), 1)
    assert np.array_equal(a, b)
    freq = np.bincount(a[:, 1], minlength=V) / 2000
    np.testing.assert_allclose(freq, probs, atol=0.04)
