"""Decoder-only Transformer models: configuration (presets, TOML), the model, and Hugging Face
folder import/export."""
import os

from .config import PRESETS, ModelConfig, config_from_dict, get_preset, load_config
from .transformer import KVCache, Transformer
from .hf import from_pretrained, save_pretrained
from .generate import generate, sample_next

__all__ = ["ModelConfig", "PRESETS", "get_preset", "load_config", "config_from_dict",
           "Transformer", "KVCache", "from_pretrained", "save_pretrained", "build_model", "generate",
           "sample_next"]


def build_model(config, dtype=None, device=None) -> Transformer:
    """A freshly initialised Transformer from a ModelConfig, a preset name or a TOML path."""
    if isinstance(config, str):
        if config not in PRESETS and (config.endswith(".toml") or os.path.isfile(config)):
            config = load_config(config)
        else:
            config = get_preset(config)  # an unknown name's error lists the presets
    return Transformer(config, dtype=dtype, device=device)
