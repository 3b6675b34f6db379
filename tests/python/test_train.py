"""The training loop: schedules, exact resume, atomic checkpoints, non-finite losses."""
import json
import os
import shutil
import signal
import subprocess
import sys

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


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_resume_gives_bit_identical_losses(tmp_path, grad_accum):
    full = run(tmp_path / "full", 8, grad_accum=grad_accum)
    # stopped after step 5, as an interrupt would (it checkpoints)
    run(tmp_path / "split", 8, stop_at=5, grad_accum=grad_accum)
    resumed = run(tmp_path / "split", 8, resume_from=True, grad_accum=grad_accum)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    w_full = full.model.head.weight.detach().numpy()
    assert np.array_equal(resumed.model.head.weight.detach().numpy(), w_full)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    t = run(tmp_path, 8, keep_last=2)
    root = tmp_path / "checkpoints"
    names = {d for d in os.listdir(root) if d.startswith("step_")}
    assert names == {"step_0000006", "step_0000008", os.path.basename(t.best_ckpt)}  # last two, best
    # A writer killed half-way leaves a hidden temporary folder; the latest checkpoint is intact.
    os.makedirs(root / ".step_0000010.tmp-999")
    assert latest_checkpoint(str(root)).endswith("step_0000008")
    assert run(tmp_path, 8, resume_from=True).step == 8


def test_resume_rejects_changed_settings(tmp_path):
    run(tmp_path, 4)
    ls.manual_seed(0)
    cfg = TrainConfig(steps=8, batch_size=8, seq_len=8, seed=5, ckpt_every=2, out=str(tmp_path))
    t = Trainer(BigramLM(), cfg, make_source(B=8), log=lambda *_: None)
    with pytest.raises(ValueError, match=r"settings changed \(batch_size: 4 -> 8; seed: 1337 -> 5\)"):
        t.resume()
    # steps (and the schedule) may change: extending a run is a resume
    assert run(tmp_path, 8, resume_from=True).step == 8


def test_resume_falls_back_when_latest_names_a_missing_folder(tmp_path):
    run(tmp_path, 8, keep_last=3)
    root = tmp_path / "checkpoints"
    shutil.rmtree(root / "step_0000008")  # lost between the folder's rename and `latest`'s
    assert latest_checkpoint(str(root)).endswith("step_0000006")
    assert run(tmp_path, 8, resume_from=True).step == 8


def test_resume_rewinds_the_log(tmp_path):
    # A run that logged steps 1..8 but whose last checkpoint is step 4 (ckpt_every 4, the
    # step-8 checkpoint lost) resumes at 4: the log keeps steps 1..4, then 5..8 once each. A
    # line cut short by the lost machine is dropped too.
    run(tmp_path, 8, ckpt_every=4)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000008")
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 9, "lo\0\0')
    t = run(tmp_path, 8, resume_from=True, ckpt_every=4)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert t.step == 8 and steps == list(range(1, 9))


def test_damaged_checkpoints_are_named(tmp_path):
    run(tmp_path, 4)
    folder = tmp_path / "checkpoints" / "step_0000004"
    model = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(model[:40])
    with pytest.raises(ValueError, match="step_0000004: model.safetensors is corrupt or incomplete"):
        run(tmp_path, 4, resume_from=True)
    (folder / "model.safetensors").write_bytes(model)
    (folder / "trainer.json").write_text('{"step": 4,')
    with pytest.raises(ValueError, match="step_0000004: trainer.json is corrupt"):
        run(tmp_path, 4, resume_from=True)
    (folder / "trainer.json").write_text('{"step": 4}')
    with pytest.raises(ValueError, match="trainer.json lacks optimizer_groups, optimizer_scalars"):
        run(tmp_path, 4, resume_from=True)


def test_resaving_a_step_and_dead_writers_temporaries(tmp_path):
    t = run(tmp_path, 2)
    root = tmp_path / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a process that no longer runs
    (root / f".step_0000009.tmp-{dead.pid}").mkdir()
    (root / f"latest.tmp-{dead.pid}").write_text("step_0000009")
    (root / f"notes.old-{dead.pid}").mkdir()  # not a checkpoint temporary: left alone
    t.save()  # step 2 again: replaced whole
    assert sorted(os.listdir(root)) == ["latest", f"notes.old-{dead.pid}", "step_0000002"]
    assert latest_checkpoint(str(root)).endswith("step_0000002")
    # A writer lost between re-saving's two renames left step 2 only as its .old copy: resume
    # finds it there, and the next save puts it back under its name.
    os.rename(root / "step_0000002", root / f".step_0000002.old-{dead.pid}")
    assert latest_checkpoint(str(root)).endswith(f".step_0000002.old-{dead.pid}")
    t2 = run(tmp_path, 4, resume_from=True)
    assert t2.step == 4 and {"step_0000002", "step_0000004"} <= set(os.listdir(root))


def test_an_interrupt_after_a_saved_step_does_not_save_it_again(tmp_path):
    source = make_source()

    def interrupting(index):
        if index == 1:  # during step 2, which checkpoints (ckpt_every 2)
            os.kill(os.getpid(), signal.SIGINT)
        return source(index)

    ls.manual_seed(0)
    messages = []
    cfg = TrainConfig(steps=8, batch_size=4, seq_len=8, eval_every=2, eval_batches=1, ckpt_every=2,
                      out=str(tmp_path))
    t = Trainer(BigramLM(), cfg, interrupting, log=messages.append)
    t.fit()
    assert t.step == 2 and "interrupted at step 2, whose checkpoint is saved" in messages


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
    discarded = []
    model.moe_discard_load = lambda: discarded.append(t.step)  # as a MoE model has
    t.fit()
    assert t.step == 6 and any("skipped" in m for m in messages)
    assert discarded == [4, 5]  # each skipped step's expert loads were dropped


def test_bad_config_values():
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="on_nan"):
        TrainConfig(on_nan="ignore")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="exp")
