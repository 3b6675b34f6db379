"""Hugging Face folders: config.json + model.safetensors (or sharded model-*.safetensors with
model.safetensors.index.json) for the `gpt2`, `llama` and `qwen3` model types.

Name and layout mapping (ours <- theirs):
  gpt2   wte, wpe, ln_f -> norm_f, h.N.ln_1/ln_2 -> blocks.N.norm1/norm2,
         h.N.attn.c_attn -> attn.qkv, attn.c_proj -> attn.proj, mlp.c_fc -> mlp.fc,
         mlp.c_proj -> mlp.proj. GPT-2's Conv1D stores weights as (in, out): transposed here.
         The head is tied to wte unless tie_word_embeddings is false. Activation gelu_new (tanh).
  llama  model.embed_tokens -> wte, model.norm -> norm_f, model.layers.N.input_layernorm /
         post_attention_layernorm -> norm1 / norm2, self_attn.{q,k,v}_proj stacked row-wise ->
         attn.qkv, o_proj -> attn.proj, mlp.{gate,up}_proj stacked -> mlp.fc ([gate; up]),
         down_proj -> mlp.proj, lm_head. Rotary layout: half-split (our rope_interleaved=False).
  qwen3  llama's names plus self_attn.q_norm / k_norm -> attn.q_norm / k_norm (QK-norm), no
         biases.
  mixtral llama's attention and norms; every MLP is a MoE (softmax-then-top-k routing with
         renormalised gates, SwiGLU experts, no biases). Two layouts are read:
         the per-expert one of the published checkpoints, block_sparse_moe.gate -> mlp.router,
         block_sparse_moe.experts.E.{w1, w3} (I, C) stacked and transposed -> mlp.experts_fc[E]
         (C, 2I) = [w1^T | w3^T], experts.E.w2 (C, I) transposed -> mlp.experts_proj[E] (I, C);
         and the fused one of transformers >= 5's modules (5.24 checked): mlp.gate (E, C),
         mlp.experts.gate_up_proj (E, 2I, C) holding [gate; up], mlp.experts.down_proj (E, C, I).
         transformers 5.24 fuses on load and writes the per-expert layout back; save_pretrained
         writes the per-expert layout too, which every transformers version loads.
         router_aux_loss_coef maps to aux_loss_coef as is, but the balancing losses differ:
         ours is one term per MoE layer, summed (f normalised by N*k); transformers pools all
         layers' tokens into one term and sums f over the k slots, about top_k / n_layer times
         ours for layers that route alike (2x at one layer of top-2, 0.5x at four). Fine-tuning
         a loaded Mixtral therefore weighs the balance differently from transformers.
Defaults for keys a config.json lacks are transformers': rope_theta 10000 (llama, qwen3) and
10^6 (mixtral); max_position_embeddings 2048 (llama), 32768 (qwen3), 131072 (mixtral);
router_aux_loss_coef 0.001. Dropout: gpt2's resid_pdrop becomes dropout, which llmscratch applies
to the embeddings and the residual branches; there is no dropout of the attention weights, so a
config with attn_pdrop (or llama's attention_dropout) above 0, or an embd_pdrop other than
resid_pdrop, loads with a warning that fine-tuning will not match transformers'.
llama, qwen3 and mixtral carry head_dim (-> head_dim, written back always), which may make
num_attention_heads x head_dim differ from hidden_size (Qwen3: 16 x 128 over 1024); gpt2 has no
such field, so its heads must tile n_embd.
Tensors go through the safetensors package's numpy API; bfloat16 files (which numpy cannot
represent) are read by a small reader of the format and widened to float32.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np

import llmscratch as ls
from .config import ModelConfig
from .transformer import Transformer

__all__ = ["from_pretrained", "save_pretrained", "hf_config_to_model_config",
           "model_config_to_hf_config"]

_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"


# ---- configs ----------------------------------------------------------------------------------

def hf_config_to_model_config(hf: dict) -> ModelConfig:
    """ModelConfig for a Hugging Face config.json dict of model type gpt2, llama or qwen3; a
    feature we cannot represent exactly is a ValueError naming it."""
    mt = hf.get("model_type")
    if mt == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"gpt2 config: activation_function {act!r} is not supported (only the "
                             "tanh GELU, gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx", False) or not hf.get("scale_attn_weights", True):
            raise ValueError("gpt2 config: only scale_attn_weights=true with "
                             "scale_attn_by_inverse_layer_idx=false is supported")
        C = hf["n_embd"]
        resid = float(hf.get("resid_pdrop", 0.0))
        _warn_dropout(mt, attention=float(hf.get("attn_pdrop", 0.0)), embedding=float(hf.get("embd_pdrop", resid)),
                      residual=resid)
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=C,
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), norm="layernorm", mlp="gelu",
            intermediate_size=hf.get("n_inner") or 4 * C, bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), pos="learned",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=resid,
            init_std=hf.get("initializer_range", 0.02))
    if mt in ("llama", "qwen3"):
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{mt} config: hidden_act {act!r} is not supported (only silu)")
        C, NH = hf["hidden_size"], hf["num_attention_heads"]
        attn_bias = hf.get("attention_bias", False)
        mlp_bias = hf.get("mlp_bias", False) if mt == "llama" else False
        if attn_bias != mlp_bias:
            raise ValueError(f"{mt} config: biases in attention but not in the MLP (or the "
                             f"reverse) are not supported (attention_bias={attn_bias}, "
                             f"mlp_bias={mlp_bias})")
        if hf.get("use_sliding_window", False):
            raise ValueError(f"{mt} config: sliding-window attention is not supported")
        theta, scaling = _hf_rope(hf, 10000.0)
        _warn_dropout(mt, attention=float(hf.get("attention_dropout", 0.0)))
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=NH,
            n_kv_head=hf.get("num_key_value_heads") or NH, n_embd=C, head_dim=_head_dim(hf),
            block_size=hf.get("max_position_embeddings", 2048 if mt == "llama" else 32768), norm="rmsnorm", mlp="swiglu",
            intermediate_size=hf["intermediate_size"], bias=bool(attn_bias),
            tie_embeddings=hf.get("tie_word_embeddings", False), pos="rope", rope_theta=theta,
            rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=mt == "qwen3",
            init_std=hf.get("initializer_range", 0.02))
    if mt == "mixtral":
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"mixtral config: hidden_act {act!r} is not supported (only silu)")
        if hf.get("sliding_window") is not None:
            raise ValueError("mixtral config: sliding-window attention is not supported")
        C, NH = hf["hidden_size"], hf["num_attention_heads"]
        theta, scaling = _hf_rope(hf, 1e6)
        _warn_dropout(mt, attention=float(hf.get("attention_dropout", 0.0)))
        I = hf["intermediate_size"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=NH,
            n_kv_head=hf.get("num_key_value_heads") or NH, n_embd=C, head_dim=_head_dim(hf),
            block_size=hf.get("max_position_embeddings", 131072), norm="rmsnorm", mlp="swiglu",
            intermediate_size=I, bias=False, tie_embeddings=hf.get("tie_word_embeddings", False),
            pos="rope", rope_theta=theta, rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-5), init_std=hf.get("initializer_range", 0.02),
            n_experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"],
            moe_layers="all", routing="softmax_topk", moe_activation="swiglu",
            moe_intermediate_size=I, aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))
    raise ValueError(f"unsupported Hugging Face model_type {mt!r} (supported: 'gpt2', 'llama', "
                     "'qwen3', 'mixtral')")


def _head_dim(hf: dict) -> int | None:
    """head_dim as transformers reads it, or None (ModelConfig's default) where that is
    hidden_size / num_attention_heads. A qwen3 config without the key gets Qwen3Config's default,
    128, not hidden_size / heads; a null head_dim means hidden_size // heads in every type."""
    C, NH = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim", 128 if hf["model_type"] == "qwen3" else None) or C // NH
    return None if head_dim * NH == C else head_dim


def _warn_dropout(mt: str, attention: float, embedding: float | None = None, residual: float = 0.0):
    """A warning where the config's dropout is not what llmscratch's one dropout reproduces."""
    if attention > 0 or (embedding is not None and embedding != residual):
        where = f"attention dropout {attention}" + (f", embedding dropout {embedding}" if embedding is not None else "")
        warnings.warn(f"{mt} config: {where}: llmscratch has one dropout ({residual}, on the embeddings and "
                      f"residual branches) and none on the attention weights; training will not match "
                      f"transformers'", stacklevel=3)


def _hf_rope(hf: dict, default_theta: float):
    """(theta, scaling) from either the old keys (rope_theta, rope_scaling) or the newer
    rope_parameters table; default_theta where both lack it (the model type's default)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {}) or None
    theta = params.pop("rope_theta", hf.get("rope_theta", default_theta))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            return float(theta), None
        if kind not in ("linear", "llama3"):
            raise ValueError(f"llama config: rope scaling type {kind!r} is not supported "
                             "(only linear and llama3)")
        keep = {"factor"} | ({"low_freq_factor", "high_freq_factor",
                              "original_max_position_embeddings"} if kind == "llama3" else set())
        scaling = {"type": kind, **{k: scaling[k] for k in keep if k in scaling}}
    return float(theta), scaling


def _family(c: ModelConfig) -> str:
    if (c.pos, c.norm, c.mlp) == ("learned", "layernorm", "gelu") and c.n_kv_head == c.n_head:
        return "gpt2"
    if (c.pos, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu") and not c.rope_interleaved:
        return "llama"
    raise ValueError("save_pretrained: this architecture matches neither the gpt2 (learned "
                     "positions, layernorm, gelu, no GQA) nor the llama/qwen3 (rope half-split, "
                     f"rmsnorm, swiglu) model types: pos={c.pos}, norm={c.norm}, mlp={c.mlp}, "
                     f"n_kv_head={c.n_kv_head}, rope_interleaved={c.rope_interleaved}")


def _mixtral_config(c: ModelConfig, dtype_name: str) -> dict:
    if (c.pos, c.norm, c.moe_activation, c.routing) != ("rope", "rmsnorm", "swiglu", "softmax_topk") \
            or c.rope_interleaved or c.bias or c.qk_norm or c.n_shared_experts \
            or c.capacity_factor is not None \
            or c.moe_layer_indices() != list(range(c.n_layer)):
        raise ValueError("save_pretrained: a MoE model is expressible as mixtral only with rope "
                         "(half-split), rmsnorm, SwiGLU experts in every layer, softmax_topk "
                         "routing, no biases, no QK-norm, no shared experts and dropless dispatch")
    out = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
           "vocab_size": c.vocab_size, "hidden_size": c.n_embd,
           "intermediate_size": c.moe_intermediate_size, "num_hidden_layers": c.n_layer,
           "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
           "head_dim": c.head_size, "hidden_act": "silu", "max_position_embeddings": c.block_size,
           "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "sliding_window": None,
           "num_local_experts": c.n_experts, "num_experts_per_tok": c.top_k,
           "router_aux_loss_coef": c.aux_loss_coef, "router_jitter_noise": 0.0,
           "attention_dropout": 0.0, "initializer_range": c.init_std,
           "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
           "dtype": dtype_name}
    return _with_rope_scaling(out, c)


def _with_rope_scaling(out: dict, c: ModelConfig) -> dict:
    """out with c's rope scaling as transformers writes it ({"rope_type": kind, ...})."""
    if c.rope_scaling is not None:
        rs = {k: v for k, v in c.rope_scaling.items() if k not in ("type", "rope_type")}
        out["rope_scaling"] = {"rope_type": c.rope_scaling_type, **rs}
    return out


def model_config_to_hf_config(c: ModelConfig, dtype_name: str = "float32") -> dict:
    """config.json for c: model type gpt2, llama, qwen3 (llama with QK-norm, no biases), or
    mixtral (MoE)."""
    if c.logit_softcap is not None:
        raise ValueError("save_pretrained: logit soft-capping has no field in the gpt2, llama or "
                         "qwen3 model types")
    if c.n_experts:
        return _mixtral_config(c, dtype_name)
    family = _family(c)
    if c.qk_norm and (family != "llama" or c.bias):
        raise ValueError("save_pretrained: QK-norm is only expressible as a qwen3 model "
                         "(llama-style, no biases)")
    if family == "gpt2":
        if c.n_head * c.head_size != c.n_embd:
            raise ValueError(f"save_pretrained: the gpt2 model type has no head_dim: n_head "
                             f"({c.n_head}) x head size ({c.head_size}) must be n_embd ({c.n_embd})")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
                "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.intermediate_size,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "initializer_range": c.init_std, "tie_word_embeddings": c.tie_embeddings,
                "bos_token_id": None, "eos_token_id": None, "dtype": dtype_name}
    qwen3 = c.qk_norm
    out = {"architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
           "model_type": "qwen3" if qwen3 else "llama",
           "vocab_size": c.vocab_size, "hidden_size": c.n_embd,
           "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
           "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
           "head_dim": c.head_size, "hidden_act": "silu",
           "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
           "rope_theta": c.rope_theta, "attention_bias": c.bias, "mlp_bias": c.bias,
           "attention_dropout": 0.0, "initializer_range": c.init_std,
           "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
           "dtype": dtype_name}
    if qwen3:
        del out["mlp_bias"]
        out["use_sliding_window"] = False
    return _with_rope_scaling(out, c)


# ---- tensor names -----------------------------------------------------------------------------

def _gpt2_from_hf(t: dict, c: ModelConfig) -> dict:
    t = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in t.items()}
    out = {"wte.weight": t["wte.weight"], "wpe.weight": t["wpe.weight"],
           "norm_f.weight": t["ln_f.weight"], "norm_f.bias": t["ln_f.bias"]}
    for i in range(c.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[b + ours + ".weight"] = t[h + theirs + ".weight"]
            out[b + ours + ".bias"] = t[h + theirs + ".bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[b + ours + ".weight"] = t[h + theirs + ".weight"].T  # Conv1D: (in, out)
            out[b + ours + ".bias"] = t[h + theirs + ".bias"]
    out["lm_head.weight"] = t["wte.weight"] if c.tie_embeddings else t["lm_head.weight"]
    return out


def _gpt2_to_hf(s: dict, c: ModelConfig) -> dict:
    def bias(name, n):
        return s[name] if name in s else np.zeros(n, dtype=s["wte.weight"].dtype)

    out = {"transformer.wte.weight": s["wte.weight"], "transformer.wpe.weight": s["wpe.weight"],
           "transformer.ln_f.weight": s["norm_f.weight"],
           "transformer.ln_f.bias": bias("norm_f.bias", c.n_embd)}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + theirs + ".weight"] = s[b + ours + ".weight"]
            out[h + theirs + ".bias"] = bias(b + ours + ".bias", c.n_embd)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            w = s[b + ours + ".weight"]
            out[h + theirs + ".weight"] = w.T
            out[h + theirs + ".bias"] = bias(b + ours + ".bias", w.shape[0])
    if not c.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    return out


def _piece(t: dict, name: str, rows: int, cols=None):
    """t[name], checked to be (rows, cols), or (rows,) without cols: the pieces concatenated or
    stacked below, whose sum alone the model's shapes would check (a shifted split passed)."""
    want = (rows,) if cols is None else (rows, cols)
    if tuple(t[name].shape) != want:
        raise ValueError(f"from_pretrained: tensor {name!r} has shape {tuple(t[name].shape)}, the config "
                         f"implies {want}")
    return t[name]


def _llama_from_hf(t: dict, c: ModelConfig) -> dict:
    out = {"wte.weight": t["model.embed_tokens.weight"], "norm_f.weight": t["model.norm.weight"]}
    kinds = ("weight", "bias") if c.bias else ("weight",)
    C, q, kv = c.n_embd, c.n_head * c.head_size, c.n_kv_head * c.head_size
    for i in range(c.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        out[b + "norm1.weight"] = t[h + "input_layernorm.weight"]
        out[b + "norm2.weight"] = t[h + "post_attention_layernorm.weight"]
        if c.qk_norm:
            out[b + "attn.q_norm.weight"] = t[h + "self_attn.q_norm.weight"]
            out[b + "attn.k_norm.weight"] = t[h + "self_attn.k_norm.weight"]
        for k in kinds:
            cols = C if k == "weight" else None
            out[b + "attn.qkv." + k] = np.concatenate(
                [_piece(t, h + f"self_attn.{p}_proj.{k}", n, cols) for p, n in zip("qkv", (q, kv, kv))])
            out[b + "attn.proj." + k] = t[h + "self_attn.o_proj." + k]
            if c.n_experts:
                continue
            out[b + "mlp.fc." + k] = np.concatenate(
                [_piece(t, h + f"mlp.{p}_proj." + k, c.intermediate_size, cols) for p in ("gate", "up")])
            out[b + "mlp.proj." + k] = t[h + "mlp.down_proj." + k]
        if c.n_experts:
            m = h + "block_sparse_moe."
            E = c.n_experts
            out[b + "mlp.router.weight"] = t[m + "gate.weight"]
            H = c.moe_intermediate_size
            out[b + "mlp.experts_fc"] = np.stack([np.concatenate(
                [_piece(t, m + f"experts.{e}.{w}.weight", H, C) for w in ("w1", "w3")], axis=0).T
                for e in range(E)])
            out[b + "mlp.experts_proj"] = np.stack([_piece(t, m + f"experts.{e}.w2.weight", C, H).T
                                                    for e in range(E)])
    out["lm_head.weight"] = (t["model.embed_tokens.weight"] if c.tie_embeddings
                             else t["lm_head.weight"])
    return out


def _llama_to_hf(s: dict, c: ModelConfig) -> dict:
    out = {"model.embed_tokens.weight": s["wte.weight"], "model.norm.weight": s["norm_f.weight"]}
    q, kv, hidden = c.n_head * c.head_size, c.n_kv_head * c.head_size, c.intermediate_size
    kinds = ("weight", "bias") if c.bias else ("weight",)
    for i in range(c.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        out[h + "input_layernorm.weight"] = s[b + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = s[b + "norm2.weight"]
        if c.qk_norm:
            out[h + "self_attn.q_norm.weight"] = s[b + "attn.q_norm.weight"]
            out[h + "self_attn.k_norm.weight"] = s[b + "attn.k_norm.weight"]
        for k in kinds:
            qkv = s[b + "attn.qkv." + k]
            for name, part in zip("qkv", np.split(qkv, [q, q + kv], axis=0)):
                out[h + f"self_attn.{name}_proj.{k}"] = part
            out[h + "self_attn.o_proj." + k] = s[b + "attn.proj." + k]
            if c.n_experts:
                continue
            gate, up = np.split(s[b + "mlp.fc." + k], [hidden], axis=0)
            out[h + "mlp.gate_proj." + k], out[h + "mlp.up_proj." + k] = gate, up
            out[h + "mlp.down_proj." + k] = s[b + "mlp.proj." + k]
        if c.n_experts:
            m, H = h + "block_sparse_moe.", c.moe_intermediate_size
            out[m + "gate.weight"] = s[b + "mlp.router.weight"]
            for e, (fc, proj) in enumerate(zip(s[b + "mlp.experts_fc"], s[b + "mlp.experts_proj"])):
                out[m + f"experts.{e}.w1.weight"] = fc[:, :H].T
                out[m + f"experts.{e}.w3.weight"] = fc[:, H:].T
                out[m + f"experts.{e}.w2.weight"] = proj.T
    if not c.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    return out


def _unfuse_mixtral_experts(t: dict) -> dict:
    """The fused expert layout of transformers >= 5 (mlp.gate, mlp.experts.gate_up_proj
    (E, 2I, C) = [gate; up], mlp.experts.down_proj (E, C, I)) renamed to the per-expert one."""
    out = {}
    for name, v in t.items():
        head, sep, tail = name.partition(".mlp.")
        if not sep or not head.startswith("model.layers."):
            out[name] = v
            continue
        m = head + ".block_sparse_moe."
        if tail == "gate.weight":
            out[m + "gate.weight"] = v
        elif tail == "experts.gate_up_proj":
            gate, up = np.split(v, 2, axis=1)
            for e in range(v.shape[0]):
                out[m + f"experts.{e}.w1.weight"], out[m + f"experts.{e}.w3.weight"] = gate[e], up[e]
        elif tail == "experts.down_proj":
            for e in range(v.shape[0]):
                out[m + f"experts.{e}.w2.weight"] = v[e]
        else:
            out[name] = v
    return out


# ---- safetensors files ------------------------------------------------------------------------

def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("Hugging Face folders need the safetensors package "
                          "(pip install safetensors)") from None
    return safetensors.numpy


def _read_safetensors(path: Path) -> dict:
    load_file = _safetensors_numpy().load_file
    try:
        return load_file(str(path))
    except Exception as first_error:  # numpy has no bfloat16: read those files ourselves
        try:
            return _read_safetensors_raw(path)
        except Exception:
            raise first_error from None


_RAW_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
               "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors_raw(path: Path) -> dict:
    """The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}}, then the bytes. BF16 becomes float32 by putting its bits in the high half."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] in _RAW_DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_RAW_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def _load_tensors(folder: Path) -> dict:
    if (folder / _WEIGHTS).exists():
        return _read_safetensors(folder / _WEIGHTS)
    if (folder / _INDEX).exists():
        with open(folder / _INDEX) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for name in files:
            tensors.update(_read_safetensors(folder / name))
        return tensors
    raise FileNotFoundError(f"from_pretrained: {folder} has neither {_WEIGHTS} nor {_INDEX}")


# ---- public entry points ----------------------------------------------------------------------

def from_pretrained(path, dtype=None, device=None) -> Transformer:
    """A Transformer from a Hugging Face folder (gpt2, llama, qwen3 or mixtral), in eval mode as
    transformers returns it. dtype defaults to float32."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"from_pretrained: {folder} has no config.json")
    with open(folder / "config.json") as f:
        hf = json.load(f)
    config = hf_config_to_model_config(hf)
    tensors = {k: v for k, v in _load_tensors(folder).items()
               if not k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))}
    if hf["model_type"] == "mixtral":
        tensors = _unfuse_mixtral_experts(tensors)
    gpt2 = hf["model_type"] == "gpt2"
    embedding = next((tensors[k] for k in ("model.embed_tokens.weight", "transformer.wte.weight",
                                           "wte.weight") if k in tensors), None)
    head = tensors.get("lm_head.weight")
    if (config.tie_embeddings and head is not None and embedding is not None
            and not np.array_equal(head, embedding)):
        # as transformers: a file whose head differs from its embedding table keeps both, untied
        config = config.replace(tie_embeddings=False)
    convert, back = (_gpt2_from_hf, _gpt2_to_hf) if gpt2 else (_llama_from_hf, _llama_to_hf)
    try:
        ours = convert(tensors, config)
    except KeyError as e:
        raise ValueError(f"from_pretrained: {folder} lacks tensor {e.args[0]!r}") from None
    # Every tensor of the file must have been used: a leftover means a feature we would ignore.
    def plain(name):
        return name[len("transformer."):] if gpt2 and name.startswith("transformer.") else name
    used = {plain(k) for k in back(ours, config)} | {"lm_head.weight"}
    unused = sorted(k for k in tensors if plain(k) not in used)
    if unused:
        raise ValueError(f"from_pretrained: {folder} holds tensors this architecture does not use: "
                         f"{unused[:8]}{' ...' if len(unused) > 8 else ''}")
    dtype = dtype or ls.float32
    model = Transformer(config, dtype=dtype, device=device)
    # each in its parameter's dtype: a bf16 model's float32 router must not round through bf16
    kinds = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: ls.tensor(np.ascontiguousarray(v), dtype=kinds.get(k, dtype), device=device)
             for k, v in ours.items()}
    model.load_state_dict(state)
    return model.eval()


def _np_dtype_name(dtype) -> tuple:
    if dtype is None or dtype == ls.float32:
        return np.float32, "float32"
    if dtype == ls.float64:
        return np.float64, "float64"
    if dtype == ls.float16:
        return np.float16, "float16"
    raise ValueError(f"save_pretrained: dtype must be float32, float64 or float16, got {dtype}")


def save_pretrained(model: Transformer, path, dtype=None) -> None:
    """Write model as a Hugging Face folder that transformers' from_pretrained loads: the gpt2
    model type for GPT-2-style configs, llama for LLaMA-style ones, qwen3 for LLaMA-style ones
    with QK-norm (an architecture that is none of these is a ValueError). dtype: float32 (default), float64 or float16."""
    save_file = _safetensors_numpy().save_file
    np_dtype, name = _np_dtype_name(dtype)
    c = model.config
    hf = model_config_to_hf_config(c, name)
    state = {k: np.asarray(v.detach().cpu().to(dtype=ls.float64 if np_dtype == np.float64
                                               else ls.float32)).astype(np_dtype)
             for k, v in model.state_dict().items()}
    tensors = (_gpt2_to_hf if hf["model_type"] == "gpt2" else _llama_to_hf)(state, c)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / _WEIGHTS)
    with open(folder / "config.json", "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")
