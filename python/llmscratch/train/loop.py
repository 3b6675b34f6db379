"""The training loop.

One optimizer step = `grad_accum` micro-batches, each (batch_size, seq_len + 1) tokens from the
batch source; inputs are the first seq_len columns and targets the last seq_len. The loss of a
micro-batch is scaled by 1/grad_accum so the accumulated gradient is that of the mean.

A batch source is any callable `source(index) -> int64 Tensor (B, T + 1)` that gives the same
batch for the same index; index = step * grad_accum + micro. Resuming at step k therefore only
needs k, which the checkpoint holds, together with the model, the optimizer and the generator.
"""
import dataclasses
import json
import math
import os
import resource
import signal
import time

import llmscratch_core as _core

from .. import nn
from .._progress import Progress
from ..autograd import no_grad
from ..optim import AdamW
from .._files import atomic_write_text
from .._settings import setting_conflicts
from .checkpoint import latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from .schedule import learning_rate

# Settings a resumed run must share with its checkpoint: they decide which batch each step sees
# (batch_size, seq_len, grad_accum, seed), the weights' precision, and the optimizer's
# hyperparameters that the checkpoint restores (a different value would be silently dropped).
# steps, the learning-rate schedule, evaluation and checkpointing may change, e.g. to extend a run.
RESUME_MUST_MATCH = ("batch_size", "seq_len", "grad_accum", "seed", "dtype", "weight_decay", "beta1",
                     "beta2")


# What trainer.json must hold for a resume, besides what loading the checkpoint needs.
RESUME_KEYS = ("rng", "best_val", "best_ckpt", "history", "config")


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
        positive = ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches", "ckpt_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
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


class Trainer:
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
        self.history = []  # one dict per logged step / evaluation
        self.best_val = math.inf
        self.best_ckpt = None
        self._saved_step = None  # the step of the last checkpoint this trainer wrote
        self.ckpt_root = os.path.join(cfg.out, "checkpoints")
        os.makedirs(cfg.out, exist_ok=True)

    # ---- state ----
    def _state(self):
        return {"rng": list(_core.get_rng_state()), "best_val": self.best_val,
                "best_ckpt": self.best_ckpt, "config": dataclasses.asdict(self.cfg),
                "run_config": self.run_config, "history": self.history}

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
        self.best_val, self.best_ckpt = meta["best_val"], meta["best_ckpt"]
        self.history = meta["history"]
        self._saved_step = self.step
        self._rewind_log()
        return True

    def _rewind_log(self):
        """Drop log.jsonl's records past the resumed step (written after the checkpoint by a run
        that then stopped), so that the log holds each step once."""
        path = os.path.join(self.cfg.out, "log.jsonl")
        if not os.path.exists(path):
            return
        with open(path, errors="replace") as f:
            lines = f.readlines()
        kept = []
        for line in lines:  # a line cut short or padded (a lost machine) is dropped with the rest
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= self.step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            atomic_write_text(path, "".join(kept))

    # ---- one step ----
    def _loss(self, batch):
        x = batch[:, :-1]
        y = batch[:, 1:]
        _, loss = self.model(x, y)
        return loss

    def train_step(self):
        cfg = self.cfg
        lr = learning_rate(self.step, cfg.lr, cfg.steps, cfg.warmup, cfg.min_lr, cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        total = 0.0
        for micro in range(cfg.grad_accum):
            loss = self._loss(self.train_source(self.step * cfg.grad_accum + micro))
            (loss * (1.0 / cfg.grad_accum)).backward()
            total += loss.item() / cfg.grad_accum
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else \
            _core.ops.global_norm([p.grad for p in params])
        norm = norm.item()
        if not (math.isfinite(total) and math.isfinite(norm)):
            self.optimizer.zero_grad()
            what = f"loss {total}" if not math.isfinite(total) else f"gradient norm {norm}"
            if cfg.on_nan == "stop":
                raise NonFiniteLoss(f"step {self.step}: non-finite {what}; the last good checkpoint is "
                                    f"{latest_checkpoint(self.ckpt_root) or 'none yet'}")
            self.log(f"step {self.step}: non-finite {what}, batch skipped")
            if hasattr(self.model, "moe_discard_load"):
                self.model.moe_discard_load()  # the skipped batches' expert loads update no bias
            self.step += 1
            return total, norm, lr
        self.optimizer.step()
        self.optimizer.zero_grad()
        if hasattr(self.model, "moe_update_bias"):
            self.model.moe_update_bias()  # MoE auxiliary-loss-free balancing, outside autograd
        self.step += 1
        return total, norm, lr

    @no_grad()
    def evaluate(self):
        if self.val_source is None:
            return None
        self.model.eval()
        losses = [self._loss(self.val_source(i)).item() for i in range(self.cfg.eval_batches)]
        return sum(losses) / len(losses)

    # ---- the loop ----
    def fit(self, stop_at=None):
        """Train until cfg.steps (or until step `stop_at`, as if interrupted there)."""
        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        log_path = os.path.join(cfg.out, "log.jsonl")
        interrupted = []
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
                    moe = self._moe_metrics()
                    if moe:
                        rec["moe"] = moe
                    last = self.step == end
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
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    if self.step % cfg.ckpt_every == 0 or last:
                        self._checkpoint(rec.get("val_loss"))
                bar.close()
                if interrupted:
                    if self._saved_step == self.step:
                        self.log(f"interrupted at step {self.step}, whose checkpoint is saved")
                    else:
                        self.log(f"interrupted at step {self.step}: saving a checkpoint")
                        self._checkpoint(None)
        finally:
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

    def _checkpoint(self, val):
        if val is not None and val < self.best_val:
            self.best_val = val
            self.best_ckpt = os.path.join(self.ckpt_root, f"step_{self.step:07d}")
        self.save()

    @staticmethod
    def _line(rec):
        parts = [f"step {rec['step']:>6}", f"loss {rec['loss']:.4f}"]
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
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
        val = [r for r in rows if "val_loss" in r]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.legend()
        path = os.path.join(self.cfg.out, "loss.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path
