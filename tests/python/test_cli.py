"""The llmscratch command end to end on a small budget: train (tokenizer and shards built and
cached on first use), resume, sample, eval, and one-line errors."""
import glob
import json
import os
import sys

import numpy as np
import pytest

from llmscratch.cli import main

TEXT = "".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    for k in range(4):
        (tmp_path / "data" / f"part{k}.py").write_text(TEXT)
    return str(tmp_path / "data")


def train_args(tmp_path, corpus, *extra):
    return ["train", "--data", corpus, "--vocab-size", "320", "--batch-size", "4", "--seq-len", "32",
            "--eval-every", "3", "--ckpt-every", "3", "--val-fraction", "0.3", "--warmup", "1",
            "--out", str(tmp_path / "runs"), "--name", "t", *extra]


def train(tmp_path, corpus, *extra):
    return main(train_args(tmp_path, corpus, "--quiet", *extra))


def test_train_resume_sample_eval(tmp_path, corpus, capsys):
    assert train(tmp_path, corpus, "--steps", "6") == 0
    run = tmp_path / "runs" / "t"
    for f in ("config.json", "log.jsonl", "loss.png", "samples.txt", "tokenizer.tiktoken", "tokenizer.json"):
        assert (run / f).exists(), f
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    # a second run with the same name refuses to overwrite; --resume continues it
    assert train(tmp_path, corpus, "--steps", "6") == 2
    assert "already holds a run" in capsys.readouterr().err
    # --resume with a setting that decides the batches refuses before touching the run
    saved = {f: (run / f).read_bytes() for f in ("config.json", "tokenizer.tiktoken", "tokenizer.json")}
    assert train(tmp_path, corpus, "--steps", "8", "--resume", "--batch-size", "2") == 2
    assert "batch_size: 4 -> 2" in capsys.readouterr().err
    assert all((run / f).read_bytes() == b for f, b in saved.items())
    assert train(tmp_path, corpus, "--steps", "8", "--resume") == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 8
    # another model, or the same data named by another path
    assert train(tmp_path, corpus, "--steps", "8", "--resume", "--preset", "moe-tiny") == 2
    assert "model.n_experts: 0 -> " in capsys.readouterr().err
    rel = os.path.relpath(corpus)
    assert main(["train", "--data", rel, "--vocab-size", "320", "--batch-size", "4", "--seq-len", "32",
                 "--eval-every", "3", "--ckpt-every", "3", "--val-fraction", "0.3", "--warmup", "1",
                 "--out", str(tmp_path / "runs"), "--name", "t", "--quiet", "--steps", "9", "--resume"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run), "--prompt", "", "--max-new-tokens", "4"]) == 0
    assert "<|endoftext|>" not in capsys.readouterr().out  # the token an empty prompt starts from is not shown
    assert main(["sample", "--ckpt", str(run), "--prompt", "def ", "--max-new-tokens", "10"]) == 0
    assert main(["sample", "--ckpt", str(run), "--prompt", "<|endoftext|>", "--max-new-tokens", "4",
                 "--top-k", "0"]) == 0
    assert main(["eval", "--ckpt", str(run), "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "def " in out and "perplexity" in out
    # a run from a GPU machine samples here on the CPU; a damaged config.json is named
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda:3"}))
    assert main(["sample", "--ckpt", str(run), "--max-new-tokens", "2"]) == 0
    assert "device cuda:3 is not available here; using the CPU" in capsys.readouterr().err
    (run / "config.json").write_text("{")
    assert main(["sample", "--ckpt", str(run)]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err


def test_one_text_file_and_no_validation(tmp_path, corpus, capsys):
    # A single file is split within itself; --val-fraction 0 trains without a validation split.
    one = tmp_path / "one.txt"
    one.write_text(TEXT * 3)
    common = ["--vocab-size", "300", "--batch-size", "2", "--seq-len", "16", "--steps", "2",
              "--eval-every", "2", "--ckpt-every", "2", "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(["train", "--data", str(one), "--name", "one", *common]) == 0
    assert main(["train", "--data", str(one), "--name", "noval", "--val-fraction", "0", *common]) == 0
    assert main(["eval", "--ckpt", str(tmp_path / "runs" / "noval")]) == 2
    assert "without a validation split" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Tokenizer.train")  # its small corpus allows few merges
def test_a_failed_start_leaves_no_run_folder(tmp_path, corpus, capsys):
    # The data is too short for the windows asked for: the error names the split, and the same
    # name can be used again once the command is right.
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("def f(x):\n    return x\n" * 40)
    args = ["train", "--data", str(tiny), "--vocab-size", "300", "--batch-size", "2", "--steps", "2",
            "--eval-every", "2", "--ckpt-every", "2", "--out", str(tmp_path / "runs"), "--name", "t",
            "--quiet"]
    assert main([*args, "--seq-len", "256"]) == 2
    assert "split of" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t").exists()
    # a dtype this device cannot train in is refused before the run folder is written
    assert main([*args, "--seq-len", "8", "--val-fraction", "0.3", "--dtype", "bfloat16"]) == 2
    assert "trains on a GPU only" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t").exists() or not any((tmp_path / "runs" / "t").iterdir())
    assert main([*args, "--seq-len", "8", "--val-fraction", "0.3"]) == 0


def test_errors_are_one_line(tmp_path, corpus, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert main(["train", "--data", corpus, "--steps", "0", "--out", str(tmp_path)]) == 2
    assert main(["train", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert main(["sample", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--data", corpus, "--tokens-per-step", "1000", "--out", str(tmp_path)]) == 2
    assert main(["train", "--data", corpus, "--resume", "--name", "typo", "--out", str(tmp_path)]) == 2
    for bad in (["--warmup", "-5"], ["--min-lr", "10"], ["--tokens-per-step", "0"], ["--seed", "-1"],
                ["--lr", "nan"], ["--weight-decay", "inf"], ["--vocab-size", "0"]):
        assert main(["train", "--data", corpus, "--out", str(tmp_path), *bad]) == 2
    assert main(["sample", "--ckpt", str(tmp_path), "--num-samples", "0"]) == 2
    assert main(["eval", "--ckpt", str(tmp_path), "--batches", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 15 and all(line.startswith("llmscratch ") and "error:" in line for line in err)
    assert "typo has no config.json" in err[5]
    assert "warmup must be non-negative" in err[6] and "min_lr 10.0 exceeds lr" in err[7]
    assert "--tokens-per-step 0" in err[8] and "seed must be in" in err[9]
    assert "lr must be finite, got nan" in err[10] and "weight_decay must be finite, got inf" in err[11]
    assert "--vocab-size must be positive, got 0" in err[12]  # 0 had meant the model's default
    assert "--num-samples must be at least 1" in err[13] and "--batches must be at least 1" in err[14]
    assert "unknown model preset 'huge'" in err[2]


def test_sample_runs_in_eval_mode_and_ends_at_the_end_of_text(tmp_path, capsys):
    # A run written by hand: a model whose every next id is <|endoftext|> (the final norm gives
    # its bias b whatever the input, and only the head's row of that id is b), with dropout.
    import llmscratch as ls
    import llmscratch.models as M
    from llmscratch.optim import AdamW
    from llmscratch.tokenizer import Tokenizer
    from llmscratch.train.checkpoint import save_checkpoint
    from llmscratch.train.command import _load_run
    run = tmp_path / "run"
    tok = Tokenizer.train([TEXT], 300, special_tokens=["<|endoftext|>"])
    tok.save(run / "tokenizer")
    config = M.ModelConfig(vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=32,
                           tie_embeddings=False, dropout=0.5)
    model = M.Transformer(config)
    with ls.no_grad():
        b = ls.randn(16)
        model.norm_f.weight.zero_()
        model.norm_f.bias.copy_(b)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eot_token].copy_(b)
    save_checkpoint(str(run / "checkpoints"), 1, model, AdamW(model.parameters()), {})
    (run / "config.json").write_text(json.dumps({"model": config.to_dict(), "device": "cpu"}))
    assert not _load_run(str(run))[0].training
    assert main(["sample", "--ckpt", str(run), "--prompt", "def ", "--temperature", "0",
                 "--max-new-tokens", "20", "--num-samples", "2"]) == 0
    assert capsys.readouterr().out == ("def \n" + "-" * 40 + "\n") * 2


def test_an_edited_source_is_prepared_again_and_a_resume_on_it_refused(tmp_path, corpus, capsys):
    # The data cache's key holds the source's fingerprint: a file edited in place (same path)
    # gives new shards, and the run, which records the tokens it trained on, refuses to go on.
    from llmscratch.train.command import prepare_data
    assert train(tmp_path, corpus, "--steps", "3") == 0
    run = tmp_path / "runs" / "t"
    first = prepare_data(corpus, 320, 0.3, quiet=True)
    config = (run / "config.json").read_bytes()
    for k in range(4):
        part = tmp_path / "data" / f"part{k}.py"
        part.write_text(part.read_text() + "def g(y):\n    return y\n")
    assert prepare_data(corpus, 320, 0.3, quiet=True) != first
    assert json.loads(config)["data_identity"]["train"]["tokens"] > 0
    assert train(tmp_path, corpus, "--steps", "6", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the data of" in err and "changed since the checkpoint" in err
    assert "training split: " in err and "validation split: " in err and " tokens" in err
    assert (run / "config.json").read_bytes() == config


def test_a_deleted_source_is_served_from_the_folder_the_run_trained_on(tmp_path, corpus, capsys):
    # The source is edited (and prepared again for a second run), then deleted: the first run's
    # eval and --resume find the folder holding its own data, not the one prepared last.
    import shutil
    from llmscratch.train.command import prepare_data
    assert train(tmp_path, corpus, "--steps", "3") == 0
    first = prepare_data(corpus, 320, 0.3, quiet=True)
    for k in range(4):
        part = tmp_path / "data" / f"part{k}.py"
        part.write_text(part.read_text() + "def g(y):\n    return y\n")
    assert train(tmp_path, corpus, "--steps", "3", "--name", "second") == 0
    assert prepare_data(corpus, 320, 0.3, quiet=True) != first  # the latest for the path
    shutil.rmtree(tmp_path / "data")
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "runs" / "t"), "--batches", "1"]) == 0
    assert train(tmp_path, corpus, "--steps", "6", "--resume") == 0
    assert main(["eval", "--ckpt", str(tmp_path / "runs" / "second"), "--batches", "1"]) == 0


def test_eval_refuses_data_encoded_with_another_tokenizer(tmp_path, corpus, capsys):
    # The run's validation split is evaluated only as the run's own tokenizer encodes it.
    from llmscratch.tokenizer import Tokenizer
    from llmscratch.train.command import prepare_data
    assert train(tmp_path, corpus, "--steps", "2") == 0
    run = tmp_path / "runs" / "t"
    assert main(["eval", "--ckpt", str(run), "--batches", "1"]) == 0
    capsys.readouterr()
    # the data cache rebuilt, its tokenizer trained anew and differing from the run's
    Tokenizer.train([TEXT.upper()], 320, special_tokens=["<|endoftext|>"]).save(
        prepare_data(corpus, 320, 0.3, quiet=True)[0])
    assert main(["eval", "--ckpt", str(run), "--batches", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from the run's" in err and "pass --data" in err
    assert main(["eval", "--ckpt", str(run), "--batches", "1", "--data", corpus]) == 0


def test_ctrl_c_while_training_saves_and_exits_130(tmp_path, corpus, capsys, monkeypatch):
    # Ctrl-C at step 2: a checkpoint there, named; no final evaluation or sample; exit status 130.
    import signal
    from llmscratch.train import Trainer
    step, evaluations = Trainer.train_step, []

    def train_step(self):
        out = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: evaluations.append(self.step))
    assert train(tmp_path, corpus, "--steps", "6") == 130
    run = tmp_path / "runs" / "t"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted at step 2" in err
    assert str(run / "checkpoints" / "step_0000002") in err
    assert evaluations == [] and not (run / "samples.txt").exists()
    monkeypatch.undo()
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    assert train(tmp_path, corpus, "--steps", "6", "--resume") == 0
    assert (run / "samples.txt").exists()


def test_ctrl_c_while_preparing_data(tmp_path, corpus, capsys, monkeypatch):
    # One line and exit status 130; the preparation's temporary folder is removed, and so is one
    # that a killed process left (not one of a process that runs).
    import subprocess
    import sys
    from llmscratch.data import tokenize_cmd
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (cache / f"data-0123456789ab.tmp-{dead.pid}").mkdir()
    (cache / f"data-0123456789ab.tmp-{os.getppid()}").mkdir()

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(tokenize_cmd, "encode", interrupted)
    assert train(tmp_path, corpus, "--steps", "2") == 130
    assert capsys.readouterr().err == "llmscratch train: interrupted\n"
    assert os.listdir(cache) == [f"data-0123456789ab.tmp-{os.getppid()}"]


def test_conflicting_flags_are_refused(tmp_path, corpus, capsys):
    # --grad-accum and --tokens-per-step both given must agree (batch 4 x 32 tokens = 128 a micro-batch)
    assert train(tmp_path, corpus, "--steps", "2", "--grad-accum", "4", "--tokens-per-step", "256") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--grad-accum 4 disagrees with --tokens-per-step 256" in err
    assert not (tmp_path / "runs" / "t").exists()
    assert train(tmp_path, corpus, "--steps", "2", "--grad-accum", "2", "--tokens-per-step", "256") == 0
    run = tmp_path / "runs" / "t"
    assert json.loads((run / "config.json").read_text())["train"]["grad_accum"] == 2
    # --resume with --steps below the checkpoint's step would train nothing
    saved = {f: (run / f).read_bytes() for f in ("config.json", "samples.txt", "log.jsonl")}
    assert train(tmp_path, corpus, "--steps", "1", "--grad-accum", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is at step 2, past --steps 1" in err
    assert all((run / f).read_bytes() == b for f, b in saved.items())


def test_an_id_out_of_range_is_one_line_but_a_bug_is_not(tmp_path, corpus, capsys, monkeypatch):
    # Data holding an id the model's vocabulary lacks (here a damaged cached shard) fails at the
    # first step: one line. An IndexError of Python's own stays a traceback.
    from llmscratch.data import read_shard, write_shard
    from llmscratch.train import command
    tok_prefix, train_glob, _ = command.prepare_data(corpus, 320, 0.3, quiet=True)
    (shard,) = glob.glob(train_glob)
    ids = np.array(read_shard(shard), dtype=np.int64)
    ids[5:] = 400
    write_shard(shard, ids, 2)
    assert train(tmp_path, corpus, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llmscratch train: error: embedding: id 400" in err

    def bug(args):
        return [][0]
    monkeypatch.setattr(command, "sample_command", bug)
    with pytest.raises(IndexError):
        main(["sample", "--ckpt", str(tmp_path)])


def test_eval_reads_each_window_once_per_token(tmp_path, corpus, capsys):
    # The validation split's windows, each once, the ones after the last whole batch included;
    # --data's windows likewise; the loss per token, whatever the size of the batch it was in.
    import llmscratch as ls
    from llmscratch.data import DataLoader
    from llmscratch.train.command import _load_run, prepare_data
    B, T = 5, 32
    assert train(tmp_path, corpus, "--steps", "2", "--batch-size", str(B)) == 0
    run = tmp_path / "runs" / "t"
    model, tok, cfg, _ = _load_run(str(run))

    def cross_entropy(windows):
        b = ls.tensor(windows)
        with ls.no_grad():
            return model(b[:, :-1], b[:, 1:])[1].item()

    def evaluated(*args):
        capsys.readouterr()
        assert main(["eval", "--ckpt", str(run), *args]) == 0
        out = capsys.readouterr().out.split()
        return float(out[1]), int(out[out.index("tokens") - 1])

    _, _, val_glob = prepare_data(cfg["data"], cfg["vocab_size"], cfg["val_fraction"], quiet=True)
    val = DataLoader(val_glob, B, T, shuffle=False, prefetch=0)
    n = val.num_windows
    windows = np.concatenate([val.batch_numpy(i) for i in range((n + B - 1) // B)])[:n]
    assert n % B and n < 1000 * B  # a short last batch, all within --batches
    loss, tokens = evaluated("--batches", "1000")
    assert tokens == n * T and loss == pytest.approx(cross_entropy(windows), abs=1e-4)
    loss, tokens = evaluated("--batches", "1")  # a cap, as before
    assert tokens == B * T and loss == pytest.approx(cross_entropy(windows[:B]), abs=1e-4)

    # A file of B + 1 windows (and a few tokens more): batches of B and 1.
    text = ""
    while (len(tok.encode(text)) + 1 - 1) // T < B + 1:
        text += f"def f{len(text)}(x):\n    return x\n\n"
    (tmp_path / "more.txt").write_text(text)
    ids = np.array([tok.eot_token] + tok.encode(text), dtype=np.int64)
    windows = np.stack([ids[i * T:i * T + T + 1] for i in range(B + 1)])
    loss, tokens = evaluated("--data", str(tmp_path / "more.txt"), "--batches", "2")
    assert tokens == (B + 1) * T and loss == pytest.approx(cross_entropy(windows), abs=1e-4)


def test_a_setting_too_large_for_memory_and_a_damaged_tokenizer_are_one_line(tmp_path, corpus, capsys, monkeypatch):
    assert train(tmp_path, corpus, "--steps", "2", "--batch-size", "100000000000") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: out of memory" in err
    assert train(tmp_path, corpus, "--steps", "2", "--name", "ok") == 0
    capsys.readouterr()
    # a MemoryError of no message (a list of 10^11 prompts; made here, as a machine that
    # overcommits memory kills the process instead): the line says why itself
    import llmscratch.train.command as command

    def out_of_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(command, "_continue_text", out_of_memory)
    assert main(["sample", "--ckpt", str(tmp_path / "runs" / "ok"), "--max-new-tokens", "1"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: out of memory (" in err and "()" not in err
    (tmp_path / "runs" / "ok" / "tokenizer.json").write_text("{")
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "runs" / "ok")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer.json is not valid JSON" in err


def test_a_block_shorter_than_the_sample_prompt_trains_without_the_closing_sample(tmp_path, corpus):
    (tmp_path / "m.toml").write_text("n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 1\n")
    assert train(tmp_path, corpus, "--steps", "2", "--config", str(tmp_path / "m.toml"), "--seq-len", "1") == 0
    assert (tmp_path / "runs" / "t" / "checkpoints").is_dir()
    assert not (tmp_path / "runs" / "t" / "samples.txt").exists()


def test_the_logged_validation_loss_is_evals(tmp_path, corpus, capsys):
    # training reads the validation windows in order, as `eval` does: the last logged val_loss
    # (eval_batches 8, at the last step, whose checkpoint eval loads) is eval's at --batches 8
    assert train(tmp_path, corpus, "--steps", "3") == 0
    run = tmp_path / "runs" / "t"
    logged = [json.loads(line) for line in open(run / "log.jsonl")]
    val = [r["val_loss"] for r in logged if "val_loss" in r][-1]
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(run), "--batches", "8"]) == 0
    assert float(capsys.readouterr().out.split()[1]) == pytest.approx(val, abs=1e-4)


def test_a_moved_source_is_served_from_its_prepared_cache(tmp_path, corpus, capsys):
    # The cache key holds the source's fingerprint, which a moved or deleted source has not: the
    # folder last prepared for the source with the same settings serves `eval` and `--resume`;
    # with none, the one-line error naming the source.
    import shutil
    from llmscratch.train.command import prepare_data
    source = tmp_path / "data" / "part0.py"
    assert train(tmp_path, str(source), "--steps", "3") == 0
    first = prepare_data(str(source), 320, 0.3, quiet=True)
    source.rename(tmp_path / "moved.py")
    assert prepare_data(str(source), 320, 0.3, quiet=True, gone_ok=True) == first
    run = tmp_path / "runs" / "t"
    assert main(["eval", "--ckpt", str(run), "--batches", "1"]) == 0
    assert train(tmp_path, str(source), "--steps", "6", "--resume") == 0
    capsys.readouterr()
    # a new run on the missing source is refused: it would train on whatever was last prepared
    assert train(tmp_path, str(source), "--steps", "3", "--name", "new") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not 'stdlib', a file" in err and "part0.py" in err
    assert not (tmp_path / "runs" / "new").exists()
    shutil.rmtree(tmp_path / "cache")
    assert main(["eval", "--ckpt", str(run), "--batches", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not 'stdlib', a file" in err and "part0.py" in err


def test_damaged_run_files_are_one_line_errors_or_notes(tmp_path, corpus, capsys):
    assert train(tmp_path, corpus, "--steps", "3") == 0
    run = tmp_path / "runs" / "t"
    ckpt = sorted(glob.glob(str(run / "checkpoints" / "step_*")))[-1]

    def one_line_error(argv, *words):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err

    # a log line that does not parse, or whose step is not a number, is dropped with a note (it
    # was dropped unseen, and a {"step": "x"} record raised a TypeError)
    with open(run / "log.jsonl", "a") as f:
        f.write('garbage\n{"step": "x"}\n')
    capsys.readouterr()
    assert main(train_args(tmp_path, corpus, "--steps", "4", "--resume")) == 0
    assert "log.jsonl: 2 damaged lines dropped" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in open(run / "log.jsonl")] == [1, 2, 3, 4]
    # structurally wrong JSON: one line naming the file (they raised AttributeError/TypeError)
    meta_path = os.path.join(ckpt, "trainer.json")
    meta = json.load(open(meta_path))
    json.dump({**meta, "run_config": []}, open(meta_path, "w"))
    one_line_error(["eval", "--ckpt", ckpt], "trainer.json's run_config must be an object")
    json.dump(meta, open(meta_path, "w"))
    latest = os.path.join(sorted(glob.glob(str(run / "checkpoints" / "step_*")))[-1], "trainer.json")
    latest_meta = json.load(open(latest))
    json.dump({**latest_meta, "run_config": {**latest_meta["run_config"], "data_identity": {"train": 1, "val": 2}}},
              open(latest, "w"))  # a TypeError in the resumed run's data check before
    one_line_error(train_args(tmp_path, corpus, "--steps", "6", "--resume", "--quiet"),
                   "run_config.data_identity must be")
    json.dump(latest_meta, open(latest, "w"))
    config = (run / "config.json").read_text()
    (run / "config.json").write_text("null")
    one_line_error(["sample", "--ckpt", str(run)], "config.json is damaged")
    (run / "config.json").write_text(config)
    tok = run / "tokenizer.json"
    good = tok.read_text()
    tok.write_text(json.dumps({**json.loads(good), "special_tokens": [1, 2]}))
    one_line_error(["sample", "--ckpt", str(run)], "tokenizer.json is damaged")
    tok.write_text(good)
    # non-finite weights: eval refuses its loss, as sample refuses the logits (it printed "loss nan")
    st = pytest.importorskip("safetensors.numpy")
    weights = os.path.join(ckpt, "model.safetensors")
    good_weights = open(weights, "rb").read()
    tensors = st.load_file(weights)
    name = sorted(tensors)[0]
    st.save_file({**tensors, name: np.full_like(tensors[name], np.nan)}, weights)
    one_line_error(["eval", "--ckpt", ckpt, "--batches", "1"], "the loss is nan")
    open(weights, "wb").write(good_weights)
    # an empty or folder-only tokenizer prefix (it wrote ./..json)
    for prefix in ("", str(tmp_path) + os.sep):  # refused before any training
        one_line_error(["tokenize", "train", "--source", corpus, "--vocab-size", "300", "--out", prefix],
                       "the prefix must name files")


def test_data_folders_with_odd_entries(tmp_path, corpus, capsys):
    # a file name that is not UTF-8 (a traceback in the trainer's binding) and a FIFO named *.txt
    # (it blocked the read forever) in the data folder
    odd = os.path.join(corpus.encode(), b"\xff\xfename.py")
    with open(odd, "w") as f:
        f.write(TEXT)
    os.mkfifo(os.path.join(corpus, "pipe.txt"))
    assert train(tmp_path, corpus, "--steps", "2") == 0
    # a warning is one line (Python's format added the source line); shown here, not recorded
    import warnings
    capsys.readouterr()
    with warnings.catch_warnings():  # shown as a shell shows it (pytest records warnings)
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
            print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)
        assert main(["tokenize", "train", "--source", corpus, "--vocab-size", "100000", "--quiet",
                     "--out", str(tmp_path / "tok" / "big")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("llmscratch: warning: ") and err.count("\n") == 1, err
