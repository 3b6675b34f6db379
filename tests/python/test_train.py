"""The training loop: schedules, exact resume, atomic checkpoints, non-finite losses, the
validation loss, strict JSON files."""
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.nn as nn
from llmscratch.data import DataLoader, write_shard
from llmscratch.train import TrainConfig, Trainer, latest_checkpoint, learning_rate, save_checkpoint
from llmscratch.train import checkpoint as ckpt_module
from llmscratch.train import loop as loop_module
from llmscratch.optim import AdamW
from llmscratch.train.loop import NonFiniteLoss, evaluate_loss, validation_batches


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


def strict_json(text):
    """json.loads refusing NaN and Infinity, as jq, JavaScript and strict parsers do."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


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
    # a warmup as long as the run: min_lr from total_steps on, never a ramp past it
    assert [learning_rate(s, 1.0, 10, warmup_steps=20, min_lr=0.1) for s in (9, 10, 19, 25)] == \
        [pytest.approx(0.5), 0.1, 0.1, 0.1]
    assert learning_rate(10, 1.0, 10, warmup_steps=10, min_lr=0.1, kind="linear") == 0.1
    assert learning_rate(55, 1.0, 100, warmup_steps=10, min_lr=0.0) == pytest.approx(0.5)
    assert learning_rate(55, 1.0, 100, 10, 0.0, "linear") == pytest.approx(0.5)
    assert learning_rate(99, 1.0, 100, 10, 0.0, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 1.0, 10, kind="step")


def test_loss_goes_down(tmp_path):
    t = run(tmp_path, 40, ckpt_every=40)
    losses = [r["loss"] for r in t.history]
    assert losses[-1] < 0.6 * losses[0]
    assert "aux_loss" not in t.history[-1]  # a model without auxiliary losses logs none
    assert os.path.exists(tmp_path / "log.jsonl")


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_resume_gives_bit_identical_losses(tmp_path, grad_accum):
    full = run(tmp_path / "full", 8, grad_accum=grad_accum)
    # stopped after step 5, as an interrupt would (it checkpoints)
    run(tmp_path / "split", 8, stop_at=5, grad_accum=grad_accum)
    resumed = run(tmp_path / "split", 8, resume_from=True, grad_accum=grad_accum)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    # the stop is no extra evaluation: the validation losses fall where the whole run's do
    assert [r.get("val_loss") for r in resumed.history] == [r.get("val_loss") for r in full.history]
    w_full = full.model.head.weight.detach().numpy()
    assert np.array_equal(resumed.model.head.weight.detach().numpy(), w_full)


def test_a_fresh_fit_redoes_the_steps_of_a_run_lost_before_its_first_checkpoint(tmp_path):
    run(tmp_path, 8, stop_at=3, ckpt_every=100)
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed before any checkpoint
    t = run(tmp_path, 4, ckpt_every=100)
    assert [r["step"] for r in t.history] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")] == [1, 2, 3, 4]


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
    good = json.loads((folder / "trainer.json").read_text())
    for key, bad, what in (("step", "abc", "an integer >= 0"), ("rng", [1], r"\[seed, offset\], two integers"),
                           ("config", None, "an object"), ("optimizer_scalars", {"0.step": "x"}, "an object of numbers")):
        (folder / "trainer.json").write_text(json.dumps({**good, key: bad}))  # a hand-edited file
        with pytest.raises(ValueError, match=f"trainer.json's {key} must be {what}"):
            run(tmp_path, 4, resume_from=True)
    (folder / "trainer.json").write_text('{"step": 4,')
    with pytest.raises(ValueError, match="step_0000004: trainer.json is corrupt"):
        run(tmp_path, 4, resume_from=True)
    (folder / "trainer.json").write_text('{"step": 4}')
    with pytest.raises(ValueError, match="trainer.json lacks optimizer_groups, optimizer_scalars"):
        run(tmp_path, 4, resume_from=True)
    (folder / "trainer.json").write_text(json.dumps(good))
    # a tensor of another dtype (bytes of ints where floats were): refused, not cast into the run
    from safetensors.numpy import load_file, save_file
    for name, match in (("model.safetensors", "model.safetensors holds .*weight as .*int32, not the .*float32"),
                        ("optimizer.safetensors", "state '.*' of parameter 0 has dtype .*int32, not a floating dtype")):
        intact = (folder / name).read_bytes()
        tensors = load_file(str(folder / name))
        save_file({k: v.view(np.int32) for k, v in tensors.items()}, str(folder / name))
        with pytest.raises(ValueError, match=match):
            run(tmp_path, 4, resume_from=True)
        (folder / name).write_bytes(intact)


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
    # the failing step is the fifth, logged as step 5 (the message had said 4, a good step)
    with pytest.raises(NonFiniteLoss, match="step 5: non-finite loss.*step_0000004"):
        t.fit()
    t.cfg.on_nan = "skip"
    messages = []
    t.log = messages.append
    discarded = []
    model.moe_discard_load = lambda: discarded.append(t.step)  # as a MoE model has
    t.fit()
    assert t.step == 6 and [m.split(":")[0] for m in messages if "skipped" in m] == ["step 5", "step 6"]
    assert discarded == [4, 5]  # each skipped step's expert loads were dropped
    # The skipped steps' non-finite values are null in the log (strict JSON), not NaN.
    log = [strict_json(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log[4:]] == [None, None] and math.isnan(t.history[-1]["loss"])


def test_bad_config_values():
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="on_nan"):
        TrainConfig(on_nan="ignore")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="exp")
    for bad, message in ((dict(steps=4.0), "steps must be an int"), (dict(batch_size=True), "batch_size must be an int"),
                         (dict(lr="1e-3"), "lr must be a float"), (dict(recompute=1), "recompute must be a bool")):
        with pytest.raises(TypeError, match=message):
            TrainConfig(**bad)


def test_numpy_numbers_in_the_config_become_python_numbers():
    # They passed the checks but not json.dump: the run failed at its first log record.
    cfg = TrainConfig(steps=np.int64(4), lr=np.float32(0.5), min_lr=np.float64(0.25), warmup=np.int32(1))
    assert [type(v) for v in (cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup)] == [int, float, float, int]
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["lr"] == 0.5
    import pathlib
    assert TrainConfig(out=pathlib.Path("runs") / "x").out == os.path.join("runs", "x")  # a path is a str


# ---- the validation loss --------------------------------------------------------------------

def mean_cross_entropy(model, windows, ignore_index=-100):
    """The cross-entropy per counted target token of `model` over windows (n, T + 1), from its
    logits in numpy (float64); an input id below 0 (an ignored target's) is read as 0."""
    model.eval()
    with ls.no_grad():
        logits = model(ls.tensor(np.maximum(windows[:, :-1], 0))).numpy().astype(np.float64)
    targets = windows[:, 1:]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    mask = targets != ignore_index
    picked = np.take_along_axis(logits, np.where(mask, targets, 0)[..., None], -1)[..., 0]
    return float(((lse - picked) * mask).sum() / mask.sum())


def test_the_validation_loss_reads_each_window_once_per_token(tmp_path):
    # 10 validation windows, batches of 4: 8 batches would be 32 windows, the loader's batches
    # wrapping into later epochs (some windows read 4 times, the others 3). The loss is that of
    # the 10, each read once (batches of 4, 4 and the 2 left).
    T = 8
    tokens = np.random.default_rng(0).integers(0, 32, 10 * T + 1)
    write_shard(tmp_path / "val.bin", tokens)
    val = DataLoader(str(tmp_path / "val.bin"), 4, T, seed=1, prefetch=0)
    everything = np.stack([tokens[i * T:i * T + T + 1] for i in range(10)])
    ls.manual_seed(0)
    model = BigramLM()
    expected = mean_cross_entropy(model, everything)
    for source in (val, val.batch):  # the loader or its batch method
        cfg = TrainConfig(steps=1, batch_size=4, seq_len=T, eval_batches=8, out=str(tmp_path / "run"))
        t = Trainer(model, cfg, make_source(), source, log=lambda *_: None)
        assert [len(b) for b in validation_batches(source, 8)] == [4, 4, 2]
        assert t.evaluate() == pytest.approx(expected, rel=1e-6)
    # eval_batches stays a cap: 2 batches are the loader's first 8 windows, as they were
    first = np.concatenate([val.batch_numpy(0), val.batch_numpy(1)])
    t.cfg.eval_batches = 2
    assert t.evaluate() == pytest.approx(mean_cross_entropy(model, first), rel=1e-6)
    assert evaluate_loss(model, validation_batches(val, 2))[1] == 8 * T


def test_the_validation_loss_weighs_batches_by_their_tokens(tmp_path):
    # A batch source of uneven batches (4 windows, then 1) and targets that are ignore_index:
    # the loss is the mean over the counted tokens, not the mean of the batches' means.
    ls.manual_seed(0)
    model = BigramLM()
    batches = [make_source(B=4)(0).numpy(), make_source(B=1)(1).numpy()]
    cfg = TrainConfig(steps=1, batch_size=4, seq_len=8, eval_batches=2, out=str(tmp_path))
    t = Trainer(model, cfg, make_source(), lambda i: ls.tensor(batches[i]), log=lambda *_: None)
    both = np.concatenate(batches)
    assert t.evaluate() == pytest.approx(mean_cross_entropy(model, both), rel=1e-6)
    masked = both.copy()
    masked[:3, 2:] = -100  # the targets of 3 rows from position 1 on (read as id 0 as inputs)

    class Padded(BigramLM):
        def forward(self, ids, targets=None):
            return super().forward(ls.tensor(np.maximum(ids.numpy(), 0)), targets)

    padded = Padded()
    padded.load_state_dict(model.state_dict())
    model = padded
    loss, count = evaluate_loss(model, [ls.tensor(masked[:4]), ls.tensor(masked[4:])])
    assert count == int((masked[:, 1:] != -100).sum())
    assert loss == pytest.approx(mean_cross_entropy(model, masked), rel=1e-6)
    assert math.isnan(evaluate_loss(model, [])[0])


# ---- the loop -------------------------------------------------------------------------------

def test_fit_runs_outside_the_main_thread(tmp_path):
    # A thread gets no SIGINT handler (Python allows one only on the main thread).
    steps = []
    thread = threading.Thread(target=lambda: steps.append(run(tmp_path, 2).step))
    thread.start()
    thread.join()
    assert steps == [2]


def test_a_failing_plot_does_not_hide_the_error_that_stopped_the_run(tmp_path, monkeypatch):
    def lost(index):
        raise RuntimeError("the data went away")

    def plot(self):
        raise OSError("no space left for loss.png")

    monkeypatch.setattr(Trainer, "plot", plot)
    messages = []
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=8, out=str(tmp_path))
    with pytest.raises(RuntimeError, match="the data went away"):
        Trainer(BigramLM(), cfg, lost, log=messages.append).fit()
    assert any("loss.png not written" in m for m in messages)


def test_tokens_per_second_leave_out_the_checkpoints(tmp_path, monkeypatch):
    real = loop_module.save_checkpoint

    def slow(*args, **kw):  # a checkpoint that takes a while to write
        time.sleep(0.4)
        return real(*args, **kw)

    monkeypatch.setattr(loop_module, "save_checkpoint", slow)
    t = run(tmp_path, 4, eval_every=2, ckpt_every=1)
    for rec in (t.history[1], t.history[3]):  # steps 2 and 4, each after a checkpoint or two
        assert 2 * 4 * 8 / rec["tokens_per_s"] < 0.2  # the seconds of the two steps alone


def test_trainer_json_is_strict_and_holds_no_history(tmp_path):
    # A run without validation: best_val is unknown (null, not Infinity). trainer.json is the
    # same size at step 2 as at step 12; a resume takes the history from log.jsonl.
    ls.manual_seed(0)
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=8, eval_every=2, ckpt_every=2, keep_last=0,
                      out=str(tmp_path))
    t = Trainer(BigramLM(), cfg, make_source(), log=lambda *_: None)
    t.fit()
    root = tmp_path / "checkpoints"
    metas = [strict_json((root / f"step_{s:07d}" / "trainer.json").read_text()) for s in (2, 12)]
    assert all("history" not in m and m["best_val"] is None for m in metas)
    assert abs(len(json.dumps(metas[0])) - len(json.dumps(metas[1]))) < 40
    for line in (tmp_path / "log.jsonl").read_text().splitlines():
        strict_json(line)
    shutil.rmtree(root / "step_0000012")
    os.remove(root / "latest")
    ls.manual_seed(0)
    resumed = Trainer(BigramLM(), cfg, make_source(), log=lambda *_: None)
    assert resumed.resume() and resumed.step == 10 and resumed.best_val == math.inf
    assert resumed.history == t.history[:10]
    # A checkpoint of an older run: Infinity and its history in trainer.json, NaN in the log.
    meta = json.loads((root / "step_0000010" / "trainer.json").read_text())
    meta.update(best_val=math.inf, history=t.history[:10])
    (root / "step_0000010" / "trainer.json").write_text(json.dumps(meta))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    log[3]["loss"] = math.nan
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    ls.manual_seed(0)
    old = Trainer(BigramLM(), cfg, make_source(), log=lambda *_: None)
    # its history is trainer.json's (its log may repeat resumed steps or lack the last ones);
    # the log's NaN still reads
    assert old.resume() and old.best_val == math.inf and old.history == t.history[:10]
    assert math.isnan(old._rewind_log()[3]["loss"])
    old.fit()
    assert [r["loss"] for r in old.history[4:]] == [r["loss"] for r in t.history[4:]]


# ---- checkpoints ----------------------------------------------------------------------------

def test_a_failed_checkpoint_write_leaves_nothing_behind(tmp_path, monkeypatch):
    t = run(tmp_path, 2)
    root = tmp_path / "checkpoints"
    before = (root / "step_0000002" / "model.safetensors").read_bytes()
    real = ckpt_module.save_file

    def full_disk(tensors, path):
        if "optimizer" in path:
            raise OSError(28, "No space left on device")
        return real(tensors, path)

    monkeypatch.setattr(ckpt_module, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(root), 4, t.model, t.optimizer, {})
    assert sorted(os.listdir(root)) == ["latest", "step_0000002"]
    monkeypatch.setattr(ckpt_module, "save_file", real)

    def no_latest(path, text):
        raise OSError(28, "No space left on device")

    # Re-saving step 2 fails after its old folder went aside: the old folder is back.
    monkeypatch.setattr(ckpt_module, "atomic_write_text", no_latest)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(root), 2, t.model, t.optimizer, {})
    assert sorted(os.listdir(root)) == ["latest", "step_0000002"]
    assert (root / "step_0000002" / "model.safetensors").read_bytes() == before
    assert latest_checkpoint(str(root)).endswith("step_0000002")


LOST_WRITER = """
import os, sys
import llmscratch.nn as nn
from llmscratch.optim import AdamW
from llmscratch.train.checkpoint import save_checkpoint
root, when = sys.argv[1], sys.argv[2]
model = nn.Linear(2, 2)
optimizer = AdamW(model.parameters())
for step in (4, 6):
    save_checkpoint(root, step, model, optimizer, {})
rename = os.rename
def renaming(src, dst):  # the machine is lost just before or just after step 8 takes its name
    if when == "before" and dst.endswith("step_0000008"):
        os._exit(9)
    rename(src, dst)
    if when == "after" and dst.endswith("step_0000008"):
        os._exit(9)
os.rename = renaming
save_checkpoint(root, 8, model, optimizer, {})
"""


@pytest.mark.parametrize("when,newest", [("before", "step_0000006"), ("after", "step_0000008")])
def test_a_writer_lost_at_its_rename_resumes_from_the_newest_whole_checkpoint(tmp_path, when, newest):
    root = tmp_path / "checkpoints"
    assert subprocess.run([sys.executable, "-c", LOST_WRITER, str(root), when]).returncode == 9
    assert latest_checkpoint(str(root)).endswith(newest)
    # `latest`, not the highest step, names the newest: a run resumed from an older checkpoint
    # writes below the steps it abandoned.
    model = nn.Linear(2, 2)
    save_checkpoint(str(root), 5, model, AdamW(model.parameters()), {}, keep_last=0)
    assert latest_checkpoint(str(root)).endswith("step_0000005")


def test_steps_past_ten_million_sort_as_numbers(tmp_path):
    model = BigramLM()
    optimizer = AdamW(model.parameters())
    root = str(tmp_path)
    for step in (9_999_999, 10_000_000):
        save_checkpoint(root, step, model, optimizer, {}, keep_last=0)
    os.remove(os.path.join(root, "latest"))  # the highest step is found without it
    assert latest_checkpoint(root).endswith("step_10000000")
    save_checkpoint(root, 10_000_001, model, optimizer, {}, keep_last=2)
    assert sorted(os.listdir(root)) == ["latest", "step_10000000", "step_10000001"]


def _breadth_first_ranks(model):
    """Each parameter's place in the breadth-first walk that named_parameters made before
    2026-11-28 (by the tensor: a tied one where that walk first reached it)."""
    rank, seen, queue = {}, set(), [model]
    while queue:
        m = queue.pop(0)
        if id(m) not in seen:
            seen.add(id(m))
            for p in m._parameters.values():
                if p is not None:
                    rank.setdefault(p._impl_id(), len(rank))
            queue += [c for c in m._modules.values() if c is not None]
    return rank


class TiedNet(nn.Module):
    """A head tied to the first layer of a body: breadth first reaches the tied weight as
    head.weight, before body.0."""

    def __init__(self, V=32, C=16):
        super().__init__()
        self.body = nn.Sequential(nn.Embedding(V, C), nn.Linear(C, C))
        self.head = nn.Linear(C, V)
        self.head.weight = self.body[0].weight

    def forward(self, ids, targets=None):
        logits = self.head(self.body(ids))
        B, T, V = logits.shape
        return logits, F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))


@pytest.mark.parametrize("family", ["transformer", "tied"])
def test_a_checkpoint_of_the_breadth_first_parameter_order_resumes_exactly(tmp_path, family):
    # Checkpoints number the optimizer state in the optimizer's parameter order, which follows
    # named_parameters: breadth first until it became torch's depth-first walk. A checkpoint
    # without parameter_names is read in the old order; each parameter gets its own moments.
    from safetensors.numpy import load_file, save_file
    import llmscratch.models as M
    config = M.ModelConfig(vocab_size=32, n_layer=2, n_head=2, n_embd=16, block_size=16, tie_embeddings=False)
    data = np.random.default_rng(0).integers(0, 32, (64, 17))

    def run(out, steps, stop_at=None, resume=False):
        ls.manual_seed(0)
        model = M.Transformer(config) if family == "transformer" else TiedNet()
        cfg = TrainConfig(steps=steps, batch_size=4, seq_len=16, warmup=1, eval_every=100, ckpt_every=100, out=str(out))
        tr = Trainer(model, cfg, lambda i: ls.tensor(data[(i * 4) % 64:(i * 4) % 64 + 4]), log=lambda *a: None)
        if resume:
            assert tr.resume()
        tr.fit(stop_at=stop_at)
        return model, tr

    full, _ = run(tmp_path / "full", 6)
    _, trainer = run(tmp_path / "split", 6, stop_at=3)
    folder = tmp_path / "split" / "checkpoints" / "step_0000003"
    meta = json.loads((folder / "trainer.json").read_text())
    groups = meta.pop("parameter_names")
    rank, ids = _breadth_first_ranks(trainer.model), {n: p._impl_id() for n, p in trainer.model.named_parameters()}
    legacy = [sorted(g, key=lambda n: rank[ids[n]]) for g in groups]
    assert legacy != groups  # the two orders differ for these models
    old = {n: j for j, n in enumerate(n for g in legacy for n in g)}
    to_old = {i: old[n] for i, n in enumerate(n for g in groups for n in g)}
    tensors = load_file(str(folder / "optimizer.safetensors"))
    save_file({f"state.{to_old[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v for k, v in tensors.items()},
              str(folder / "optimizer.safetensors"))
    meta["optimizer_scalars"] = {f"{to_old[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v
                                 for k, v in meta["optimizer_scalars"].items()}
    for g, names in zip(meta["optimizer_groups"], legacy):
        g["params"] = [old[n] for n in names]
    (folder / "trainer.json").write_text(json.dumps(meta))
    resumed, _ = run(tmp_path / "split", 6, resume=True)
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=n)


def test_a_checkpoint_of_an_optimizer_holding_parameters_beyond_the_model_loads(tmp_path):
    from llmscratch.train.checkpoint import load_checkpoint
    model = nn.Linear(3, 2)
    extra = [nn.Parameter(ls.ones(5)), nn.Parameter(ls.ones(7))]
    opt = AdamW(list(model.parameters()) + extra, lr=0.1)
    for p in opt.param_groups[0]["params"]:
        p.grad = ls.ones(*p.shape)
    opt.step()
    folder = save_checkpoint(str(tmp_path), 1, model, opt, {"rng": [0, 0], "best_val": None, "best_ckpt": None})
    fresh = AdamW(list(model.parameters()) + extra, lr=0.1)
    load_checkpoint(folder, model, fresh)
    assert [tuple(fresh.state[p._impl_id()]["exp_avg"].shape) for p in extra] == [(5,), (7,)]
