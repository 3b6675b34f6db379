"""Neural-network modules: Module and Parameter, the standard layers, containers, the loss
modules, and utilities (gradient clipping)."""
from .module import Module, Parameter
from .layers import (GELU, Dropout, Embedding, Identity, LayerNorm, Linear, ReLU, RMSNorm, SiLU,
                     Tanh)
from .containers import ModuleList, ModuleDict, Sequential
from .losses import CrossEntropyLoss, MSELoss, NLLLoss
from . import functional, init, utils  # noqa: F401

__all__ = ["Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU",
           "ReLU", "SiLU", "Tanh", "Identity", "ModuleList", "ModuleDict", "Sequential", "CrossEntropyLoss",
           "NLLLoss", "MSELoss"]
