"""The llmscratch command end to end on a small budget: train (tokenizer and shards built and
cached on first use), resume, sample, eval, and one-line errors."""
import json
import os

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


def train(tmp_path, corpus, *extra):
    return main(["train", "--data", corpus, "--vocab-size", "320", "--batch-size", "4", "--seq-len", "32",
                 "--eval-every", "3", "--ckpt-every", "3", "--val-fraction", "0.3", "--warmup", "2",
                 "--out", str(tmp_path / "runs"), "--name", "t", "--quiet", *extra])


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
                 "--eval-every", "3", "--ckpt-every", "3", "--val-fraction", "0.3", "--warmup", "2",
                 "--out", str(tmp_path / "runs"), "--name", "t", "--quiet", "--steps", "9", "--resume"]) == 0
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
    assert main([*args, "--seq-len", "8", "--val-fraction", "0.3"]) == 0


def test_errors_are_one_line(tmp_path, corpus, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert main(["train", "--data", corpus, "--steps", "0", "--out", str(tmp_path)]) == 2
    assert main(["train", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert main(["sample", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--data", corpus, "--tokens-per-step", "1000", "--out", str(tmp_path)]) == 2
    assert main(["train", "--data", corpus, "--resume", "--name", "typo", "--out", str(tmp_path)]) == 2
    for bad in (["--warmup", "-5"], ["--min-lr", "10"], ["--tokens-per-step", "0"], ["--seed", "-1"]):
        assert main(["train", "--data", corpus, "--out", str(tmp_path), *bad]) == 2
    assert main(["sample", "--ckpt", str(tmp_path), "--num-samples", "0"]) == 2
    assert main(["eval", "--ckpt", str(tmp_path), "--batches", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 12 and all(line.startswith("llmscratch ") and "error:" in line for line in err)
    assert "typo has no config.json" in err[5]
    assert "warmup must be non-negative" in err[6] and "min_lr 10.0 exceeds lr" in err[7]
    assert "--tokens-per-step 0" in err[8] and "seed must be in" in err[9]
    assert "--num-samples must be at least 1" in err[10] and "--batches must be at least 1" in err[11]
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
