"""The decoder-only Transformer of both families (GPT-2 and LLaMA/Qwen), pre-norm:

    x = wte[ids] (+ wpe[pos])                                (B, T, C)
    for each block:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    logits = lm_head(norm_f(x))  (optionally c * tanh(logits / c))   (B, T, V)

The add after attention and norm2 run as one kernel (F.add_layer_norm / F.add_rms_norm: the
residual stream is read and written once for both); the results are those of the two steps. The
add after the MLP stays separate: fusing it with the next block's norm1 (or norm_f) would make a
block return the residual and its pending update, two tensors, where a recomputed
(checkpointed) block returns one.

Attention: one fused qkv projection C -> (NH + 2 NKV) HS, optional RMSNorm per head of q and k
(QK-norm), RoPE on q and k (half-split layout by default, as Hugging Face LLaMA), causal
F.scaled_dot_product_attention with grouped kv heads (query head h reads kv head
h // (NH / NKV)), output projection NH HS -> C (HS is n_embd / n_head unless the config's
head_dim sets it, so NH HS need not be C). MLP: GELU-tanh (fc C -> I, proj I -> C) or
SwiGLU (fc C -> 2I holding [gate; up], proj I -> C).

Incremental decoding: pass a KVCache and the position of the first id; the block writes its k, v
into the cache and attends over cache[:start_pos + T] with the causal mask aligned bottom right.
Without a cache, start_pos only places the ids at positions start_pos .. start_pos + T - 1 (as
Hugging Face's position_ids); they attend causally among themselves.
"""
from __future__ import annotations

import math

import numpy as np

import llmscratch as ls
from .. import functional as F
from .. import nn
from ..autograd import checkpoint, is_grad_enabled, no_grad
from ..nn import init
from .config import ModelConfig
from .moe import MoE

__all__ = ["Transformer", "KVCache", "rope_tables"]


def rope_tables(config: ModelConfig, T: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (cos, sin) of shape (T, HS/2) for positions 0..T-1, with the config's theta and
    optional scaling ('linear': positions divided by factor; 'llama3': per-frequency scaling as in
    LLaMA 3.1)."""
    HS = config.head_size
    inv_freq = float(config.rope_theta) ** (-np.arange(0, HS, 2, dtype=np.float64) / HS)
    rs = config.rope_scaling
    if rs is not None:
        kind = config.rope_scaling_type
        factor = float(rs["factor"])
        if kind == "linear":
            inv_freq = inv_freq / factor
        elif kind == "llama3":
            low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
            old_len = float(rs["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv_freq
            smooth = (old_len / wavelen - low) / (high - low)
            scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
            mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
            inv_freq = np.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    angle = np.outer(np.arange(T, dtype=np.float64), inv_freq)
    return np.cos(angle), np.sin(angle)


class KVCache:
    """Keys and values of every layer for incremental decoding: k[l], v[l] of shape
    (B, NKV, max_len, HS), filled by Transformer.forward(ids, kv_cache=..., start_pos=...)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None,
                 dtype=None, device=None):
        max_len = config.block_size if max_len is None else max_len
        if not 0 < max_len <= config.block_size:
            raise ValueError(f"KVCache: max_len must be in [1, block_size={config.block_size}], "
                             f"got {max_len}")
        shape = (batch_size, config.n_kv_head, max_len, config.head_size)
        dtype = dtype or ls.float32
        self.max_len = max_len
        self.k = [ls.zeros(*shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [ls.zeros(*shape, dtype=dtype, device=device) for _ in range(config.n_layer)]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, dtype=None, device=None):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_size = c.n_head, c.n_kv_head, c.head_size
        self.rope_interleaved = c.rope_interleaved
        qkv_out = (c.n_head + 2 * c.n_kv_head) * c.head_size
        self.qkv = nn.Linear(c.n_embd, qkv_out, bias=c.bias, dtype=dtype, device=device)
        self.proj = nn.Linear(c.n_head * c.head_size, c.n_embd, bias=c.bias, dtype=dtype, device=device)
        if c.qk_norm:
            self.q_norm = nn.RMSNorm(c.head_size, eps=c.norm_eps, dtype=dtype, device=device)
            self.k_norm = nn.RMSNorm(c.head_size, eps=c.norm_eps, dtype=dtype, device=device)
        self.qk_norm = c.qk_norm

    def forward(self, x, rope=None, cache=None, start_pos=0):
        B, T, _ = x.shape
        NH, NKV, HS = self.n_head, self.n_kv_head, self.head_size
        qkv = self.qkv(x).view(B, T, NH + 2 * NKV, HS)
        q, k, v = F.split(qkv, [NH, NKV, NKV], dim=2)                # (B, T, heads, HS)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q = F.rope(q, cos, sin, interleaved=self.rope_interleaved)
            k = F.rope(k, cos, sin, interleaved=self.rope_interleaved)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, HS)
        if cache is not None:
            ck, cv = cache
            ck[:, :, start_pos:start_pos + T] = k
            cv[:, :, start_pos:start_pos + T] = v
            k, v = ck[:, :, :start_pos + T], cv[:, :, :start_pos + T]
        # the queries are the last T of the S positions (T == S without a cache)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, causal_align="bottom_right")  # (B, NH, T, HS)
        return self.proj(y.transpose(1, 2).reshape(B, T, NH * HS))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype=None, device=None):
        super().__init__()
        self.kind, self.hidden = config.mlp, config.intermediate_size
        fc_out = self.hidden * (2 if self.kind == "swiglu" else 1)
        self.fc = nn.Linear(config.n_embd, fc_out, bias=config.bias, dtype=dtype, device=device)
        self.proj = nn.Linear(self.hidden, config.n_embd, bias=config.bias, dtype=dtype, device=device)

    def forward(self, x):
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = F.split(h, [self.hidden, self.hidden], dim=-1)
            h = F.swiglu(gate, up)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h)


def _norm(config: ModelConfig, dtype, device):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps, dtype=dtype, device=device)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias, dtype=dtype, device=device)


def _add_norm(norm, x, r):
    """(x + r, norm(x + r)) in one fused call, with norm's parameters."""
    if isinstance(norm, nn.RMSNorm):
        return F.add_rms_norm(x, r, norm.weight, norm.eps)
    return F.add_layer_norm(x, r, norm.weight, norm.bias, norm.eps)


def _moe(config: ModelConfig, dtype, device):
    c = config
    return MoE(c.n_embd, c.moe_intermediate_size, c.n_experts, c.top_k, c.moe_activation,
               c.n_shared_experts, c.routing, c.capacity_factor, c.bias_update_rate,
               dtype=dtype, device=device)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, dtype=None, device=None, moe=False):
        super().__init__()
        self.norm1 = _norm(config, dtype, device)
        self.attn = Attention(config, dtype, device)
        self.norm2 = _norm(config, dtype, device)
        self.mlp = _moe(config, dtype, device) if moe else MLP(config, dtype, device)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None, start_pos=0):
        x, h = _add_norm(self.norm2, x, self.drop(self.attn(self.norm1(x), rope, cache, start_pos)))
        return x + self.drop(self.mlp(h))


class Transformer(nn.Module):
    """Decoder-only Transformer built from a ModelConfig.

    forward(ids (B, T) int) -> logits (B, T, V); forward(ids, targets) -> (logits, mean
    cross-entropy over targets != -100). While training with gradients recorded, the loss writes
    the logits' gradient over the logits (F.cross_entropy(inplace_backward=True): no second
    (B*T, V) tensor), so forward(ids, targets) returns (None, loss) there; eval mode, no_grad, or
    loss_in_place = False keep the logits and return them. Parameters: wte, wpe (learned positions),
    blocks.N.{norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, norm2, mlp.fc, mlp.proj},
    norm_f, lm_head (the same tensor as wte when tied). In MoE layers (config.n_experts > 0)
    blocks.N.mlp is a models.moe.MoE: mlp.router, mlp.experts_fc, mlp.experts_proj,
    mlp.shared.{fc, proj}, buffer mlp.expert_bias (sigmoid_bias routing); while training, the
    loss with targets adds aux_loss_coef * aux_loss + z_loss_coef * z_loss of every MoE layer.
    The returned loss is the objective to optimise (with those terms, as Hugging Face's MoE
    models' outputs.loss holds theirs; their balancing term is pooled otherwise: models/hf.py);
    after each forward with targets last_ce_loss holds its cross-entropy
    and last_aux_loss the sum of the terms added (None when none was), both detached.
    """

    def __init__(self, config: ModelConfig, dtype=None, device=None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"Transformer: expected a ModelConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, dtype=dtype, device=device)
        if c.pos == "learned":
            self.wpe = nn.Embedding(c.block_size, c.n_embd, dtype=dtype, device=device)
        self.drop = nn.Dropout(c.dropout)
        moe_layers = set(c.moe_layer_indices())
        self.blocks = nn.ModuleList([Block(c, dtype, device, moe=i in moe_layers)
                                     for i in range(c.n_layer)])
        self.norm_f = _norm(c, dtype, device)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False, dtype=dtype, device=device)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._rope_cache = {}
        self.recompute = False  # per-block activation recomputation while training
        self.loss_in_place = True  # training loss: logits gradient written over the logits
        self.last_ce_loss, self._aux_terms = None, []  # the parts of the last loss (forward)
        self.reset_parameters()

    # ---- initialisation ----
    def reset_parameters(self):
        """GPT-2 initialisation: N(0, init_std) for matrices and embeddings, zero biases, unit
        norm weights, and residual output projections scaled by 1 / sqrt(2 n_layer)."""
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        with no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    init.zeros_(p)
                elif p.ndim == 1:
                    init.ones_(p)
                elif name.endswith(("attn.proj.weight", "mlp.proj.weight", "shared.proj.weight",
                                    "mlp.experts_proj")):
                    init.normal_(p, 0.0, resid_std)
                else:
                    init.normal_(p, 0.0, std)

    # ---- sizes ----
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters. exclude_embeddings=True leaves out the tables that are
        only looked up, never multiplied: the position table and, when untied, the token table."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if self.config.pos == "learned":
                n -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> int:
        """Training FLOPs per token at sequence length T (default block_size): 6 N for the
        matmuls of the parameters (forward 2N, backward 4N; N without lookup-only tables) plus
        12 L (NH HS) T for the attention scores and weighted sum, as in the PaLM paper and llm.c
        (which write C: NH HS unless head_dim says otherwise). In MoE layers only the k experts a
        token uses count (active parameters)."""
        T = self.config.block_size if T is None else T
        c = self.config
        n = self.num_parameters(exclude_embeddings=True)
        for moe in self.moe_modules():
            n -= (moe.n_experts - moe.top_k) * (moe.experts_fc.numel() + moe.experts_proj.numel()) \
                // moe.n_experts
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * T

    # ---- forward ----
    def _rope(self, start_pos, T, dtype, device):
        key = (dtype, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_tables(self.config, self.config.block_size)
            self._rope_cache[key] = (ls.tensor(cos, dtype=dtype, device=device),
                                     ls.tensor(sin, dtype=dtype, device=device))
        cos, sin = self._rope_cache[key]
        if start_pos == 0 and T == self.config.block_size:
            return cos, sin
        return cos[start_pos:start_pos + T], sin[start_pos:start_pos + T]

    def forward(self, ids, targets=None, kv_cache: KVCache | None = None, start_pos: int = 0):
        if not isinstance(ids, ls.Tensor) or ids.dtype not in (ls.int32, ls.int64) or ids.ndim != 2:
            raise TypeError("Transformer: ids must be an int32/int64 Tensor of shape (B, T), got "
                            + (f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, ls.Tensor)
                               else type(ids).__name__))
        # Checked here: a float or bool would otherwise fail deep inside (the position ids).
        if isinstance(start_pos, (bool, np.bool_)) or not isinstance(start_pos, (int, np.integer)):
            raise TypeError(f"Transformer: start_pos must be an int, got {type(start_pos).__name__}")
        start_pos = int(start_pos)
        if start_pos < 0:
            raise ValueError(f"Transformer: start_pos must be >= 0, got {start_pos}")
        B, T = ids.shape
        limit = self.config.block_size if kv_cache is None else kv_cache.max_len
        if T == 0 or start_pos + T > limit:
            raise ValueError(f"Transformer: positions {start_pos}..{start_pos + T - 1} do not fit "
                             f"the {'cache' if kv_cache is not None else 'block'} size {limit}")
        if kv_cache is not None:
            if kv_cache.k[0].shape[0] != B:
                raise ValueError(f"Transformer: the cache holds batch {kv_cache.k[0].shape[0]}, ids "
                                 f"have batch {B}")
            with no_grad():  # the cache is for inference: nothing is recorded
                return self._forward(ids, targets, kv_cache, start_pos)
        # Without a cache the ids sit at positions start_pos.. (Hugging Face's position_ids) and
        # attend causally among themselves only.
        return self._forward(ids, targets, None, start_pos)

    def _forward(self, ids, targets, kv_cache, start_pos):
        B, T = ids.shape
        c = self.config
        x = self.wte(ids)
        if c.pos == "learned":
            pos = ls.arange(start_pos, start_pos + T, device=ids.device)
            x = x + self.wpe(pos)
        x = self.drop(x)
        rope = self._rope(start_pos, T, x.dtype, x.device) if c.pos == "rope" else None
        for i, block in enumerate(self.blocks):
            # MoE blocks are not recomputed: their aux losses and load counts come from the
            # forward, which a replay in the backward would not feed into the loss.
            if kv_cache is None and self.recompute and self.training and not isinstance(block.mlp, MoE):
                x = checkpoint(block, x, rope)  # activations of the block rebuilt in the backward
                continue
            cache = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i])
            x = block(x, rope, cache, start_pos)
        logits = self.lm_head(self.norm_f(x))
        if c.logit_softcap is not None:
            cap = float(c.logit_softcap)
            logits = (logits * (1.0 / cap)).tanh() * cap
        if targets is None:
            return logits
        if tuple(targets.shape) != (B, T):
            raise ValueError(f"Transformer: targets must have the shape of ids {(B, T)}, got "
                             f"{tuple(targets.shape)}")
        # The logits are this forward's own (nothing saved them for a backward), so in training
        # the loss may overwrite them with their gradient; they are then not handed out.
        in_place = (self.loss_in_place and self.training and is_grad_enabled()
                    and logits.requires_grad)
        loss = F.cross_entropy(logits.reshape(B * T, c.vocab_size), targets.reshape(B * T),
                               inplace_backward=in_place)
        if in_place:
            logits = None
        # The parts of the loss, kept detached (no reference to the graph) for a training log:
        # the cross-entropy is what a validation loss compares with, the auxiliary terms are not.
        self.last_ce_loss, self._aux_terms = loss.detach(), []
        if self.training:
            for moe in self.moe_modules():
                for term, coef in ((moe.aux_loss, c.aux_loss_coef), (moe.z_loss, c.z_loss_coef)):
                    if coef:
                        term = term * float(coef)
                        loss = loss + term  # the objective, summed in the same order as always
                        self._aux_terms.append(term.detach())
        return logits, loss

    @property
    def last_aux_loss(self):
        """The auxiliary terms the last forward added to its loss, summed when asked (a log's
        business, not the training step's); None when it added none."""
        terms = self._aux_terms
        return sum(terms[1:], terms[0]) if terms else None

    # ---- mixture of experts ----
    def moe_modules(self) -> list:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def moe_update_bias(self):
        """After each optimizer step: the auxiliary-loss-free bias update of every MoE layer."""
        for moe in self.moe_modules():
            moe.update_bias()

    def moe_discard_load(self):
        """After a skipped step: its batches' expert loads update no bias (see MoE.discard_load)."""
        for moe in self.moe_modules():
            moe.discard_load()

    def moe_metrics(self) -> dict:
        """Routing metrics of the last forward, by block index (see MoE.metrics)."""
        return {str(i): b.mlp.metrics() for i, b in enumerate(self.blocks) if isinstance(b.mlp, MoE)}

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 use_cache=True, eos_token_id=None):
        """Sampled continuation of ids (see models.generate)."""
        from .generate import generate
        return generate(self, ids, max_new_tokens, temperature, top_k, top_p, use_cache, eos_token_id)

    def save_pretrained(self, path, dtype=None):
        """Write a Hugging Face folder (config.json + model.safetensors); see models.hf."""
        from .hf import save_pretrained
        save_pretrained(self, path, dtype=dtype)

    def extra_repr(self):
        return f"{self.num_parameters() / 1e6:.2f}M parameters"
