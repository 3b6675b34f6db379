"""generate and sample_next beyond the sampling rules of test_models.py: eval mode during
generation, end-of-sequence ids, non-finite logits, and MoE capacity at inference."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.models as M
from conftest import to_np

_rng = np.random.default_rng(0)


def _model(**kw):
    """A small GPT-2 with random weights (the default init gives near-uniform logits)."""
    config = M.ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=16), **kw})
    model = M.Transformer(config, dtype=ls.float64)
    with ls.no_grad():
        for name, p in model.named_parameters():
            arr = _rng.standard_normal(tuple(p.shape)) * 0.3
            if p.ndim == 1 and "weight" in name:  # norm scales around 1
                arr += 1.0
            p.copy_(ls.tensor(arr, dtype=p.dtype))
    return model


def _prompt(model, B=3, T0=4):
    return _rng.integers(0, model.config.vocab_size, size=(B, T0))


# ---- eval mode ---------------------------------------------------------------------------------

def test_generate_runs_in_eval_mode_and_gives_the_mode_back():
    model = _model(dropout=0.5)
    prompt = _prompt(model)
    model.train()
    model.blocks[0].eval()  # a part kept in eval keeps its own mode
    greedy = [to_np(model.generate(prompt, 10, temperature=0)) for _ in range(2)]
    np.testing.assert_array_equal(greedy[0], greedy[1])
    assert model.training and model.blocks[1].training and not model.blocks[0].training
    # dropout draws no random numbers, so a seed gives the tokens of the model in eval mode
    runs = []
    for train in (True, False):
        model.train(train)
        ls.manual_seed(7)
        runs.append(to_np(model.generate(prompt, 10, top_k=20)))
        assert model.training == train
    np.testing.assert_array_equal(runs[0], runs[1])


# ---- end of sequence ---------------------------------------------------------------------------

def _stopped(tokens, T0, eos):
    """What generation with eos gives, from the tokens of a run without it: each row is cut
    after its first eos and filled with it, the columns after the last row's end dropped."""
    out, ends = tokens.copy(), []
    for row in out:
        hits = np.flatnonzero(np.isin(row[T0:], eos))
        end = T0 + hits[0] + 1 if hits.size else len(row)
        row[end:] = row[end - 1]
        ends.append(end)
    return out[:, :max(ends)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eos_finishes_rows_and_stops_when_all_are_finished(temperature):
    model = _model()
    T0 = 4
    prompt = _prompt(model, T0=T0)
    ls.manual_seed(3)
    free = to_np(model.generate(prompt, 12, temperature))
    # ids the rows do sample: row 0's third new id, and every row's first
    for eos in (int(free[0, T0 + 2]), [int(i) for i in free[:, T0]]):
        expect = _stopped(free, T0, eos)
        for use_cache in (True, False):
            ls.manual_seed(3)
            got = to_np(M.generate(model, prompt, 12, temperature, use_cache=use_cache, eos_token_id=eos))
            np.testing.assert_array_equal(got, expect)
    assert expect.shape == (3, T0 + 1)  # every row finished at its first new id
    # an eos id in the prompt finishes nothing
    prompt = free[:, :T0 + 1]
    expect = _stopped(to_np(model.generate(prompt, 3, temperature=0)), T0 + 1, eos)
    np.testing.assert_array_equal(to_np(M.generate(model, prompt, 3, temperature=0, eos_token_id=eos)),
                                  expect)


def test_ids_out_of_the_vocabulary_and_an_empty_vocabulary_are_refused():
    model = _model()
    V = model.config.vocab_size
    for n in (0, 2):  # also when nothing is generated
        with pytest.raises(IndexError, match=f"generate: id {V} is out of range for the vocabulary of {V}"):
            M.generate(model, [[1, V]], n)
    with pytest.raises(ValueError, match="V >= 1"):
        M.sample_next(np.zeros((2, 0)))


def test_eos_token_id_is_checked():
    model = _model()
    for bad in (True, -1, 97, 2.0, [], [3, None], "3", np.array([3])):
        with pytest.raises(ValueError, match="eos_token_id"):
            M.generate(model, [[1, 2]], 2, eos_token_id=bad)


# ---- non-finite logits -------------------------------------------------------------------------

def test_non_finite_logits_are_an_error_naming_the_row():
    inf, nan = np.inf, np.nan
    for logits, row, what in (([[nan, 1.0, 2.0]], 0, r"a NaN or \+inf"),
                              ([[0.0, 1.0, 2.0], [1.0, inf, 0.0]], 1, r"a NaN or \+inf"),
                              ([[0.0, 1.0, 2.0], [-inf, -inf, -inf]], 1, "no finite logit")):
        for kw in (dict(temperature=0), dict(temperature=1.0, top_k=2, top_p=0.9)):
            with pytest.raises(ValueError, match=f"row {row} of the logits has {what}"):
                M.sample_next(logits, **kw)
    # -inf masks an id; a tiny temperature is greedy without overflowing
    assert M.sample_next([[-inf, 0.5, -inf]], uniform=np.array([0.99])).tolist() == [1]
    tiny = M.sample_next([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0]], temperature=1e-310,
                         uniform=np.array([0.99, 0.99]))
    assert tiny.tolist() == [2, 2]  # row 1: ids 0 and 2 tie and share the mass


def test_generate_names_non_finite_logits_and_gives_the_mode_back():
    model = _model()
    with ls.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.train()
    for use_cache in (True, False):
        with pytest.raises(ValueError, match=r"generate \(new token 0\): row 0 of the logits has a NaN"):
            model.generate(_prompt(model), 4, use_cache=use_cache)
        assert model.training


# ---- MoE at inference --------------------------------------------------------------------------

def test_moe_with_capacity_decodes_as_the_full_forward():
    """Capacity drops depend on the batch; in eval nothing is dropped, so one-token cached
    decoding gives the full forward's logits and cached sampling the uncached tokens."""
    model = _model(n_experts=4, top_k=2, intermediate_size=24, capacity_factor=0.5)
    ids = _prompt(model, B=2, T0=12)
    with ls.no_grad():
        model.train()
        model(ls.tensor(ids))
        assert all(m.metrics()["dropped_fraction"] > 0 for m in model.moe_modules())
        model.eval()
        full = to_np(model(ls.tensor(ids)))
        assert all(m.metrics()["dropped_fraction"] == 0 for m in model.moe_modules())
        cache = model.new_kv_cache(2, 12)
        steps = [to_np(model(ls.tensor(ids[:, t:t + 1]), kv_cache=cache, start_pos=t)) for t in range(12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-12)
    runs = []
    for use_cache in (True, False):
        ls.manual_seed(5)
        runs.append(to_np(model.generate(ids[:, :4], 10, use_cache=use_cache)))
    np.testing.assert_array_equal(runs[0], runs[1])
