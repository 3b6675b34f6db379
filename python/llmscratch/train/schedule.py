"""Learning-rate schedules: linear warmup, then cosine, linear or constant decay to min_lr."""
import math


def learning_rate(step: int, max_lr: float, total_steps: int, warmup_steps: int = 0,
                  min_lr: float = 0.0, kind: str = "cosine") -> float:
    """The rate for optimizer step `step` (0-based). Warmup ramps from max_lr/warmup to max_lr;
    then cosine/linear go from max_lr to min_lr at total_steps (and stay there: also when the
    warmup is as long as the run, which then never decays); constant stays at max_lr."""
    if kind not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule '{kind}': expected cosine, linear or constant")
    if step >= total_steps and kind != "constant":
        return min_lr
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return max_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return max_lr + (min_lr - max_lr) * progress
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
