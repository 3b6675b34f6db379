"""Mixture-of-Experts MLP: E routed experts (GELU-tanh or SwiGLU), top-k routing with an fp32
router, optional shared experts that every token uses (DeepSeek-MoE), dropless or
capacity-bounded dispatch.

    logits = x @ router^T                     (N, E), float32 whatever the model dtype
    routing -> expert ids (N, k), gates (N, k)
      softmax_topk : p = softmax(logits); top-k of p, gates renormalised to sum 1 (Mixtral)
      topk_softmax : top-k of logits, gates = softmax over the k chosen logits
      sigmoid_bias : s = sigmoid(logits); experts chosen by top-k of s + bias (bias only selects,
                     it gets no gradient), gates = chosen s renormalised (DeepSeek-V3). After each
                     optimizer step update_bias() moves bias_e by rate * sign(mean load - load_e),
                     the auxiliary-loss-free balancing.
    dispatch: token, row, offsets, counts = moe_permute(ids); x_sorted = x[token]
    experts:  h = act(grouped_matmul(x_sorted, experts_fc, offsets))
              y = grouped_matmul(h, experts_proj, offsets)
    out = moe_combine(y, gates, row) (+ shared(x))

Expert weights are stored as experts_fc (E, C, H) (SwiGLU: (E, C, 2H) holding [gate | up]) and
experts_proj (E, H, C); experts have no biases (as Mixtral and DeepSeek).

Losses (tensors after each forward, added by the Transformer to its training loss):
  aux_loss = E * sum_i f_i P_i with f_i the fraction of the N*k assignments that chose expert i
             and P_i the mean router probability of i (Switch Transformer; 1 when balanced,
             whatever k). For sigmoid routing P uses the scores normalised per token.
  z_loss   = mean over tokens of logsumexp(logits)^2 (ST-MoE).
Capacity mode (capacity_factor set): in training each expert takes at most ceil(cf * N * k / E)
assignments; the dropped ones contribute nothing (the residual carries the token). In eval mode
dispatch is dropless whatever capacity_factor says, so a token's output does not depend on the
other tokens of the batch (one-token KV-cached decoding gives the full forward's logits).
"""
from __future__ import annotations

import math

import llmscratch as ls
from .. import functional as F
from .. import nn
from ..autograd import no_grad

__all__ = ["MoE", "ROUTINGS"]

ROUTINGS = ("softmax_topk", "topk_softmax", "sigmoid_bias")


class _SharedExperts(nn.Module):
    """n_shared experts that every token uses, as one dense MLP of hidden n_shared * H."""

    def __init__(self, n_embd, hidden, activation, dtype, device):
        super().__init__()
        self.activation, self.hidden = activation, hidden
        fc_out = hidden * (2 if activation == "swiglu" else 1)
        self.fc = nn.Linear(n_embd, fc_out, bias=False, dtype=dtype, device=device)
        self.proj = nn.Linear(hidden, n_embd, bias=False, dtype=dtype, device=device)

    def forward(self, x):
        return self.proj(_activate(self.fc(x), self.activation, self.hidden))


def _activate(h, activation, hidden):
    if activation == "swiglu":
        gate, up = F.split(h, [hidden, hidden], dim=-1)
        return F.swiglu(gate, up)
    return F.gelu(h, approximate="tanh")


def _router_dtype(dtype):
    """The router's dtype for a model of dtype: float32 at least (a bf16 router would round its
    logits and so the expert choice), float64 kept for float64 models (gradient checks)."""
    return ls.float64 if dtype == ls.float64 else ls.float32


class _Router(nn.Linear):
    """The router's Linear. A cast (Module.to, .double(), ...) gives it _router_dtype of the dtype
    the cast gives the model, converted once from its current values (a float32 router under a
    bfloat16 cast must not round through bfloat16), so a cast MoE routes as one built in that
    dtype."""

    def _apply(self, fn):
        w = self.weight
        probe = fn(ls.empty(0, dtype=w.dtype, device=w.device))  # where fn sends a tensor like w
        dtype, device = _router_dtype(probe.dtype), probe.device
        return super()._apply(lambda t: t.to(device=device, dtype=dtype))


class MoE(nn.Module):
    def __init__(self, n_embd, hidden, n_experts, top_k=2, activation="gelu", n_shared_experts=0,
                 routing="softmax_topk", capacity_factor=None, bias_update_rate=1e-3,
                 dtype=None, device=None):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"MoE: routing must be one of {ROUTINGS}, got {routing!r}")
        if activation not in ("gelu", "swiglu"):
            raise ValueError(f"MoE: activation must be 'gelu' or 'swiglu', got {activation!r}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoE: top_k must be in [1, n_experts={n_experts}], got {top_k}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"MoE: capacity_factor must be positive or None, got {capacity_factor!r}")
        self.n_embd, self.hidden, self.n_experts, self.top_k = n_embd, hidden, n_experts, top_k
        self.activation, self.routing = activation, routing
        self.capacity_factor, self.bias_update_rate = capacity_factor, bias_update_rate
        fc_out = hidden * (2 if activation == "swiglu" else 1)
        self.router = _Router(n_embd, n_experts, bias=False, dtype=_router_dtype(dtype), device=device)
        self.experts_fc = nn.Parameter(ls.empty(n_experts, n_embd, fc_out, dtype=dtype, device=device))
        self.experts_proj = nn.Parameter(ls.empty(n_experts, hidden, n_embd, dtype=dtype, device=device))
        nn.init.normal_(self.experts_fc, 0.0, 0.02)
        nn.init.normal_(self.experts_proj, 0.0, 0.02)
        if n_shared_experts:
            self.shared = _SharedExperts(n_embd, n_shared_experts * hidden, activation, dtype, device)
        else:
            self.shared = None
        if routing == "sigmoid_bias":
            self.register_buffer("expert_bias", ls.zeros(n_experts, dtype=ls.float32, device=device))
        self._load = None  # assignments per expert since the last update_bias (float32 (E,))
        self.aux_loss = self.z_loss = None
        self._stats = None

    @property
    def router_dtype(self):
        """The dtype routing runs in: the router weight's (kept by _Router through casts)."""
        return self.router.weight.dtype

    def _apply(self, fn):
        """As Module._apply, but expert_bias keeps float32 under a cast and follows the device
        only: its 1e-3 updates would vanish in bfloat16 once |bias| reaches 0.5."""
        bias = self._buffers.get("expert_bias")
        super()._apply(fn)
        if bias is not None:
            self._buffers["expert_bias"] = bias.to(device=self.experts_fc.device)
        return self

    # ---- routing ----
    def route(self, logits):
        """(expert ids (N, k) int64, gates (N, k), probs (N, E) for the aux loss)."""
        k = self.top_k
        if self.routing == "softmax_topk":
            probs = F.softmax(logits, -1)
            vals, ids = F.topk(probs, k)
            gates = vals / vals.sum(-1, keepdim=True)
        elif self.routing == "topk_softmax":
            probs = F.softmax(logits, -1)
            vals, ids = F.topk(logits, k)
            gates = F.softmax(vals, -1)
        else:
            scores = logits.sigmoid()
            with no_grad():
                _, ids = F.topk(scores.detach() + self.expert_bias.to(dtype=scores.dtype), k)
            chosen = F.gather(scores, 1, ids)
            gates = chosen / chosen.sum(-1, keepdim=True)
            probs = scores / scores.sum(-1, keepdim=True)
        return ids, gates, probs

    def capacity(self, n_tokens):
        if self.capacity_factor is None:
            return None
        return int(math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def forward(self, x):
        shape = list(x.shape)
        C, E, k = self.n_embd, self.n_experts, self.top_k
        xf = x.reshape(-1, C)
        N = xf.shape[0]
        rd = self.router_dtype
        logits = F.linear(xf.to(dtype=rd), self.router.weight.to(dtype=rd))  # (N, E) fp32 or fp64
        ids, gates, probs = self.route(logits)
        # the capacity bounds training work only: at inference nothing is dropped (module docstring)
        capacity = self.capacity(N) if self.training else None
        token, row, offsets, counts = F.moe_permute(ids, E, capacity)
        xs = F.index_select(xf, 0, token)                                   # (N*k, C)
        h = _activate(F.grouped_matmul(xs, self.experts_fc, offsets), self.activation, self.hidden)
        y = F.grouped_matmul(h, self.experts_proj, offsets)                 # (N*k, C)
        out = F.moe_combine(y, gates.to(dtype=y.dtype), row)                # (N, C)
        if self.shared is not None:
            out = out + self.shared(xf)
        # Balancing terms. f is a count (no gradient); P carries the router's gradient.
        with no_grad():
            load = counts.to(dtype=probs.dtype)
            f = load * (1.0 / (N * k))
        self.aux_loss = (f * probs.mean(0)).sum() * float(E)
        lse = logits[:, 0] - F.log_softmax(logits, -1)[:, 0]
        self.z_loss = (lse * lse).mean()
        self._stats = (counts, offsets, N * k)
        if self.training and self.routing == "sigmoid_bias":
            self._load = load if self._load is None else self._load + load
        return out.reshape(shape)

    # ---- balancing and metrics ----
    @no_grad()
    def update_bias(self):
        """DeepSeek-V3's auxiliary-loss-free step: bias_e += rate * sign(mean load - load_e),
        from the load seen since the last call (all micro-batches of the step)."""
        if self.routing != "sigmoid_bias" or self._load is None:
            return
        load = self._load
        self._load = None
        delta = (load.mean() - load).sign() * float(self.bias_update_rate)
        self.expert_bias.copy_(self.expert_bias + delta.to(dtype=self.expert_bias.dtype))

    def discard_load(self):
        """Forget the load counted since the last update_bias (a skipped step's batches)."""
        self._load = None

    def metrics(self) -> dict:
        """The last forward's routing: tokens per expert (load before dropping), max/mean load,
        aux loss, z-loss, dropped fraction (reads values to the host)."""
        if self._stats is None:
            return {}
        counts, offsets, n_assign = self._stats
        # One device-to-host copy for all of them (the trainer logs these every step).
        parts = [counts, offsets[-1:], self.aux_loss.detach().reshape(1), self.z_loss.detach().reshape(1)]
        host = ls.cat([t.to(dtype=ls.float64) for t in parts]).cpu().numpy()
        E = counts.shape[0]
        c = [int(v) for v in host[:E]]
        kept, aux, z = int(host[E]), float(host[E + 1]), float(host[E + 2])
        mean = sum(c) / len(c)
        return {"tokens_per_expert": c, "max_mean_load": max(c) / mean if mean else 0.0,
                "aux_loss": aux, "z_loss": z,
                "dropped_fraction": 1.0 - kept / n_assign if n_assign else 0.0}

    def extra_repr(self):
        return (f"experts={self.n_experts}, top_k={self.top_k}, hidden={self.hidden}, "
                f"activation={self.activation}, routing={self.routing}, "
                f"capacity_factor={self.capacity_factor}")
