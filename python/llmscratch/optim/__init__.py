"""Optimizers: AdamW (fused multi-tensor step in C++) and SGD with momentum."""
from .optimizer import Optimizer
from .adamw import AdamW
from .sgd import SGD

__all__ = ["Optimizer", "AdamW", "SGD"]
