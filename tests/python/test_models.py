"""llmscratch.models: the Transformer against a PyTorch reference of the same architecture
(logits, loss, every gradient, a 10-step AdamW trajectory), KV-cached decoding, Hugging Face
folders both ways, configs, presets and TOML files."""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.models as M
from conftest import rel_err, to_np, torch

tnn, tF = torch.nn, torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reference models are tiny: one thread avoids OpenMP barriers that cost milliseconds
    per op on a busy two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the PyTorch reference, written from the paper/HF definitions ------------------------------

def _ref_rope_angles(c, T):
    HS = c.head_size
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
    rs = c.rope_scaling
    if rs is not None and rs["type"] == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif rs is not None and rs["type"] == "llama3":  # as in transformers' _compute_llama3_parameters
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        out = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        inv_freq = torch.where(medium, smoothed, out)
    return torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)   # (T, HS/2)


def _ref_apply_rope(x, angles, interleaved):
    """x (B, H, T, HS); rotate pairs (i, i + HS/2) or (2i, 2i + 1) by angles (T, HS/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class RefBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        Norm = (lambda: tnn.RMSNorm(c.n_embd, eps=c.norm_eps)) if c.norm == "rmsnorm" else (
            lambda: tnn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias))
        self.norm1, self.norm2 = Norm(), Norm()
        HS = c.head_size
        self.attn = tnn.Module()
        self.attn.qkv = tnn.Linear(c.n_embd, (c.n_head + 2 * c.n_kv_head) * HS, bias=c.bias)
        self.attn.proj = tnn.Linear(c.n_head * HS, c.n_embd, bias=c.bias)
        if c.qk_norm:
            self.attn.q_norm = tnn.RMSNorm(HS, eps=c.norm_eps)
            self.attn.k_norm = tnn.RMSNorm(HS, eps=c.norm_eps)
        self.mlp = tnn.Module()
        I = c.intermediate_size
        self.mlp.fc = tnn.Linear(c.n_embd, I * (2 if c.mlp == "swiglu" else 1), bias=c.bias)
        self.mlp.proj = tnn.Linear(I, c.n_embd, bias=c.bias)

    def forward(self, x, angles):
        c, (B, T, _) = self.c, x.shape
        NH, NKV, HS = c.n_head, c.n_kv_head, c.head_size
        h = self.norm1(x)
        q, k, v = self.attn.qkv(h).split([NH * HS, NKV * HS, NKV * HS], dim=-1)
        q = q.view(B, T, NH, HS).transpose(1, 2)
        k = k.view(B, T, NKV, HS).transpose(1, 2)
        v = v.view(B, T, NKV, HS).transpose(1, 2)
        if c.qk_norm:
            q, k = self.attn.q_norm(q), self.attn.k_norm(k)
        if angles is not None:
            q = _ref_apply_rope(q, angles, c.rope_interleaved)
            k = _ref_apply_rope(k, angles, c.rope_interleaved)
        k = k.repeat_interleave(NH // NKV, dim=1)
        v = v.repeat_interleave(NH // NKV, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = att.softmax(-1) @ v
        x = x + self.attn.proj(y.transpose(1, 2).reshape(B, T, NH * HS))
        h = self.mlp.fc(self.norm2(x))
        if c.mlp == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = tF.silu(gate) * up
        else:
            h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        return x + self.mlp.proj(h)


class RefTransformer(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wte = tnn.Embedding(c.vocab_size, c.n_embd)
        if c.pos == "learned":
            self.wpe = tnn.Embedding(c.block_size, c.n_embd)
        self.blocks = tnn.ModuleList([RefBlock(c) for _ in range(c.n_layer)])
        self.norm_f = (tnn.RMSNorm(c.n_embd, eps=c.norm_eps) if c.norm == "rmsnorm"
                       else tnn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias))
        self.lm_head = tnn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, ids, targets=None, start_pos=0):
        """start_pos: the ids sit at positions start_pos.. (Hugging Face's position_ids)."""
        c, T = self.c, ids.shape[1]
        x = self.wte(ids)
        if c.pos == "learned":
            x = x + self.wpe(torch.arange(start_pos, start_pos + T))
        angles = _ref_rope_angles(c, start_pos + T)[start_pos:] if c.pos == "rope" else None
        for b in self.blocks:
            x = b(x, angles)
        logits = self.lm_head(self.norm_f(x))
        if c.logit_softcap is not None:
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
        if targets is None:
            return logits
        return logits, tF.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


# ---- configurations under test -----------------------------------------------------------------

def _gpt2(**kw):
    return M.ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=16), **kw})


def _llama(**kw):
    base = dict(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16,
                norm="rmsnorm", mlp="swiglu", intermediate_size=40, bias=False,
                tie_embeddings=False, pos="rope", rope_theta=500.0, norm_eps=1e-6)
    return M.ModelConfig(**{**base, **kw})


CONFIGS = {
    "gpt2": _gpt2(),
    "llama_gqa": _llama(),
    "llama_qknorm_softcap_linear_rope": _llama(qk_norm=True, logit_softcap=3.0,
                                               rope_scaling={"type": "linear", "factor": 2.0}),
    "mixed_mqa_interleaved_llama3": _llama(
        n_kv_head=1, norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
        rope_interleaved=True, rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8}),
    "gpt2_untied_nobias": _gpt2(tie_embeddings=False, bias=False, n_head=2),
    # Heads wider than n_embd / n_head, as Qwen3's: q, k, v of 4 x 12 = 48 channels over C = 32.
    "qwen3_style_head_dim": _llama(head_dim=12, qk_norm=True),
}

_rng = np.random.default_rng()


def _randomise(model):
    """Non-trivial weights (the default init leaves norms at 1 and biases at 0)."""
    with ls.no_grad():
        for name, p in model.named_parameters():
            arr = _rng.standard_normal(tuple(p.shape)) * (0.3 if p.ndim == 2 else 0.2)
            if p.ndim == 1 and "weight" in name:
                arr += 1.0
            p.copy_(ls.tensor(arr, dtype=p.dtype))


def _pair(config, dtype):
    """Our model (random weights) and the torch reference holding the same values."""
    ls_dtype, t_dtype = {np.float64: (ls.float64, torch.float64),
                         np.float32: (ls.float32, torch.float32)}[dtype]
    ours = M.Transformer(config, dtype=ls_dtype)
    _randomise(ours)
    ref = RefTransformer(config).to(t_dtype)
    state = {k: torch.tensor(to_np(v)) for k, v in ours.state_dict().items()}
    ref.load_state_dict(state, strict=True)
    return ours, ref


def _batch(config, B=2, T=None):
    T = T or config.block_size
    ids = _rng.integers(0, config.vocab_size, size=(B, T))
    targets = _rng.integers(0, config.vocab_size, size=(B, T))
    targets[0, 3] = -100  # ignored position
    return ids, targets


@pytest.mark.parametrize("in_place", [True, False], ids=["loss_in_place", "plain_loss"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_golden_logits_loss_and_gradients(name, dtype, in_place):
    config = CONFIGS[name]
    tol = 1e-8 if dtype == np.float64 else 1e-4
    ours, ref = _pair(config, dtype)
    ours.loss_in_place = in_place
    ids, targets = _batch(config)
    logits, loss = ours(ls.tensor(ids), ls.tensor(targets))
    loss.backward()
    if in_place:  # the logits' memory held their gradient: the forward hands out none
        assert logits is None
        with ls.no_grad():
            logits = ours(ls.tensor(ids))
    ref_logits, ref_loss = ref(torch.tensor(ids), torch.tensor(targets))
    ref_loss.backward()
    assert tuple(logits.shape) == (2, config.block_size, config.vocab_size)
    assert rel_err(logits, ref_logits) < tol
    assert abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()) < tol
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert sorted(names) == sorted(ref_params)
    for n, p in ours.named_parameters():
        assert p.grad is not None, n
        err = rel_err(p.grad, ref_params[n].grad)
        assert err < tol, f"gradient of {n}: relative error {err:.3e}"


@pytest.mark.parametrize("name", ["gpt2", "llama_qknorm_softcap_linear_rope"])
def test_adamw_trajectory_matches_torch(name):
    config = CONFIGS[name]
    ours, ref = _pair(config, np.float64)
    opt = ls.optim.AdamW(ours.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batches = [_batch(config, B=2, T=12)] * 10   # one batch: the loss must go down
    losses, ref_losses = [], []
    for ids, targets in batches:
        opt.zero_grad()
        _, loss = ours(ls.tensor(ids), ls.tensor(targets))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        ref_opt.zero_grad()
        _, ref_loss = ref(torch.tensor(ids), torch.tensor(targets))
        ref_loss.backward()
        ref_opt.step()
        ref_losses.append(ref_loss.item())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-8)
    assert losses[-1] < losses[0]


# ---- KV-cached decoding ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama_qknorm_softcap_linear_rope",
                                  "mixed_mqa_interleaved_llama3", "qwen3_style_head_dim"])
def test_kv_cache_decoding_matches_full_forward(name):
    config = CONFIGS[name]
    model = M.Transformer(config, dtype=ls.float64)
    _randomise(model)
    ids = ls.tensor(_rng.integers(0, config.vocab_size, size=(2, config.block_size)))
    with ls.no_grad():
        full = to_np(model(ids))
    cache = model.new_kv_cache(batch_size=2)
    steps = [to_np(model(ids[:, :5], kv_cache=cache))]           # the prompt at once
    for t in range(5, config.block_size):                         # then one token at a time
        steps.append(to_np(model(ids[:, t:t + 1], kv_cache=cache, start_pos=t)))
    assert ls.is_grad_enabled()
    assert rel_err(np.concatenate(steps, axis=1), full) < 1e-12
    with pytest.raises(ValueError, match="do not fit"):
        model(ids[:, :2], kv_cache=cache, start_pos=config.block_size - 1)


@pytest.mark.parametrize("name", ["gpt2", "mixed_mqa_interleaved_llama3"])
def test_start_pos_without_cache_shifts_the_positions(name, monkeypatch):
    """Without a cache, start_pos places the ids at positions start_pos.. and they attend among
    themselves only (not the KV-cache path after a prefix, which would attend to the prefix too).
    RoPE attention depends on relative positions only, so its logits barely move: the RoPE
    tables the attention receives are checked too."""
    config = CONFIGS[name]
    ours, ref = _pair(config, np.float64)
    s, T = 5, config.block_size - 7
    ids = _rng.integers(0, config.vocab_size, size=(2, T))
    tables, rope = [], F.rope

    def spy(x, cos, sin, **kw):
        tables.append(to_np(cos))
        return rope(x, cos, sin, **kw)
    monkeypatch.setattr(F, "rope", spy)
    with ls.no_grad():
        out = to_np(ours(ls.tensor(ids), start_pos=s))
    with torch.no_grad():
        want = ref(torch.tensor(ids), start_pos=s).numpy()
    assert rel_err(out, want) < 1e-12
    if config.pos == "learned":  # the shift shows in the logits
        assert rel_err(out, ref(torch.tensor(ids)).detach().numpy()) > 1e-3
    else:
        angles = _ref_rope_angles(config, s + T)[s:].numpy()
        assert tables and all(np.allclose(t, np.cos(angles), rtol=0, atol=1e-15) for t in tables)


def test_start_pos_must_be_a_non_negative_int():
    config = CONFIGS["gpt2"]
    model = M.Transformer(config, dtype=ls.float64)
    ids = ls.tensor(_rng.integers(0, config.vocab_size, size=(1, 4)))
    for bad in (2.0, True, np.bool_(True), "2", None):
        with pytest.raises(TypeError, match="start_pos must be an int"):
            model(ids, start_pos=bad)
    with pytest.raises(ValueError, match="start_pos must be >= 0"):
        model(ids, start_pos=-1)
    with ls.no_grad():
        np.testing.assert_array_equal(to_np(model(ids, start_pos=np.int64(2))),
                                      to_np(model(ids, start_pos=2)))


# ---- model API ---------------------------------------------------------------------------------

def test_training_loss_in_place_returns_no_logits():
    """While training with gradients the loss writes the logits' gradient over them: forward
    hands out None for the logits, and the parameter gradients (here of a scaled loss, as in
    gradient accumulation) equal those of the plain loss. Eval mode and no_grad keep the logits."""
    config = M.get_preset("tiny", vocab_size=61, n_layer=1, block_size=16)
    model = M.Transformer(config, dtype=ls.float64)
    ids, targets = (ls.tensor(a) for a in _batch(config, B=2, T=9))
    grads = []
    for in_place in (True, False):
        model.loss_in_place = in_place
        model.zero_grad()
        logits, loss = model(ids, targets)
        assert (logits is None) == in_place
        (loss * 0.25).backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert rel_err(grads[0][n], grads[1][n]) < 1e-12, n
    model.loss_in_place = True
    with ls.no_grad():
        logits, loss = model(ids, targets)
    assert tuple(logits.shape) == (2, 9, 61)
    model.eval()
    logits, loss = model(ids, targets)
    assert tuple(logits.shape) == (2, 9, 61)
    assert abs(F.cross_entropy(logits.reshape(18, 61), targets.reshape(18)).item() - loss.item()) < 1e-12


def test_forward_shapes_errors_and_sizes():
    config = M.get_preset("tiny", vocab_size=64, n_layer=2, block_size=32)
    model = M.Transformer(config)
    ids = ls.randint(0, 64, (3, 7))
    assert tuple(model(ids).shape) == (3, 7, 64)
    logits, loss = model(ids, ls.randint(0, 64, (3, 7)))
    assert abs(loss.item() - math.log(64)) < 0.5   # initialisation gives near-uniform predictions
    with pytest.raises(TypeError, match=r"\(B, T\)"):
        model(ls.zeros(3, 7))
    with pytest.raises(ValueError, match="block size 32"):
        model(ls.randint(0, 64, (1, 33)))
    with pytest.raises(ValueError, match="targets"):
        model(ids, ls.randint(0, 64, (3, 6)))
    assert model.num_parameters() == config.num_parameters()
    assert model.lm_head.weight._impl_id() == model.wte.weight._impl_id()   # tied
    n_matmul = model.num_parameters() - 32 * config.n_embd                # minus the wpe table
    assert model.num_parameters(exclude_embeddings=True) == n_matmul
    assert model.flops_per_token(32) == 6 * n_matmul + 12 * 2 * config.n_embd * 32


def test_head_dim_sizes_the_attention_alone():
    config = _llama(head_dim=12)
    model = M.Transformer(config)
    attn = model.blocks[0].attn
    assert tuple(attn.qkv.weight.shape) == ((4 + 2 * 2) * 12, 32)
    assert tuple(attn.proj.weight.shape) == (32, 4 * 12)
    assert tuple(model.wte.weight.shape) == (97, 32)
    assert tuple(model.new_kv_cache(1).k[0].shape) == (1, 2, 16, 12)
    assert model.num_parameters() == config.num_parameters()
    # the attention scores and weighted sum run over NH x HS = 48 channels, not n_embd = 32
    n = model.num_parameters(exclude_embeddings=True)
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 48 * 16


def test_dropout_is_active_in_training_only():
    model = M.Transformer(_gpt2(dropout=0.5))
    ids = ls.randint(0, 97, (1, 8))
    a, b = to_np(model(ids)), to_np(model(ids))
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(to_np(model(ids)), to_np(model(ids)))


# ---- configs, presets, TOML --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(mlp="relu"), "mlp must be one of"),
    (dict(pos="alibi"), "pos must be one of"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(n_layer=2.5), "n_layer must be a positive integer"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(logit_softcap=-1.0), "logit_softcap must be a positive number"),
    (dict(bias="yes"), "bias must be true or false"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "pos is not 'rope'"),
    (dict(pos="rope", rope_scaling={"type": "ntk", "factor": 2.0}), "rope_scaling type"),
    (dict(pos="rope", rope_scaling={"type": "linear"}), r"needs \['factor'\]"),
    (dict(pos="rope", n_embd=12, n_head=4), "even head size"),
    (dict(pos="rope", head_dim=7), "even head size, got 7"),
    (dict(head_dim=0), "head_dim must be a positive integer"),
    (dict(head_dim=16.0), "head_dim must be a positive integer"),
    (dict(head_dim=True), "head_dim must be a positive integer"),
    (dict(rope_theta=0), "rope_theta must be a positive number"),
    (dict(pos="rope", rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
     "low_freq_factor .* must be below high_freq_factor"),  # the ramp divided by zero
    (dict(n_experts=4, top_k=2, n_shared_experts=True), "n_shared_experts must be a non-negative integer"),
])
def test_config_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.ModelConfig(**kwargs)


def test_rope_type_comes_before_type_as_in_transformers():
    rs = {"type": "linear", "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    assert M.ModelConfig(pos="rope", rope_scaling=rs).rope_scaling_type == "llama3"


def test_head_dim_is_optional_in_saved_configs():
    config = _llama(n_embd=30, n_head=4, head_dim=16)  # 4 heads need not divide n_embd then
    assert config.head_size == 16
    assert M.config_from_dict(config.to_dict()) == config
    assert _llama().head_dim is None and _llama().head_size == 8
    old = {k: v for k, v in _llama().to_dict().items() if k != "head_dim"}  # a run saved before
    assert M.config_from_dict(old) == _llama()


def test_presets():
    # Known sizes of the published models (GPT-2 small and medium, tied head).
    assert M.get_preset("gpt2-124m").num_parameters() == 124_439_808
    assert M.get_preset("gpt2-350m").num_parameters() == 354_823_168
    assert 120e6 < M.get_preset("llama-style-124m").num_parameters() < 130e6
    assert 1e6 < M.get_preset("tiny").num_parameters() < 10e6
    llama = M.get_preset("llama-style-124m")
    assert (llama.n_kv_head, llama.pos, llama.norm, llama.mlp, llama.tie_embeddings) == (
        4, "rope", "rmsnorm", "swiglu", False)
    for name in M.PRESETS:  # the analytic count equals the built model's, on shrunk copies
        config = M.get_preset(name, vocab_size=50, n_layer=1, block_size=16)
        assert M.Transformer(config).num_parameters() == config.num_parameters()
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
        M.get_preset("gpt5")


def test_toml_loading(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('preset = "llama-style-124m"\nn_layer = 2\nvocab_size = 512\n'
                    'rope_scaling = { type = "linear", factor = 4.0 }\n')
    config = M.load_config(path)
    assert (config.n_layer, config.vocab_size, config.n_kv_head) == (2, 512, 4)
    assert config.rope_scaling == {"type": "linear", "factor": 4.0}
    path.write_text('[model]\nn_layer = 3\nn_embd = 64\nn_head = 2\n\n[train]\nlr = 1e-3\n')
    config = M.load_config(path)
    assert (config.n_layer, config.n_embd, config.intermediate_size) == (3, 64, 256)
    assert isinstance(M.build_model(str(path)), M.Transformer)
    path.write_text('n_layr = 8\n[model]\npreset = "tiny"\nn_layer = 2\n')  # a key above [model]
    with pytest.raises(ValueError, match="n_layr outside the \\[model\\] table"):
        M.load_config(path)
    path.write_text('n_layers = 3\n')
    with pytest.raises(ValueError, match=r"unknown model config keys \['n_layers'\]"):
        M.load_config(path)
    path.write_text('n_layer = 3\nnorm = "groupnorm"\n')
    with pytest.raises(ValueError, match="norm must be one of"):
        M.load_config(path)
    path.write_text('n_layer = \n')
    with pytest.raises(ValueError, match="not valid TOML"):
        M.load_config(path)
    with pytest.raises(ValueError, match="does not exist"):
        M.load_config(tmp_path / "missing.toml")


# ---- Hugging Face folders ----------------------------------------------------------------------

def _hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(torch.tensor(ids)).logits.numpy()


def _hf_models():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2Config(vocab_size=101, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                   initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    llama = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24,
                 rope_theta=1000.0, initializer_range=0.2, tie_word_embeddings=False,
                 bos_token_id=None, eos_token_id=None)
    qwen3 = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 max_position_embeddings=24, initializer_range=0.2, tie_word_embeddings=True)
    Llama, Qwen3 = transformers.LlamaForCausalLM, transformers.Qwen3ForCausalLM
    return {"gpt2": (transformers.GPT2LMHeadModel, gpt2),
            "llama": (Llama, transformers.LlamaConfig(**llama)),
            "qwen3": (Qwen3, transformers.Qwen3Config(**qwen3)),
            # head_dim x heads != hidden_size: wider heads, as Qwen3-0.6B's 16 x 128 over 1024,
            # and narrower ones
            "qwen3_head_dim": (Qwen3, transformers.Qwen3Config(**{**qwen3, "head_dim": 16})),
            "llama_head_dim": (Llama, transformers.LlamaConfig(**llama, head_dim=6))}


def _randomise_torch(model):
    with torch.no_grad():   # norms and biases away from 1 and 0 as well
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3", "qwen3_head_dim", "llama_head_dim"])
def test_hf_round_trip(family, tmp_path):
    cls, hf_config = _hf_models()[family]
    torch.manual_seed(0)
    hf_model = cls(hf_config).eval()
    _randomise_torch(hf_model)
    hf_model.save_pretrained(tmp_path / "theirs")
    ids = _rng.integers(0, 101, size=(2, 24))
    expected = _hf_logits(hf_model, ids)

    if family == "gpt2":  # GPT2Config's attn_pdrop 0.1: named, as llmscratch has no attention dropout
        with pytest.warns(UserWarning, match="none on the attention weights"):
            ours = M.from_pretrained(tmp_path / "theirs")
    else:
        ours = M.from_pretrained(tmp_path / "theirs")
    assert not ours.training
    assert ours.config.pos == ("learned" if family == "gpt2" else "rope")
    assert ours.config.qk_norm == family.startswith("qwen3")
    assert ours.config.head_size == getattr(hf_config, "head_dim", 8)
    with ls.no_grad():
        got = to_np(ours(ls.tensor(ids)))
    assert rel_err(got, expected) < 1e-4

    ours.save_pretrained(tmp_path / "ours")
    back = cls.from_pretrained(tmp_path / "ours").eval()
    assert rel_err(_hf_logits(back, ids), expected) < 1e-4
    again = M.from_pretrained(tmp_path / "ours")
    for (n, p), (_, q) in zip(ours.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=n)


def test_hf_llama_with_rope_scaling_and_bfloat16(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=True,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():   # weights that bfloat16 holds exactly
        for p in hf_model.parameters():
            p.copy_(p.bfloat16().float())
    ids = _rng.integers(0, 64, size=(1, 32))
    expected = _hf_logits(hf_model, ids)
    # (the rotary buffers of a model cast to bfloat16 lose digits: cast only for saving)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ours = M.from_pretrained(tmp_path / "bf16")
    assert ours.config.rope_scaling == {"type": "linear", "factor": 2.0}
    assert ours.config.tie_embeddings
    assert rel_err(to_np(ours(ls.tensor(ids))), expected) < 1e-4
    ours.save_pretrained(tmp_path / "ours")   # float32, rope_scaling written back
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert back.config.tie_word_embeddings
    assert rel_err(_hf_logits(back, ids), expected) < 1e-4


def test_save_pretrained_rejects_what_hf_cannot_hold(tmp_path):
    for config in (CONFIGS["llama_qknorm_softcap_linear_rope"],
                   CONFIGS["mixed_mqa_interleaved_llama3"], _gpt2(qk_norm=True),
                   _llama(qk_norm=True, bias=True), _gpt2(head_dim=16)):
        with pytest.raises(ValueError, match="save_pretrained"):
            M.Transformer(config).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.from_pretrained(tmp_path / "nothing")


def test_hf_head_dim_reads_as_transformers_does():
    from llmscratch.models.hf import hf_config_to_model_config
    base = dict(vocab_size=10, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                num_attention_heads=4)

    def head_dim(**kw):
        c = hf_config_to_model_config({**base, **kw})
        return c.head_dim, c.head_size

    assert head_dim(model_type="llama") == (None, 8)
    assert head_dim(model_type="llama", head_dim=8) == (None, 8)  # the default stays implicit
    assert head_dim(model_type="mixtral", head_dim=16, num_local_experts=2,
                    num_experts_per_tok=1) == (16, 16)
    assert head_dim(model_type="qwen3") == (128, 128)  # Qwen3Config's default, not 32 / 4
    assert head_dim(model_type="qwen3", head_dim=None) == (None, 8)


def test_from_pretrained_rejects_missing_and_unused_tensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    load_file, save_file = st.load_file, st.save_file
    model = M.Transformer(_gpt2())
    model.save_pretrained(tmp_path)
    again = M.from_pretrained(tmp_path)   # our own folder reads back without transformers
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=n)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({**tensors, "transformer.h.0.attn.rotary.weight": np.zeros(4, np.float32)}, str(weights))
    with pytest.raises(ValueError, match=r"does not use: \['transformer.h.0.attn.rotary.weight'\]"):
        M.from_pretrained(tmp_path)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="lacks tensor 'h.1.mlp.c_fc.bias'"):
        M.from_pretrained(tmp_path)


def test_from_pretrained_unties_a_head_that_differs_and_checks_each_piece(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    load_file, save_file = st.load_file, st.save_file
    model = M.Transformer(_gpt2())
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    head = np.random.default_rng(0).standard_normal(tensors["transformer.wte.weight"].shape).astype(np.float32)
    # a tied config whose file holds a head of its own: kept, untied, as transformers does (the
    # head had been dropped for the embedding table)
    save_file({**tensors, "lm_head.weight": head}, str(weights))
    again = M.from_pretrained(tmp_path)
    assert not again.config.tie_embeddings
    np.testing.assert_array_equal(to_np(again.lm_head.weight), head)
    np.testing.assert_array_equal(to_np(again.wte.weight), tensors["transformer.wte.weight"])
    save_file({**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}, str(weights))
    assert M.from_pretrained(tmp_path).config.tie_embeddings  # the same values: still tied
    # a piece of a concatenation with the wrong shape (gate and up split 60 / 68 instead of 64 / 64)
    llama = M.Transformer(_llama())
    folder = tmp_path / "llama"
    llama.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    gate, up = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
    both = np.concatenate([tensors[gate], tensors[up]])
    I = tensors[gate].shape[0]
    tensors[gate], tensors[up] = both[:I - 4], both[I - 4:]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=f"tensor '{gate}' has shape \\({I - 4}, "):
        M.from_pretrained(folder)


# ---- sampling ----------------------------------------------------------------------------------

def test_sample_next_rules():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    np.testing.assert_array_equal(M.sample_next(logits, temperature=0), [3, 0])
    np.testing.assert_array_equal(M.sample_next(logits, top_k=1), [3, 0])
    np.testing.assert_array_equal(M.sample_next(logits, top_p=0.3), [3, 0])
    # inverse cdf: u = 0.25 falls in id 1 of [0.1, 0.3, 0.6, 1.0]
    np.testing.assert_array_equal(M.sample_next(logits, uniform=np.array([0.25, 0.25])), [1, 0])
    # top_k=2 keeps ids 2, 3 (0.3, 0.4 -> 3/7, 4/7): u = 0.5 picks id 3
    np.testing.assert_array_equal(M.sample_next(logits, top_k=2, uniform=np.array([0.5, 0.999])), [3, 1])
    # top_p=0.6 keeps 0.4 and 0.3 (0.4 alone is short of 0.6)
    np.testing.assert_array_equal(M.sample_next(logits, top_p=0.6, uniform=np.array([0.0, 0.9999])), [2, 1])
    draws = np.stack([M.sample_next(logits) for _ in range(400)])
    assert set(draws[:, 0]) == {0, 1, 2, 3} and abs((draws[:, 0] == 3).mean() - 0.4) < 0.1
    for bad, message in ((dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"),
                         (dict(top_p=0.0), "top_p"), (dict(temperature=float("nan")), "temperature"),
                         (dict(temperature=0, top_k=True), "top_k"), (dict(top_p=True), "top_p"),
                         (dict(uniform=np.array([0.5, 1.0])), "uniform"),
                         (dict(uniform=np.array([0.5])), "uniform")):
        with pytest.raises(ValueError, match=message):
            M.sample_next(logits, **bad)


def test_generate_checks_its_prompt_and_settings():
    model = M.Transformer(CONFIGS["gpt2"])
    for bad in ([1, 2, 3], np.zeros((2, 0), np.int64), np.array([[1.5, 2.7]])):
        with pytest.raises(ValueError, match="integer ids with T0 >= 1"):
            model.generate(bad, 2)
    assert to_np(model.generate([[1, 2]], 2, temperature=0)).shape == (1, 4)  # nested lists work
    with pytest.raises(ValueError, match="temperature"):  # checked even when nothing is sampled
        model.generate(np.array([[1, 2]]), 0, temperature=-1)


@pytest.mark.parametrize("name", ["gpt2", "llama_qknorm_softcap_linear_rope"])
def test_generate_with_cache_gives_the_tokens_of_full_recomputation(name):
    config = CONFIGS[name]
    model = M.Transformer(config)
    _randomise(model)
    prompt = ls.tensor(_rng.integers(0, config.vocab_size, size=(2, 4)))
    runs = []
    for use_cache in (True, False):
        ls.manual_seed(1234)
        runs.append(to_np(model.generate(prompt, 12, temperature=1.0, top_k=40, top_p=0.95,
                                         use_cache=use_cache)))
    assert runs[0].shape == (2, 16)
    np.testing.assert_array_equal(runs[0][:, :4], to_np(prompt))
    np.testing.assert_array_equal(runs[0], runs[1])
    greedy = to_np(model.generate(prompt, 12, temperature=0))
    with ls.no_grad():   # greedy: each new id is the argmax of the full forward at its position
        logits = to_np(model(ls.tensor(greedy[:, :-1])))
    np.testing.assert_array_equal(greedy[:, 4:], logits[:, 3:].argmax(-1))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.generate(prompt, config.block_size)


def test_from_pretrained_reads_the_original_gpt2_layout(tmp_path):
    """The published gpt2 files have no 'transformer.' prefix and carry the causal-mask buffers
    h.N.attn.bias / h.N.attn.masked_bias."""
    st = pytest.importorskip("safetensors.numpy")
    model = M.Transformer(_gpt2())
    _randomise(model)
    model.save_pretrained(tmp_path)
    weights = str(tmp_path / "model.safetensors")
    tensors = {k[len("transformer."):]: v for k, v in st.load_file(weights).items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    st.save_file(tensors, weights)
    ids = ls.randint(0, 97, (1, 16))
    loaded = M.from_pretrained(tmp_path)
    with ls.no_grad():
        np.testing.assert_array_equal(to_np(loaded(ids)), to_np(model(ids)))


def test_from_pretrained_reads_sharded_folders(tmp_path):
    import json
    st = pytest.importorskip("safetensors.numpy")
    model = M.Transformer(_llama())
    model.save_pretrained(tmp_path)
    tensors = st.load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        st.save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = M.from_pretrained(tmp_path)
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=n)


def test_recompute_gives_the_same_gradients(monkeypatch):
    import llmscratch.models.transformer as transformer
    calls = []
    original = transformer.checkpoint
    monkeypatch.setattr(transformer, "checkpoint", lambda *a: calls.append(1) or original(*a))
    config = M.get_preset("tiny", vocab_size=64, n_layer=2, n_embd=32, n_head=2, block_size=16, dropout=0.1)
    ids = ls.tensor(np.random.default_rng(0).integers(0, 64, size=(2, 16)))
    grads = []
    for recompute in (False, True):
        ls.manual_seed(0)
        model = M.Transformer(config)
        model.recompute = recompute
        ls.manual_seed(1)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        grads.append({n: p.grad.numpy().copy() for n, p in model.named_parameters()})
    assert len(calls) == config.n_layer  # one checkpointed block per layer, only when asked
    for name in grads[0]:
        assert np.array_equal(grads[0][name], grads[1][name]), name


def test_hf_configs_take_transformers_defaults_and_name_the_dropout_they_drop():
    import warnings

    from llmscratch.models.hf import hf_config_to_model_config
    base = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
            "num_attention_heads": 4}
    mixtral = hf_config_to_model_config({**base, "model_type": "mixtral", "num_local_experts": 4,
                                         "num_experts_per_tok": 2})
    assert (mixtral.rope_theta, mixtral.block_size, mixtral.aux_loss_coef) == (1e6, 131072, 0.001)
    qwen3 = hf_config_to_model_config({**base, "model_type": "qwen3", "head_dim": 8})
    assert (qwen3.rope_theta, qwen3.block_size) == (10000.0, 32768)
    llama = hf_config_to_model_config({**base, "model_type": "llama"})
    assert (llama.rope_theta, llama.block_size) == (10000.0, 2048)
    gpt2 = {"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 1, "n_head": 4,
            "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}
    with pytest.warns(UserWarning, match="attention dropout 0.1.*none on the attention weights"):
        assert hf_config_to_model_config(gpt2).dropout == 0.1
    with pytest.warns(UserWarning, match="llama config: attention dropout 0.2"):
        hf_config_to_model_config({**base, "model_type": "llama", "attention_dropout": 0.2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what save_pretrained writes loads quietly
        hf_config_to_model_config({**gpt2, "attn_pdrop": 0.0})
        hf_config_to_model_config({**base, "model_type": "llama", "attention_dropout": 0.0})
