"""Training: the loop (gradient accumulation, clipping, NaN guard, evaluation, logging), the
learning-rate schedules, and atomic, exactly resumable checkpoints."""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .schedule import learning_rate
from .loop import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer", "learning_rate", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint"]
