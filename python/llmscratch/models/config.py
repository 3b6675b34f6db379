"""ModelConfig: one dataclass describing every decoder-only Transformer this package builds, from
GPT-2 (learned positions, LayerNorm, GELU-tanh MLP, biases, tied embeddings) to LLaMA/Qwen
(RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention, untied head).

Presets by name (PRESETS, get_preset) and TOML files (load_config) produce the same dataclass;
every value is checked in validate() so a bad config is one clear ValueError, not a shape error
deep inside a forward pass.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["ModelConfig", "PRESETS", "get_preset", "load_config", "config_from_dict"]

_NORMS = ("layernorm", "rmsnorm")
_MLPS = ("gelu", "swiglu")
_POS = ("learned", "rope")
_ROPE_SCALING_TYPES = ("linear", "llama3")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None      # None: n_head (plain multi-head attention)
    n_embd: int = 256
    head_dim: int | None = None       # None: n_embd // n_head (Qwen3's heads are wider)
    block_size: int = 256             # longest sequence (size of the position table / rope cache)
    norm: str = "layernorm"           # 'layernorm' | 'rmsnorm'
    mlp: str = "gelu"                 # 'gelu' (tanh approximation, GPT-2) | 'swiglu'
    intermediate_size: int | None = None  # None: 4C for gelu, LLaMA's 8C/3 rounded up to 64 for swiglu
    bias: bool = True                 # biases in every Linear and LayerNorm
    tie_embeddings: bool = True       # lm_head shares the token embedding table
    pos: str = "learned"              # 'learned' | 'rope'
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {'type': 'linear', 'factor': f} or {'type': 'llama3', ...}
    rope_interleaved: bool = False    # False: channel i pairs with i + HS/2 (HF LLaMA layout)
    qk_norm: bool = False             # RMSNorm over each head of q and k (weights shared by heads)
    logit_softcap: float | None = None  # logits -> c * tanh(logits / c)
    norm_eps: float = 1e-5
    dropout: float = 0.0              # on embeddings and residual branches
    init_std: float = 0.02
    # Mixture of Experts (models/moe.py); n_experts = 0 keeps every MLP dense.
    n_experts: int = 0
    top_k: int = 2
    n_shared_experts: int = 0         # experts every token uses, besides the routed ones
    moe_layers: str | list = "all"    # 'all' | 'every_other' (layers 1, 3, ...) | list of layer indices
    routing: str = "softmax_topk"     # 'softmax_topk' (Mixtral) | 'topk_softmax' | 'sigmoid_bias' (DeepSeek-V3)
    aux_loss_coef: float = 0.01       # Switch load-balancing loss E * sum f_i P_i
    z_loss_coef: float = 0.0          # router z-loss mean(logsumexp(logits)^2)
    capacity_factor: float | None = None  # None: dropless; else in training each expert takes ceil(cf N k / E)
    bias_update_rate: float = 1e-3    # sigmoid_bias: bias step per optimizer step
    moe_activation: str | None = None  # None: the config's mlp
    moe_intermediate_size: int | None = None  # hidden size of one expert; None: intermediate_size

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None and isinstance(self.n_embd, numbers.Integral):
            if self.mlp == "swiglu":
                self.intermediate_size = 64 * math.ceil(8 * self.n_embd / 3 / 64)
            else:
                self.intermediate_size = 4 * self.n_embd
        if self.rope_scaling is not None and isinstance(self.rope_scaling, dict):
            self.rope_scaling = dict(self.rope_scaling)
        if self.moe_activation is None:
            self.moe_activation = self.mlp
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if isinstance(self.moe_layers, tuple):
            self.moe_layers = list(self.moe_layers)
        self.validate()

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head if self.head_dim is None else self.head_dim

    def validate(self) -> "ModelConfig":
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelConfig: {name} must be a positive integer, got {v!r}")

        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size",
                     "intermediate_size"):
            positive_int(name)
        for name, allowed in (("norm", _NORMS), ("mlp", _MLPS), ("pos", _POS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig: {name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        if self.head_dim is not None:
            positive_int("head_dim")
        elif self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig: n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head}), or head_dim must be given")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"ModelConfig: n_head ({self.n_head}) must be a multiple of n_kv_head "
                             f"({self.n_kv_head})")
        if self.pos == "rope" and self.head_size % 2:
            raise ValueError(f"ModelConfig: rope needs an even head size, got {self.head_size}")
        for name in ("bias", "tie_embeddings", "qk_norm", "rope_interleaved"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig: {name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        if not _is_real(self.rope_theta) or self.rope_theta <= 0:
            raise ValueError(f"ModelConfig: rope_theta must be a positive number, got {self.rope_theta!r}")
        if not _is_real(self.norm_eps) or self.norm_eps <= 0:
            raise ValueError(f"ModelConfig: norm_eps must be a positive number, got {self.norm_eps!r}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_real(self.init_std) or self.init_std <= 0:
            raise ValueError(f"ModelConfig: init_std must be a positive number, got {self.init_std!r}")
        if self.logit_softcap is not None and (not _is_real(self.logit_softcap)
                                               or self.logit_softcap <= 0):
            raise ValueError("ModelConfig: logit_softcap must be a positive number or None, got "
                             f"{self.logit_softcap!r}")
        self._validate_rope_scaling()
        self._validate_moe()
        return self

    def _validate_moe(self):
        if not isinstance(self.n_experts, numbers.Integral) or isinstance(self.n_experts, bool) \
                or self.n_experts < 0:
            raise ValueError(f"ModelConfig: n_experts must be a non-negative integer, got {self.n_experts!r}")
        if not self.n_experts:
            return
        for name in ("top_k", "moe_intermediate_size"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelConfig: {name} must be a positive integer, got {v!r}")
        if self.top_k > self.n_experts:
            raise ValueError(f"ModelConfig: top_k ({self.top_k}) exceeds n_experts ({self.n_experts})")
        if (not isinstance(self.n_shared_experts, numbers.Integral) or isinstance(self.n_shared_experts, bool)
                or self.n_shared_experts < 0):
            raise ValueError("ModelConfig: n_shared_experts must be a non-negative integer, got "
                             f"{self.n_shared_experts!r}")
        from .moe import ROUTINGS
        if self.routing not in ROUTINGS:
            raise ValueError(f"ModelConfig: routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.moe_activation not in _MLPS:
            raise ValueError(f"ModelConfig: moe_activation must be one of {_MLPS}, got "
                             f"{self.moe_activation!r}")
        for name in ("aux_loss_coef", "z_loss_coef", "bias_update_rate"):
            v = getattr(self, name)
            if not _is_real(v) or v < 0:
                raise ValueError(f"ModelConfig: {name} must be a non-negative number, got {v!r}")
        cf = self.capacity_factor
        if cf is not None and (not _is_real(cf) or cf <= 0):
            raise ValueError(f"ModelConfig: capacity_factor must be a positive number or None, got {cf!r}")
        self.moe_layer_indices()  # validates moe_layers

    def moe_layer_indices(self) -> list[int]:
        """Indices of the blocks whose MLP is a MoE (empty when n_experts is 0)."""
        if not self.n_experts:
            return []
        ml = self.moe_layers
        if ml == "all":
            return list(range(self.n_layer))
        if ml == "every_other":
            return list(range(1, self.n_layer, 2))
        if isinstance(ml, list) and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                        and 0 <= i < self.n_layer for i in ml):
            return sorted(set(int(i) for i in ml))
        raise ValueError(f"ModelConfig: moe_layers must be 'all', 'every_other' or a list of layer "
                         f"indices in [0, {self.n_layer}), got {ml!r}")

    def _validate_rope_scaling(self):
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ValueError(f"ModelConfig: rope_scaling must be a table such as "
                             f"{{type = 'linear', factor = 2.0}} or None, got {rs!r}")
        if self.pos != "rope":
            raise ValueError("ModelConfig: rope_scaling is set but pos is not 'rope'")
        kind = self.rope_scaling_type
        if kind not in _ROPE_SCALING_TYPES:
            raise ValueError(f"ModelConfig: rope_scaling type must be one of {_ROPE_SCALING_TYPES}, "
                             f"got {kind!r}")
        allowed = {"type", "rope_type", "factor"}
        if kind == "llama3":
            allowed |= {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
        unknown = sorted(set(rs) - allowed)
        if unknown:
            raise ValueError(f"ModelConfig: unknown rope_scaling keys {unknown} for type {kind!r} "
                             f"(allowed: {sorted(allowed)})")
        missing = sorted(k for k in allowed - {"type", "rope_type"} if k not in rs)
        if missing:
            raise ValueError(f"ModelConfig: rope_scaling of type {kind!r} needs {missing}")
        for k in allowed - {"type", "rope_type"}:
            if not _is_real(rs[k]) or rs[k] <= 0:
                raise ValueError(f"ModelConfig: rope_scaling {k} must be a positive number, got {rs[k]!r}")
        # llama3's ramp between the two divides by their gap
        if kind == "llama3" and not rs["low_freq_factor"] < rs["high_freq_factor"]:
            raise ValueError(f"ModelConfig: rope_scaling low_freq_factor ({rs['low_freq_factor']}) must be "
                             f"below high_freq_factor ({rs['high_freq_factor']})")

    @property
    def rope_scaling_type(self):
        """rope_scaling's kind, "rope_type" before the older "type" (transformers' order)."""
        rs = self.rope_scaling or {}
        return rs.get("rope_type", rs.get("type"))

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated). Values that were derived (n_kv_head,
        intermediate_size) are kept as they are; pass them too when changing n_head or n_embd."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def num_parameters(self) -> int:
        """Parameter count computed from the config alone (equals the built model's
        num_parameters()); lets big presets be sized without allocating them."""
        C, L, V, I = self.n_embd, self.n_layer, self.vocab_size, self.intermediate_size
        HS, NH, NKV = self.head_size, self.n_head, self.n_kv_head
        norm = C * (2 if self.norm == "layernorm" and self.bias else 1)
        b = 1 if self.bias else 0
        attn = C * (NH + 2 * NKV) * HS + b * (NH + 2 * NKV) * HS + NH * HS * C + b * C
        if self.qk_norm:
            attn += 2 * HS
        if self.mlp == "gelu":
            mlp = 2 * C * I + b * (I + C)
        else:
            mlp = 3 * C * I + b * (2 * I + C)
        n = L * (attn + mlp + 2 * norm) + norm + V * C
        if self.n_experts:  # MoE layers swap the dense MLP for a router, experts, shared experts
            H, E = self.moe_intermediate_size, self.n_experts
            per_expert = C * H * (3 if self.moe_activation == "swiglu" else 2)
            moe = E * C + E * per_expert + self.n_shared_experts * per_expert
            n += len(self.moe_layer_indices()) * (moe - mlp)
        if self.pos == "learned":
            n += self.block_size * C
        if not self.tie_embeddings:
            n += V * C
        return n


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


PRESETS: dict[str, dict] = {
    # The CPU default: about 4.3M parameters, trains in minutes on two cores.
    "tiny": dict(vocab_size=4096, n_layer=4, n_head=4, n_embd=256, block_size=256),
    "gpt2-124m": dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": dict(vocab_size=50257, n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    # LLaMA architecture at GPT-2-small scale: 12 x 768, GQA 12/4, SwiGLU 2048, 32k vocab, untied.
    "llama-style-124m": dict(vocab_size=32000, n_layer=12, n_head=12, n_kv_head=4, n_embd=768,
                             block_size=1024, norm="rmsnorm", mlp="swiglu", intermediate_size=2048,
                             bias=False, tie_embeddings=False, pos="rope", rope_theta=10000.0,
                             norm_eps=1e-6),
    # MoE at the CPU scale: 8 GELU experts of hidden 256, top-2, in every layer.
    "moe-tiny": dict(vocab_size=4096, n_layer=4, n_head=4, n_embd=128, block_size=256,
                     n_experts=8, top_k=2, intermediate_size=512, moe_intermediate_size=256),
    # GPT-2 124M with every MLP replaced by 8 experts of the same size, top-2 (GPU).
    "moe-124m-8e": dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024,
                        n_experts=8, top_k=2),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The named preset, with fields optionally overridden (e.g. vocab_size of a tokenizer)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return config_from_dict({**PRESETS[name], **overrides}, where=f"preset {name!r}")


def config_from_dict(d: dict, where: str = "config") -> ModelConfig:
    """ModelConfig from a plain dict; a 'preset' key starts from that preset. Unknown keys are an
    error naming them and listing the known ones."""
    d = dict(d)
    preset = d.pop("preset", None)
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown model config keys {unknown}; known keys are "
                         f"{sorted(known | {'preset'})}")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"{where}: unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
        d = {**PRESETS[preset], **d}
    return ModelConfig(**d)


def load_config(path) -> ModelConfig:
    """ModelConfig from a TOML file: the keys of ModelConfig at the top level or in a [model]
    table (so one file can also carry other sections), optionally starting from
    preset = "<name>"."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading TOML configs on Python < 3.11 needs the tomli package "
                              "(pip install tomli)") from None
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"model config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # named: a binary file said only "byte 0xff"
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    if "model" in data:
        if not isinstance(data["model"], dict):
            raise ValueError(f"{path}: 'model' must be a table")
        loose = [k for k, v in data.items() if k != "model" and not isinstance(v, dict) and
                 not (isinstance(v, list) and v and all(isinstance(e, dict) for e in v))]  # [[tables]]
        if loose:  # a key written above [model] would be dropped without a word
            raise ValueError(f"{path}: {', '.join(sorted(loose))} outside the [model] table")
        data = data["model"]
    return config_from_dict(data, where=str(path))
