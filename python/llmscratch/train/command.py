"""`llmscratch train`, `llmscratch sample` and `llmscratch eval`.

With no arguments, `train` trains the `tiny` preset on the built-in `stdlib` corpus on the CPU:
the tokenizer is trained and the corpus encoded on first use and cached under
$LLMSCRATCH_CACHE (default ~/.cache/llmscratch), then the run writes its config, log, loss plot,
checkpoints and samples under runs/<name>/."""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import llmscratch_core as _core

DEFAULT_PROMPT = "def "


def cache_root() -> Path:
    return Path(os.environ.get("LLMSCRATCH_CACHE", Path.home() / ".cache" / "llmscratch"))


# ---- data ------------------------------------------------------------------------------------

def prepare_data(source: str, vocab_size: int, val_fraction: float, quiet: bool = False,
                 gone_ok: bool = False, identity=None):
    """Tokenizer prefix and the (train, val) shard globs for `source`, built once and cached.
    The cache folder is made under a temporary name and renamed when complete; its key holds the
    source's fingerprint, so that a source edited in place is prepared again. Beside the shards,
    identity.json holds each split's data_identity. With gone_ok (`eval` and `train --resume`,
    which check the data's identity against the run's), a source that is gone (moved, deleted) is
    served from a folder completed for it: the one holding `identity` (the run's data), else the
    one last completed with the same settings (cache_root()/latest.json, keyed without the
    fingerprint). A new run on a missing source is an error, not a silent run on whatever was
    last prepared under that path."""
    from ..data import tokenize_cmd
    from .._files import atomic_write_text, stale_temporaries
    src = _source_key(source)
    # "split-2": the split of sources too small for document-level hashing changed (sources.py)
    settings = f"{src}|{vocab_size}|{val_fraction}|split-2"
    try:
        fingerprint = _source_fingerprint(source)
    except (OSError, ValueError):  # a missing source: a folder prepared for it, if complete
        if not gone_ok:
            raise
        folder = _prepared_holding(src, identity)
        if folder is None:
            last = _latest_prepared().get(settings)
            if last is None or not (cache_root() / f"data-{last}" / "done").exists():
                raise
            folder = cache_root() / f"data-{last}"
        return str(folder / "tokenizer"), str(folder / "tokens_train_*.bin"), str(folder / "tokens_val_*.bin")
    key = hashlib.sha256(f"{settings}|{fingerprint}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    folder = cache_root() / f"data-{key}"
    if not (folder / "done").exists():
        # the `data-KEY.tmp-PID` folders of killed preparations (one that fails or is
        # interrupted removes its own), this process's number included
        for entry, _ in stale_temporaries(cache_root(), _DATA_TEMPORARY):
            shutil.rmtree(cache_root() / entry, ignore_errors=True)
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            common = dict(source=source, val_fraction=val_fraction, threads=0, quiet=quiet)
            tokenize_cmd.train(argparse.Namespace(**common, vocab_size=vocab_size, pattern="cl100k",
                                                  special=None, out=str(tmp / "tokenizer")))
            tokenize_cmd.encode(argparse.Namespace(**common, tokenizer=str(tmp / "tokenizer"),
                                                   out=str(tmp / "tokens"), shard_size=100_000_000))
            identity = {split: data_identity(str(tmp / f"tokens_{split}_*.bin"))
                        for split in ("train", "val")}
            (tmp / "identity.json").write_text(json.dumps(identity))
            (tmp / "done").write_text(src + "\n", errors="surrogateescape")  # the name as the OS gave it
        except BaseException:  # an error or Ctrl-C: nothing half made stays in the cache
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
    latest = _latest_prepared()
    if latest.get(settings) != key:  # also a folder completed before latest.json existed
        atomic_write_text(cache_root() / "latest.json", json.dumps({**latest, settings: key}))
    return str(folder / "tokenizer"), str(folder / "tokens_train_*.bin"), str(folder / "tokens_val_*.bin")


def _prepared_holding(src: str, identity):
    """The completed cache folder of source key `src` whose identity.json is `identity` (a run's
    data: the folder it trained on, though the source was edited and prepared again since), or
    None."""
    if not identity:
        return None
    for done in sorted(cache_root().glob("data-*/done")):
        folder = done.parent
        try:
            if done.read_text().strip() == src and _prepared_identity(str(folder / "tokenizer")) == identity:
                return folder
        except (OSError, ValueError):  # a damaged folder is no match
            continue
    return None


def _latest_prepared() -> dict:
    """cache_root()/latest.json: {source|settings: key of the folder last completed for them}."""
    try:
        latest = json.loads((cache_root() / "latest.json").read_text())
    except (OSError, ValueError):  # none yet, or unreadable: nothing to fall back on
        return {}
    return latest if isinstance(latest, dict) else {}


def _source_fingerprint(source: str) -> str:
    """What the data cache's key knows of a source's contents: the id, size and modification time
    (ns) of every input file. Editing, adding or removing a file changes it. A stat per file keeps
    it instant where hashing the contents would read the whole corpus (gigabytes, for a real one)
    on every start of `train` and `eval`; an edit that keeps a file's size and restores its mtime
    goes unseen (a resume still compares the prepared tokens themselves: data_identity)."""
    from ..data.sources import documents
    path = source.rsplit(":", 1)[0] if ".jsonl:" in source else source
    if path.endswith(".jsonl") and os.path.isfile(path):
        files = [(os.path.basename(path), path)]  # its documents are its lines: one file to stat
    else:  # a missing source raises here, naming it
        files = [(d.id, d.path) for d in documents(source)]
    h = hashlib.sha256()
    for doc_id, p in files:
        st = os.stat(p)
        h.update(f"{doc_id}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


_DATA_TEMPORARY = re.compile(r"data-[0-9a-f]+\.tmp-(?P<pid>\d+)")


def data_identity(shard_glob: str) -> dict:
    """A split's number of tokens and the sha256 of its shards' bytes: what a resumed run
    compares with the data its checkpoint was trained on."""
    from ..data.loader import _expand
    from ..data.shards import shard_info
    tokens, h = 0, hashlib.sha256()
    for path in _expand(shard_glob):
        tokens += shard_info(path)[0]
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return {"tokens": tokens, "sha256": h.hexdigest()}


def _prepared_identity(tok_prefix: str):
    """The identity.json of prepare_data's folder holding tok_prefix: {split: data_identity}."""
    path = Path(tok_prefix).parent / "identity.json"
    return json.loads(path.read_text()) if path.exists() else None


def unigram_entropy(shard_glob: str) -> float:
    """Cross-entropy (nats/token) of predicting every token by its overall frequency."""
    from ..data.loader import _expand
    from ..data.shards import read_shard
    counts = None
    for path in _expand(shard_glob):
        c = np.bincount(read_shard(path))
        counts = c if counts is None else np.pad(counts, (0, max(0, len(c) - len(counts)))) + \
            np.pad(c, (0, max(0, len(counts) - len(c))))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---- train -----------------------------------------------------------------------------------

def add_parsers(sub):
    from . import TrainConfig
    d = TrainConfig()
    t = sub.add_parser("train", help="train a model (default: tiny preset on the stdlib corpus, CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", default="tiny", help="model preset (tiny, gpt2-124m, gpt2-350m, llama-style-124m, moe-tiny, moe-124m-8e)")
    t.add_argument("--config", help="model config TOML (overrides --preset)")
    t.add_argument("--data", default="stdlib", help="'stdlib', a text file, directory, glob or file.jsonl[:field]")
    t.add_argument("--vocab-size", type=int, help="tokenizer size (default: the model config's)")
    t.add_argument("--val-fraction", type=float, default=0.02)
    t.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    t.add_argument("--backend", default="default", help="cpu, cuda, triton or default")
    t.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="training precision (auto: bfloat16 with fp32 master weights on a GPU, float32 on the CPU)")
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--grad-accum", type=int,
                   help=f"micro-batches per optimizer step (default {d.grad_accum})")
    t.add_argument("--tokens-per-step", type=int,
                   help="accumulate micro-batches up to this many tokens per step (sets --grad-accum)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr", type=float, default=d.min_lr)
    t.add_argument("--warmup", type=int, default=d.warmup)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--ckpt-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--out", default="runs", help="parent folder of the run")
    t.add_argument("--name", help="run name (default: <preset>-<data>)")
    t.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    t.add_argument("--recompute", action="store_true",
                   help="recompute each block's activations in the backward (less memory, one more forward)")
    t.add_argument("--skip-nan", action="store_true", help="skip a batch with a non-finite loss instead of stopping")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=train_command)

    s = sub.add_parser("sample", help="generate text from a trained run")
    s.add_argument("--ckpt", required=True, help="a run folder (its latest checkpoint) or a checkpoint folder")
    s.add_argument("--prompt", default=DEFAULT_PROMPT)
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=50, help="sample among the k most likely ids (0: all)")
    s.add_argument("--top-p", type=float)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="cpu or cuda[:N] (default: the run's device if present, else cpu)")
    s.set_defaults(func=sample_command)

    e = sub.add_parser("eval", help="validation loss and perplexity of a trained run")
    e.add_argument("--ckpt", required=True, help="a run folder or a checkpoint folder")
    e.add_argument("--data", help="source to evaluate (default: the run's validation split)")
    e.add_argument("--batches", type=int, default=20)
    e.add_argument("--device", help="cpu or cuda[:N] (default: the run's device if present, else cpu)")
    e.set_defaults(func=eval_command)


def _model_config(args, vocab_size=None):
    from ..models import get_preset, load_config
    cfg = load_config(args.config) if args.config else get_preset(args.preset)
    if vocab_size:
        cfg = cfg.replace(vocab_size=vocab_size)
    return cfg


def _check_device(device: str) -> str:
    dev = _core.Device(device)
    if dev.type == "cuda" and (not _core.cuda_available() or dev.index >= _core.cuda_device_count()):
        raise ValueError(f"device {device} is not available (llmscratch sees "
                         f"{_core.cuda_device_count()} CUDA devices)")
    return str(dev)


def _source_key(data: str) -> str:
    """A data source as the cache and a resume compare it: 'stdlib', or an absolute path."""
    return data if data == "stdlib" else os.path.abspath(data)


def _read_run_config(run_dir: Path) -> dict:
    from .._files import read_json
    path = run_dir / "config.json"
    config = read_json(path, f"{path} is not valid JSON")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path} is damaged: it must be an object with the run's \"model\" settings")
    return config


def _check_resume(run_dir: Path, run_config: dict) -> str:
    """Before anything of the run is rewritten or prepared: the run and its latest checkpoint
    exist and are readable, and the settings of `--resume` match those the run was started with
    (its config.json, the checkpoint's trainer state); all differences in one error. Returns the
    checkpoint folder."""
    from .._settings import setting_conflicts
    from .checkpoint import latest_checkpoint, read_trainer_state
    from .loop import RESUME_KEYS, resume_conflicts
    if not (run_dir / "config.json").exists():
        raise ValueError(f"--resume: {run_dir} has no config.json, so it holds no run to continue")
    saved = _read_run_config(run_dir)
    folder = latest_checkpoint(str(run_dir / "checkpoints"))
    if folder is None:
        raise ValueError(f"--resume: {run_dir} has no checkpoint to continue from (start the run "
                         f"again under another --name, or remove the folder)")
    if "data" in saved:
        saved = {**saved, "data": _source_key(saved["data"])}
    conflicts = setting_conflicts(saved, run_config, ("data", "vocab_size", "val_fraction"))
    state = read_trainer_state(folder, RESUME_KEYS)
    conflicts += resume_conflicts(state, run_config["train"], run_config["model"])
    if conflicts:
        hint = " (a run trained in float32 resumes on a GPU with --dtype float32)" \
            if any(c.startswith("dtype:") for c in conflicts) else ""
        raise ValueError(f"--resume: the settings differ from the run's in {run_dir} "
                         f"({'; '.join(conflicts)}){hint}")
    # Below the checkpoint's step nothing would train, yet config.json and the sample would be
    # rewritten as if the run had ended there.
    if state["step"] > run_config["train"]["steps"]:
        raise ValueError(f"--resume: the run's latest checkpoint {folder} is at step {state['step']}, "
                         f"past --steps {run_config['train']['steps']}")
    return folder


def _saved_identity(folder: str):
    """The data_identity a checkpoint's run trained on (None for runs saved before it was kept)."""
    from .checkpoint import read_trainer_state
    identity = read_trainer_state(folder).get("run_config", {}).get("data_identity")
    # hand-edited into another shape, it had raised a TypeError in _check_resumed_data
    if identity is not None and not (isinstance(identity, dict) and all(
            isinstance(identity.get(s), dict) and isinstance(identity[s].get("tokens"), int)
            and isinstance(identity[s].get("sha256"), str) for s in ("train", "val"))):
        raise ValueError(f"checkpoint {folder}: trainer.json's run_config.data_identity must be "
                         "{train: {tokens, sha256}, val: {tokens, sha256}}")
    return identity


def _check_resumed_data(folder: str, saved, identity, source: str):
    """The data of a resumed run must be the data its checkpoint was trained on: a source edited
    in place keeps its path (and a rebuilt cache may keep its tokenizer). saved: the checkpoint
    folder's (_saved_identity); runs saved before checkpoints held it are not checked."""
    if not saved or not identity:
        return
    changed = []
    for split, name in (("train", "training"), ("val", "validation")):
        was, now = saved[split], identity[split]
        if was["tokens"] != now["tokens"]:
            changed.append(f"{name} split: {was['tokens']} -> {now['tokens']} tokens")
        elif was["sha256"] != now["sha256"]:
            changed.append(f"{name} split: as many tokens ({now['tokens']}), other ones")
    if changed:
        raise ValueError(f"--resume: the data of {source} changed since the checkpoint {folder} "
                         f"({'; '.join(changed)}); the run cannot continue on other data")


def _check_run_tokenizer(run_dir: Path, tok_prefix: str, context: str, consequence: str):
    """The prepared data a resumed run trains on, or `eval` evaluates, must be encoded with the
    run's own tokenizer (a rebuilt data cache trains a new one, which may differ)."""
    for suffix in (".tiktoken", ".json"):
        if Path(tok_prefix + suffix).read_bytes() != (run_dir / ("tokenizer" + suffix)).read_bytes():
            raise ValueError(f"{context}the tokenizer of the prepared data ({tok_prefix}{suffix}) "
                             f"differs from the run's ({run_dir / ('tokenizer' + suffix)}); "
                             f"{consequence}")


def _grad_accum(args, default: int) -> int:
    """--grad-accum, or the micro-batches that --tokens-per-step makes; both given must agree."""
    if args.tokens_per_step is None:
        return default if args.grad_accum is None else args.grad_accum
    micro = args.batch_size * args.seq_len
    if args.tokens_per_step <= 0 or micro <= 0 or args.tokens_per_step % micro:
        raise ValueError(f"--tokens-per-step {args.tokens_per_step} must be a positive multiple "
                         f"of batch_size * seq_len = {micro}")
    accum = args.tokens_per_step // micro
    if args.grad_accum is not None and args.grad_accum != accum:
        raise ValueError(f"--grad-accum {args.grad_accum} disagrees with --tokens-per-step "
                         f"{args.tokens_per_step}, which is --grad-accum {accum} at batch_size * "
                         f"seq_len = {micro}: pass one of them")
    return accum


def _train_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def train_command(args) -> int:
    import llmscratch as ls
    from ..data import DataLoader
    from ..models import build_model
    from ..tokenizer import Tokenizer
    from . import TrainConfig, Trainer
    from .._files import atomic_write_text
    from .checkpoint import latest_checkpoint

    device = _check_device(args.device)
    ls.set_backend(args.backend)
    name = args.name or f"{args.preset if not args.config else Path(args.config).stem}-" \
                        f"{Path(args.data).name if args.data != 'stdlib' else 'stdlib'}"
    run_dir = Path(args.out) / name
    if run_dir.exists() and not args.resume and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} already holds a run: pass --resume to continue it or --name for a new one")
    # Every setting is checked before the (possibly slow) data preparation starts.
    model_cfg = _model_config(args)
    if args.vocab_size is not None and args.vocab_size <= 0:
        raise ValueError(f"--vocab-size must be positive, got {args.vocab_size}")
    vocab = args.vocab_size or model_cfg.vocab_size
    if args.seq_len > model_cfg.block_size:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's block size {model_cfg.block_size}")
    grad_accum = _grad_accum(args, TrainConfig.grad_accum)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                      grad_accum=grad_accum, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup,
                      weight_decay=args.weight_decay, eval_every=args.eval_every,
                      ckpt_every=args.ckpt_every, seed=args.seed,
                      on_nan="skip" if args.skip_nan else "stop", recompute=args.recompute,
                      dtype=_train_dtype(args.dtype, device), out=str(run_dir))
    if cfg.warmup >= cfg.steps:  # the default warmup (50) under a short --steps
        warnings.warn(f"--warmup {cfg.warmup} is not shorter than --steps {cfg.steps}: the learning rate "
                      f"never reaches --lr and never decays")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    run_config = {"model": model_cfg.to_dict(), "train": dataclasses.asdict(cfg), "data": _source_key(args.data),
                  "vocab_size": vocab, "val_fraction": args.val_fraction, "device": device,
                  "backend": args.backend}
    resume_from = _check_resume(run_dir, run_config) if args.resume else None
    t0 = time.time()
    saved_identity = _saved_identity(resume_from) if resume_from else None
    tok_prefix, train_glob, val_glob = prepare_data(args.data, vocab, args.val_fraction, args.quiet,
                                                    gone_ok=args.resume, identity=saved_identity)
    identity = _prepared_identity(tok_prefix)
    if args.resume:
        _check_resumed_data(resume_from, saved_identity, identity, args.data)
        _check_run_tokenizer(run_dir, tok_prefix, "--resume: ",
                             "the run cannot continue on differently encoded data")
    tok = Tokenizer.load(tok_prefix)
    model_cfg = model_cfg.replace(vocab_size=tok.n_vocab)
    run_config["model"] = model_cfg.to_dict()
    run_config["data_identity"] = identity  # saved in config.json and every checkpoint

    ls.manual_seed(args.seed)
    model = build_model(model_cfg, device=device)

    def loader(split, shards, shuffle):
        try:
            return DataLoader(shards, cfg.batch_size, cfg.seq_len, seed=args.seed, shuffle=shuffle, device=device,
                              prefetch=0)
        except ValueError as e:
            raise ValueError(f"the {split} split of {args.data}: {e}") from None

    train = loader("training", train_glob, True)
    # the validation windows in order, as `eval` reads them: its --batches B gives the logged val_loss
    # of a run's eval_batches B
    val = loader("validation", val_glob, False) if args.val_fraction > 0 else None
    # the trainer checks the dtype against the device and builds the optimizer (it makes the run
    # folder, empty)
    trainer = Trainer(model, cfg, train.batch, val.batch if val else None, run_config=run_config, log=say,
                      progress=not args.quiet and sys.stderr.isatty())
    # The run folder is written only now that everything it describes could be built.
    if not args.resume:  # a resumed run keeps the tokenizer it was trained with
        for suffix in (".tiktoken", ".json"):
            shutil.copy(tok_prefix + suffix, run_dir / ("tokenizer" + suffix))
    atomic_write_text(str(run_dir / "config.json"), json.dumps(run_config, indent=1))
    baseline = unigram_entropy(train_glob)
    say(f"model {model_cfg.n_layer}x{model_cfg.n_embd}, {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {tok.n_vocab}; {train.num_windows * cfg.seq_len / 1e6:.1f}M training tokens; "
        f"unigram baseline {baseline:.3f} nats/token (data ready in {time.time() - t0:.0f} s)")
    if resume_from:
        trainer.resume(resume_from)
        say(f"resumed at step {trainer.step}")
    trainer.fit()
    if trainer.step < cfg.steps:  # fit returns early only on Ctrl-C, having saved a checkpoint
        print(f"llmscratch train: interrupted at step {trainer.step}; its checkpoint is "
              f"{latest_checkpoint(trainer.ckpt_root)} (continue with --resume)", file=sys.stderr)
        return 130  # 128 + SIGINT, as cli.main's Ctrl-C
    val_loss = trainer.evaluate()
    if val_loss is not None:
        say(f"final validation loss {val_loss:.3f} nats/token (unigram baseline {baseline:.3f}); "
            f"run in {run_dir}")
    else:
        say(f"no validation split (--val-fraction 0); run in {run_dir}")
    if trainer.step >= cfg.steps:
        ls.manual_seed(args.seed)
        prompt = tok.encode(DEFAULT_PROMPT)
        n = min(120, model_cfg.block_size - len(prompt))
        if n > 0:  # a block shorter than the prompt leaves no room for a sample
            (text,) = _continue_text(model, tok, prompt, n, 1, temperature=0.8, top_k=50)
            (run_dir / "samples.txt").write_text(text + "\n")
            say("sample:\n" + text)
    return 0


# ---- sample / eval ---------------------------------------------------------------------------

def _run_folders(ckpt: str):
    """(checkpoint folder or None, run folder) of --ckpt: a run folder (its latest checkpoint) or
    a checkpoint folder (RUN/checkpoints/step_N)."""
    from .checkpoint import latest_checkpoint
    path = Path(ckpt)
    if (path / "checkpoints").is_dir():
        return latest_checkpoint(str(path / "checkpoints")), path
    return str(path), path.parent.parent


def _load_run(ckpt: str, device: str | None = None):
    """(model, tokenizer, run config, device) from a run folder or one of its checkpoint folders,
    on `device` (default: the run's, or the CPU where that is not available). The model is in
    eval mode: sampling and evaluation want no dropout."""
    from ..models import build_model, config_from_dict
    from ..tokenizer import Tokenizer
    from .checkpoint import load_checkpoint
    folder, run_dir = _run_folders(ckpt)
    if folder is None or not Path(folder, "trainer.json").exists():
        raise ValueError(f"{ckpt}: no checkpoint found (expected a run folder or a checkpoint folder)")
    run_config = _read_run_config(run_dir)
    if device is not None:
        device = _check_device(device)
    else:
        try:
            device = _check_device(run_config.get("device", "cpu"))
        except ValueError:
            print(f"note: the run's device {run_config['device']} is not available here; using the CPU",
                  file=sys.stderr)
            device = "cpu"
    model = build_model(config_from_dict(run_config["model"]), device=device)
    load_checkpoint(folder, model)
    model.eval()
    return model, Tokenizer.load(str(run_dir / "tokenizer")), run_config, device


def sample_command(args) -> int:
    import llmscratch as ls
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    model, tok, cfg, _ = _load_run(args.ckpt, args.device)
    ls.manual_seed(args.seed)
    # a special token written in the prompt (<|endoftext|>) is meant as that token
    prompt = tok.encode(args.prompt, allowed_special="all")
    for text in _continue_text(model, tok, prompt, args.max_new_tokens, args.num_samples,
                               temperature=args.temperature, top_k=args.top_k or None,
                               top_p=args.top_p):
        print(text)
        print("-" * 40)
    return 0


def _continue_text(model, tok, prompt, max_new_tokens, num_samples, **sampling):
    """num_samples sampled continuations of the token list prompt, each decoded with its prompt
    and ending before the first end-of-text token after it (if the tokenizer has one). An empty
    prompt starts from the end-of-text token (a document's start, as in training), which is not
    shown."""
    eot = tok.eot_token
    start = prompt or [eot or 0]
    ids = np.array([start] * num_samples, dtype=np.int64)
    texts = []
    for row in model.generate(ids, max_new_tokens, eos_token_id=eot, **sampling).numpy():
        new = row[len(start):].tolist()
        if eot in new:  # what follows the end of the text only repeats it
            new = new[:new.index(eot)]
        texts.append(tok.decode(prompt + new))
    return texts


def _note_changed_split(run_config: dict, identity):
    """A note on stderr when the validation split prepared now is not the one the run saw (its
    source edited since, with the tokenizer unchanged): the loss is of the split as it is now."""
    was, now = (run_config.get("data_identity") or {}).get("val"), (identity or {}).get("val")
    if was and now and was != now:
        print(f"note: the validation split of {run_config['data']} changed since the run "
              f"({was['tokens']} -> {now['tokens']} tokens); evaluating it as it is now",
              file=sys.stderr)


def eval_command(args) -> int:
    from ..data import DataLoader
    from .loop import evaluate_loss, validation_batches
    if args.batches < 1:
        raise ValueError(f"--batches must be at least 1, got {args.batches}")
    model, tok, cfg, device = _load_run(args.ckpt, args.device)
    train_cfg = cfg["train"]
    if args.data:  # another source, encoded with this run's tokenizer
        from ..data.sources import split_documents
        docs = split_documents(args.data, "all")
        ids = np.concatenate([np.asarray([tok.eot_token or 0] + tok.encode(d.read(), disallowed_special=()),
                                         dtype=np.int64) for d in docs])
        val_glob = None
    else:
        if not cfg["val_fraction"] > 0:
            raise ValueError(f"{args.ckpt} was trained without a validation split: pass --data")
        tok_prefix, _, val_glob = prepare_data(cfg["data"], cfg["vocab_size"], cfg["val_fraction"],
                                               quiet=True, gone_ok=True, identity=cfg.get("data_identity"))
        # the split's tokens must be the run's tokenizer's, as the model was trained on
        _check_run_tokenizer(_run_folders(args.ckpt)[1], tok_prefix, "",
                             "pass --data to evaluate a source encoded with the run's tokenizer")
        _note_changed_split(cfg, _prepared_identity(tok_prefix))
    import llmscratch as ls
    B, T = train_cfg["batch_size"], train_cfg["seq_len"]
    # Each window at most once, the windows left after the last whole batch included, up to
    # --batches batches; the loss is per token (loop.evaluate_loss), as the training loop reports.
    if val_glob is not None:
        loader = DataLoader(val_glob, B, T, shuffle=False, device=device, prefetch=0)
        batches = validation_batches(loader, args.batches)
    else:
        n = (len(ids) - 1) // T
        if n == 0:
            raise ValueError(f"{args.data}: fewer than {T + 1} tokens")
        windows = np.stack([ids[i * T:i * T + T + 1] for i in range(n)])
        batches = (ls.tensor(windows[i:i + B], device=device) for i in range(0, min(n, args.batches * B), B))
    loss, tokens = evaluate_loss(model, batches)
    if not math.isfinite(loss):  # as sample refuses non-finite logits: not a result to report
        raise ValueError(f"{args.ckpt}: the loss is {loss}: the model's logits are not finite "
                         f"(its weights hold NaN or infinity)")
    perplexity = math.inf if loss > 709 else math.exp(loss)  # exp overflows a float past 709.78
    print(f"loss {loss:.4f} nats/token, perplexity {perplexity:.2f} over {tokens} tokens "
          f"({tokens // T} windows of {T})")
    return 0
