"""The training loop: schedules, exact resume, atomic checkpoints, non-finite losses."""
import math
import os

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.nn as nn
from llmscratch.train import TrainConfig, Trainer, latest_checkpoint, learning_rate
from llmscratch.train.loop import NonFiniteLoss


class BigramLM(nn.Module):
    """The smallest language model: logits for the next token from the current one."""

    def __init__(self, V=32, C=16):
        super().__init__()
        self.embed = nn.Embedding(V, C)
        self.head = nn.Linear(C, V)
        self.drop = nn.Dropout(0.1)  # exercises the generator state across a resume

    def forward(self, ids, targets=None):
        logits = self.head(self.drop(self.embed(ids)))
        if targets is None:
            return logits
        B, T, V = logits.shape
        return logits, F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))


def make_source(B=4, T=8, V=32, seed=0):
    """Batches of a repeating pattern with noise, the same for the same index."""
    def source(index):
        rng = np.random.default_rng(seed * 100003 + index)
        start = rng.integers(0, V, size=(B, 1))
        seq = (start + np.arange(T + 1)) % V
        noise = rng.random((B, T + 1)) < 0.1
        seq = np.where(noise, rng.integers(0, V, size=(B, T + 1)), seq)
        return ls.tensor(seq.astype(np.int64))
    return source


def run(tmp_path, steps, resume_from=None, stop_at=None, **kw):
    ls.manual_seed(0)
    model = BigramLM()
    settings = dict(steps=steps, batch_size=4, seq_len=8, lr=0.05, min_lr=0.005, warmup=2,
                    eval_every=2, eval_batches=2, ckpt_every=2, out=str(tmp_path))
    settings.update(kw)
    t = Trainer(model, TrainConfig(**settings), make_source(), make_source(seed=1), log=lambda *_: None)
    if resume_from:
        assert t.resume()
    t.fit(stop_at)
    return t


def test_schedules():
    assert learning_rate(0, 1.0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 100, warmup_steps=10) == pytest.approx(1.0)
    assert learning_rate(100, 1.0, 100, warmup_steps=10, min_lr=0.1) == pytest.approx(0.1)
    assert learning_rate(55, 1.0, 100, warmup_steps=10, min_lr=0.0) == pytest.approx(0.5)
    assert learning_rate(55, 1.0, 100, 10, 0.0, "linear") == pytest.approx(0.5)
    assert learning_rate(99, 1.0, 100, 10, 0.0, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 1.0, 10, kind="step")


def test_loss_goes_down(tmp_path):
    t = run(tmp_path, 40, ckpt_every=40)
    losses = [r["loss"] for r in t.history]
    assert losses[-1] < 0.6 * losses[0]
    assert os.path.exists(tmp_path / "log.jsonl")


def test_resume_gives_bit_identical_losses(tmp_path):
    full = run(tmp_path / "full", 8)
    run(tmp_path / "split", 8, stop_at=5)  # stopped after step 5, as an interrupt would (it checkpoints)
    resumed = run(tmp_path / "split", 8, resume_from=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    w_full = full.model.head.weight.numpy()
    assert np.array_equal(resumed.model.head.weight.numpy(), w_full)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    t = run(tmp_path, 8, keep_last=2)
    root = tmp_path / "checkpoints"
    names = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    assert "step_0000008" in names and len(names) <= 3  # last two plus the best
    # A writer killed half-way leaves a hidden temporary folder; the latest checkpoint is intact.
    os.makedirs(root / ".step_0000010.tmp-999")
    assert latest_checkpoint(str(root)).endswith("step_0000008")
    assert run(tmp_path, 8, resume_from=True).step == 8


def test_non_finite_loss_stops_or_skips(tmp_path):
    def bad_source(index):
        return make_source()(index)

    ls.manual_seed(0)
    model = BigramLM()
    cfg = TrainConfig(steps=4, batch_size=4, seq_len=8, eval_every=2, eval_batches=1, ckpt_every=2,
                      out=str(tmp_path), lr=1e-3)
    t = Trainer(model, cfg, bad_source, log=lambda *_: None)
    t.fit()
    with ls.no_grad():
        model.head.bias.fill_(float("nan"))
    t.cfg.steps = 6
    with pytest.raises(NonFiniteLoss, match="step 4: non-finite loss.*step_0000004"):
        t.fit()
    t.cfg.on_nan = "skip"
    messages = []
    t.log = messages.append
    t.fit()
    assert t.step == 6 and any("skipped" in m for m in messages)


def test_bad_config_values():
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="on_nan"):
        TrainConfig(on_nan="ignore")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="exp")
