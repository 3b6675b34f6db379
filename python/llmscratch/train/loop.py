"""The training loop.

One optimizer step = `grad_accum` micro-batches, each (batch_size, seq_len + 1) tokens from the
batch source; inputs are the first seq_len columns and targets the last seq_len. The loss of a
micro-batch is scaled by 1/grad_accum so the accumulated gradient is that of the mean.

A batch source is any callable `source(index) -> int64 Tensor (B, T + 1)` that gives the same
batch for the same index; index = step * grad_accum + micro. Resuming at step k therefore only
needs k, which the checkpoint holds, together with the model, the optimizer and the generator.

The validation loss is the mean cross-entropy per target token over the validation windows, each
read at most once (evaluate_loss over validation_batches): the training loop, `llmscratch eval`
and `llmscratch eval --data` report the same quantity. The logged training "loss" is the
cross-entropy too; a MoE model's auxiliary balancing terms, which the optimised objective adds,
are logged apart as "aux_loss".

log.jsonl holds one record per step, in strict JSON (a non-finite value is null). It is flushed
to disk before each checkpoint, so it holds every step up to the checkpoint's: a resume rebuilds
the history (the plot, fit()'s result) from it, and trainer.json stays the same size whatever the
number of steps.
"""
import dataclasses
import json
import math
import numbers
import os
import resource
import signal
import threading
import time

import llmscratch_core as _core

from .. import nn
from .._progress import Progress
from ..autograd import no_grad
from ..optim import AdamW
from .._files import atomic_write_text
from .._settings import setting_conflicts
from .checkpoint import json_safe, latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from .schedule import learning_rate

# Settings a resumed run must share with its checkpoint: they decide which batch each step sees
# (batch_size, seq_len, grad_accum, seed), the weights' precision, and the optimizer's
# hyperparameters that the checkpoint restores (a different value would be silently dropped).
# steps, the learning-rate schedule, evaluation and checkpointing may change, e.g. to extend a run.
RESUME_MUST_MATCH = ("batch_size", "seq_len", "grad_accum", "seed", "dtype", "weight_decay", "beta1",
                     "beta2")


# What trainer.json must hold for a resume, besides what loading the checkpoint needs. (The
# history is rebuilt from log.jsonl; trainer.json of older runs holds it too, unread.)
RESUME_KEYS = ("rng", "best_val", "best_ckpt", "config")


def _model_conflicts(saved: dict, current: dict) -> list:
    """setting_conflicts of two model configs, both completed with ModelConfig's defaults (a
    field added since the saved run does not count as a change); vocab_size is not compared (the
    CLI fixes it from the tokenizer)."""
    from ..models import config_from_dict
    full = config_from_dict(saved).to_dict()
    return setting_conflicts(full, config_from_dict(current).to_dict(),
                             [k for k in full if k != "vocab_size"], prefix="model.")


def resume_conflicts(meta: dict, train: dict, model: dict | None) -> list:
    """What a run resuming a checkpoint (its trainer state `meta`) changed that it may not: the
    settings of RESUME_MUST_MATCH in `train` and, when given, the model config."""
    conflicts = setting_conflicts(meta["config"], train, RESUME_MUST_MATCH)
    saved_model = meta.get("run_config", {}).get("model")
    if saved_model is not None and model is not None:
        conflicts += _model_conflicts(saved_model, model)
    return conflicts


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    schedule: str = "cosine"        # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # 0 disables clipping
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200
    keep_last: int = 2              # checkpoints kept besides the best (0 keeps all)
    seed: int = 1337
    on_nan: str = "stop"            # stop | skip (skip the step, keep going)
    recompute: bool = False         # recompute each block's activations in the backward
    dtype: str = "float32"          # float32 | bfloat16 (GPU: bf16 weights and activations,
                                    # fp32 master weights and optimizer state)
    out: str = "runs/default"

    def __post_init__(self):
        # As Python's own types: numpy numbers pass the checks below but not json.dump, which
        # the first log record and checkpoint would only meet steps into the run.
        for f in dataclasses.fields(self):
            kind, v = f.type, getattr(self, f.name)
            if kind is str and isinstance(v, os.PathLike):  # out: a path
                v = os.fspath(v)
            number = {int: numbers.Integral, float: numbers.Real}.get(kind, kind)
            if isinstance(v, bool) is not (kind is bool) or not isinstance(v, number):
                raise TypeError(f"{f.name} must be {'an' if kind is int else 'a'} {kind.__name__}, got {v!r}")
            setattr(self, f.name, kind(v))
        positive = ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches", "ckpt_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"learning rates must be positive, got lr={self.lr} min_lr={self.min_lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        for name in ("warmup", "weight_decay", "grad_clip", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got '{self.dtype}'")
        if self.on_nan not in ("stop", "skip"):
            raise ValueError(f"on_nan must be 'stop' or 'skip', got '{self.on_nan}'")
        learning_rate(0, 1.0, 1, kind=self.schedule)  # validates the schedule name

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


class NonFiniteLoss(RuntimeError):
    pass


def param_groups(model, weight_decay):
    """Decay matrices only: no weight decay on biases, norm weights and embedding tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embedding = any(k in name for k in ("wte", "wpe", "embed"))
        (no_decay if p.ndim < 2 or is_embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def validation_batches(source, max_batches: int):
    """The batches of an evaluation, at most max_batches of them. From a DataLoader (or its
    `batch` method): its batches in order while they hold windows of its first epoch, the last
    one cut to the windows left, so that each window is read at most once (its own batches would
    wrap into the next epoch and read some windows again). From any other callable
    source(index): source(0), ..., source(max_batches - 1) (it tells no number of windows)."""
    from ..data import DataLoader
    loader = source if isinstance(source, DataLoader) else getattr(source, "__self__", None)
    if not isinstance(loader, DataLoader) or (source is not loader and
                                              getattr(source, "__func__", None) is not DataLoader.batch):
        for i in range(max_batches):
            yield source(i)
        return
    B, N = loader.B, loader.num_windows
    for step in range(max_batches):
        first = (step * loader.world_size + loader.rank) * B  # its first global window
        if first >= N:
            return
        batch = loader.batch(step)
        yield batch if first + B <= N else batch[:N - first]


@no_grad()
def evaluate_loss(model, batches, ignore_index: int = -100):
    """(mean cross-entropy per target token, tokens counted) of `model` in eval mode over
    `batches` of ids (b, T + 1) (inputs the first T columns, targets the last T): the sum of
    every counted token's loss over their number, so a short last batch weighs what its tokens
    do and a target equal to ignore_index counts for neither. (nan, 0) when no token counted.
    `model(x, y)` returns (logits, the mean over the counted targets), as the Transformer."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        y = batch[:, 1:]
        _, loss = model(batch[:, :-1], y)
        n = int((y != ignore_index).sum().item())
        if n:  # the mean of no token is nan: nothing to add
            total += loss.item() * n
            count += n
    return (total / count if count else math.nan), count


class Trainer:
    """Trains `model` on train_source (a batch source, module docstring), evaluating on
    val_source: a DataLoader or its `batch` method (each validation window read at most once,
    at most cfg.eval_batches batches), or any other batch source (its batches 0 to
    cfg.eval_batches - 1), or None."""

    def __init__(self, model, cfg: TrainConfig, train_source, val_source=None, run_config=None,
                 log=print, progress=False):
        self.model, self.cfg, self.train_source, self.val_source = model, cfg, train_source, val_source
        if cfg.recompute:
            if not hasattr(model, "recompute"):
                raise ValueError(f"{type(model).__name__} has no activation recomputation")
            model.recompute = True
        self.device = next(iter(model.parameters())).device
        if cfg.dtype == "bfloat16":
            if self.device.type != "cuda":
                raise ValueError("dtype bfloat16 trains on a GPU only (the CPU kernels are float32/float64)")
            # The model computes in bf16; AdamW keeps an fp32 master copy of every 16-bit weight.
            model.to(dtype=_core.DType.bfloat16)
        self.run_config = run_config or {}
        self.log = log
        self.progress = progress  # a bar with an ETA on stderr
        self.optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                               betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.step = 0
        self.history = []  # one dict per logged step / evaluation (log.jsonl's records)
        self.aux_loss = None  # the last step's auxiliary loss terms (MoE), None for a dense model
        self.best_val = math.inf
        self.best_ckpt = None
        self._saved_step = None  # the step of the last checkpoint this trainer wrote
        self.ckpt_root = os.path.join(cfg.out, "checkpoints")
        os.makedirs(cfg.out, exist_ok=True)

    # ---- state ----
    def _state(self):
        # best_val is null until a validation loss is known (JSON has no Infinity)
        return {"rng": list(_core.get_rng_state()),
                "best_val": self.best_val if math.isfinite(self.best_val) else None,
                "best_ckpt": self.best_ckpt, "config": dataclasses.asdict(self.cfg),
                "run_config": self.run_config}

    def save(self):
        keep = (os.path.basename(self.best_ckpt),) if self.best_ckpt else ()
        folder = save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, self._state(),
                                 keep_last=self.cfg.keep_last, keep=keep)
        self._saved_step = self.step
        return folder

    def resume(self, folder=None) -> bool:
        """Continue from a checkpoint folder (default: the latest under the run). Returns whether
        one was found. Raises ValueError when a setting in RESUME_MUST_MATCH, or the model's
        config, differs from the checkpoint's (the run would not continue the same way)."""
        folder = folder or latest_checkpoint(self.ckpt_root)
        if folder is None:
            return False
        meta = read_trainer_state(folder, RESUME_KEYS)
        conflicts = resume_conflicts(meta, dataclasses.asdict(self.cfg), self.run_config.get("model"))
        if conflicts:
            raise ValueError(f"cannot resume from {folder}: the run's settings changed ({'; '.join(conflicts)})")
        load_checkpoint(folder, self.model, self.optimizer)
        self.step = meta["step"]
        _core.set_rng_state(*meta["rng"])
        # null (or an older run's Infinity, which json reads as inf): no validation loss yet
        best = meta["best_val"]
        self.best_val, self.best_ckpt = math.inf if best is None else best, meta["best_ckpt"]
        self._saved_step = self.step
        self.history = self._rewind_log()
        if "history" in meta:  # a run saved before log.jsonl was the history's record (its log
            self.history = meta["history"]  # may repeat resumed steps or lack the last ones)
        return True

    def _rewind_log(self) -> list:
        """Drop log.jsonl's records past the resumed step (written after the checkpoint by a run
        that then stopped), so that the log holds each step once; returns the records kept, the
        history up to the resumed step. (Older logs may hold NaN and Infinity: json reads them.)"""
        path = os.path.join(self.cfg.out, "log.jsonl")
        if not os.path.exists(path):
            return []
        with open(path, errors="replace") as f:
            lines = f.readlines()
        kept, records, damaged = [], [], 0
        for line in lines:  # a line cut short or padded (a lost machine) is dropped with the rest
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            step = rec.get("step") if isinstance(rec, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                damaged += bool(line.strip())
                continue
            if step <= self.step:
                kept.append(line if line.endswith("\n") else line + "\n")
                records.append(rec)
        if damaged:  # said, not dropped unseen: a hand-edited or damaged log loses those lines
            self.log(f"log.jsonl: {damaged} damaged line{'s' * (damaged > 1)} dropped")
        if kept != lines:
            atomic_write_text(path, "".join(kept))
        return records

    # ---- one step ----
    def _loss(self, batch):
        x = batch[:, :-1]
        y = batch[:, 1:]
        _, loss = self.model(x, y)
        return loss

    def train_step(self):
        """One optimizer step. Returns (cross-entropy, gradient norm, learning rate); the mean
        of the auxiliary terms a MoE model adds to the objective goes to self.aux_loss."""
        cfg = self.cfg
        lr = learning_rate(self.step, cfg.lr, cfg.steps, cfg.warmup, cfg.min_lr, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        total, ce, aux = 0.0, 0.0, None
        for micro in range(cfg.grad_accum):
            loss = self._loss(self.train_source(self.step * cfg.grad_accum + micro))
            (loss * (1.0 / cfg.grad_accum)).backward()
            value = loss.item()
            total += value / cfg.grad_accum
            # The model's parts of the loss (Transformer.last_ce_loss, last_aux_loss): the
            # cross-entropy is what compares with the validation loss. A model without them
            # returns the cross-entropy itself.
            part = getattr(self.model, "last_aux_loss", None)
            if part is None:
                ce += value / cfg.grad_accum
            else:
                ce += self.model.last_ce_loss.item() / cfg.grad_accum
                aux = (aux or 0.0) + part.item() / cfg.grad_accum
        self.aux_loss = aux
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else \
            _core.ops.global_norm([p.grad for p in params])
        norm = norm.item()
        if not (math.isfinite(total) and math.isfinite(norm)):
            self.optimizer.zero_grad()
            what = f"loss {total}" if not math.isfinite(total) else f"gradient norm {norm}"
            failed = self.step + 1  # numbered as log.jsonl and the progress line number it
            if cfg.on_nan == "stop":
                raise NonFiniteLoss(f"step {failed}: non-finite {what}; the last good checkpoint is "
                                    f"{latest_checkpoint(self.ckpt_root) or 'none yet'}")
            self.log(f"step {failed}: non-finite {what}, batch skipped")
            if hasattr(self.model, "moe_discard_load"):
                self.model.moe_discard_load()  # the skipped batches' expert loads update no bias
            self.step += 1
            return ce, norm, lr
        self.optimizer.step()
        self.optimizer.zero_grad()
        if hasattr(self.model, "moe_update_bias"):
            self.model.moe_update_bias()  # MoE auxiliary-loss-free balancing, outside autograd
        self.step += 1
        return ce, norm, lr

    def evaluate(self):
        """The validation loss (module docstring) over at most cfg.eval_batches batches of
        val_source; None without one."""
        if self.val_source is None:
            return None
        return evaluate_loss(self.model, validation_batches(self.val_source, self.cfg.eval_batches))[0]

    # ---- the loop ----
    def fit(self, stop_at=None):
        """Train until cfg.steps (or until step `stop_at`, as if interrupted there). On the main
        thread Ctrl-C stops the run after the step under way, with a checkpoint; on another
        thread (where Python takes no signal handler) Ctrl-C is left to the main thread."""
        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        log_path = os.path.join(cfg.out, "log.jsonl")
        if self.step == 0:  # a run lost before its first checkpoint left records this one redoes
            self._rewind_log()  # (resume() rewinds to its own step)
        interrupted = []
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            prev = signal.signal(signal.SIGINT, lambda *a: interrupted.append(True))
        try:
            with open(log_path, "a") as logf:
                t_last, tokens = time.perf_counter(), 0
                bar = Progress(end, "train", self.progress, start=self.step)
                while self.step < end and not interrupted:
                    loss, norm, lr = self.train_step()
                    bar.update(1, note=f"loss {loss:.3f}")
                    tokens += cfg.tokens_per_step
                    rec = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm}
                    if self.aux_loss is not None:
                        rec["aux_loss"] = self.aux_loss
                    moe = self._moe_metrics()
                    if moe:
                        rec["moe"] = moe
                    last = self.step == cfg.steps  # (a stop_at short of it is an interruption)
                    self.history.append(rec)
                    if self.step % cfg.eval_every == 0 or last:
                        now = time.perf_counter()
                        rec["tokens_per_s"] = tokens / (now - t_last)
                        rec["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                        rec.update(self._gpu_figures(rec["tokens_per_s"]))
                        val = self.evaluate()
                        if val is not None:
                            rec["val_loss"] = val
                        bar.clear()
                        self.log(self._line(rec))
                        t_last, tokens = time.perf_counter(), 0
                    logf.write(json.dumps(json_safe(rec), allow_nan=False) + "\n")
                    logf.flush()
                    if self.step % cfg.ckpt_every == 0 or last:
                        # the checkpoint's write is no training time: tokens/s leaves it out
                        t_last += self._checkpoint(rec.get("val_loss"), logf)
                bar.close()
                if interrupted:
                    if self._saved_step == self.step:
                        self.log(f"interrupted at step {self.step}, whose checkpoint is saved")
                    else:
                        self.log(f"interrupted at step {self.step}: saving a checkpoint")
                        self._checkpoint(None, logf)
                elif self.step < cfg.steps and self._saved_step != self.step:  # stopped at stop_at
                    self._checkpoint(None, logf)
        except BaseException:
            try:
                self.plot()
            except Exception as e:  # the error that stopped the run is the one to report
                self.log(f"loss.png not written: {type(e).__name__}: {e}")
            raise
        finally:
            if on_main:
                signal.signal(signal.SIGINT, prev)
        self.plot()
        return self.history

    def _gpu_figures(self, tokens_per_s):
        """MFU (model FLOPs per token x tokens/s over the GPU's peak) and the allocator's peak."""
        if self.device.type != "cuda":
            return {}
        from .. import cuda
        out = {"gpu_peak_mb": cuda.memory_stats(self.device.index)["peak_allocated_bytes"] / 2**20}
        peak = cuda.peak_flops(self.cfg.dtype, self.device.index)
        if peak and hasattr(self.model, "flops_per_token"):
            out["mfu"] = self.model.flops_per_token(self.cfg.seq_len) * tokens_per_s / peak
        return out

    def _moe_metrics(self):
        """Routing metrics of the last micro-batch's MoE layers, by block index (empty for a
        dense model)."""
        fn = getattr(self.model, "moe_metrics", None)
        return fn() if fn is not None else {}

    def _checkpoint(self, val, logf) -> float:
        """Save a checkpoint (the best so far if val is); returns the seconds it took. The log
        reaches the disk first: a resume rebuilds the history from it (module docstring)."""
        t0 = time.perf_counter()
        logf.flush()
        os.fsync(logf.fileno())
        if val is not None and val < self.best_val:
            self.best_val = val
            self.best_ckpt = os.path.join(self.ckpt_root, f"step_{self.step:07d}")
        self.save()
        return time.perf_counter() - t0

    @staticmethod
    def _line(rec):
        parts = [f"step {rec['step']:>6}", f"loss {rec['loss']:.4f}"]
        if "aux_loss" in rec:
            parts.append(f"aux {rec['aux_loss']:.4f}")
        if "val_loss" in rec:
            parts.append(f"val {rec['val_loss']:.4f}")
        parts += [f"lr {rec['lr']:.2e}", f"|g| {rec['grad_norm']:.2f}"]
        if "tokens_per_s" in rec:
            parts.append(f"{rec['tokens_per_s']:.0f} tok/s")
        if "mfu" in rec:
            parts.append(f"MFU {100 * rec['mfu']:.1f}%")
        if "gpu_peak_mb" in rec:
            parts.append(f"GPU peak {rec['gpu_peak_mb']:.0f} MiB")
        if rec.get("moe"):
            layers = rec["moe"].values()
            parts.append(f"moe max/mean load {max(m['max_mean_load'] for m in layers):.2f}")
        return "  ".join(parts)

    def plot(self):
        """loss.png next to the checkpoints (skipped when matplotlib is not installed)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = [r for r in self.history if "loss" in r]
        if not rows:
            return None

        def value(v):  # null in the log: a skipped step's non-finite loss
            return math.nan if v is None else v

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in rows], [value(r["loss"]) for r in rows], label="train")
        val = [r for r in rows if "val_loss" in r]
        if val:
            ax.plot([r["step"] for r in val], [value(r["val_loss"]) for r in val], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.legend()
        path = os.path.join(self.cfg.out, "loss.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path
