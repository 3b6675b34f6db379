"""The MoE MLP (models/moe.py) and MoE Transformers: forward and every gradient (experts, router,
shared experts, input) against a PyTorch reference MoE in float64; the degenerate cases (one
expert = dense MLP, dropless = capacity mode with unbounded capacity, equal gates over identical
experts = dense MLP); capacity dropping; balancing by the aux loss and by the selection bias;
presets, training with MoE metrics, checkpoint resume with the bias; the Hugging Face mixtral
format against transformers."""
import json
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.models as M
from llmscratch.models.moe import MoE
from conftest import rel_err, to_np, torch

tF = torch.nn.functional
_rng = np.random.default_rng()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(moe, scale=0.3):
    """Weights large enough that routing and activations are far from linear."""
    with ls.no_grad():
        for _, p in moe.named_parameters():
            p.copy_(ls.tensor(_rng.standard_normal(tuple(p.shape)) * scale, dtype=p.dtype))
        if moe.routing == "sigmoid_bias":
            moe.expert_bias.copy_(ls.tensor(_rng.standard_normal(moe.n_experts) * 0.3,
                                            dtype=ls.float32))


def _torch_params(moe):
    return {n: torch.tensor(to_np(p), requires_grad=True) for n, p in moe.named_parameters()}


def torch_moe(moe, x, P, capacity=None):
    """A loop-over-experts PyTorch MoE with moe's settings and the weights P (name -> tensor).
    Returns out, aux_loss, z_loss."""
    E, k, H = moe.n_experts, moe.top_k, moe.hidden
    logits = x @ P["router.weight"].T
    if moe.routing == "softmax_topk":
        probs = logits.softmax(-1)
        vals, ids = probs.topk(k, -1)
        gates = vals / vals.sum(-1, keepdim=True)
    elif moe.routing == "topk_softmax":
        probs = logits.softmax(-1)
        vals, ids = logits.topk(k, -1)
        gates = vals.softmax(-1)
    else:
        s = logits.sigmoid()
        bias = torch.tensor(to_np(moe.expert_bias), dtype=s.dtype)
        ids = (s.detach() + bias).topk(k, -1).indices
        chosen = s.gather(1, ids)
        gates = chosen / chosen.sum(-1, keepdim=True)
        probs = s / s.sum(-1, keepdim=True)
    keep = torch.ones_like(ids, dtype=torch.bool)
    if capacity is not None:  # slot-major priority, as moe_permute
        taken = [0] * E
        for s_ in range(k):
            for n in range(x.shape[0]):
                e = int(ids[n, s_])
                keep[n, s_] = taken[e] < capacity
                taken[e] += int(keep[n, s_])
    out = torch.zeros_like(x)
    for e in range(E):
        ge = (gates * ((ids == e) & keep)).sum(1, keepdim=True)
        h = x @ P["experts_fc"][e]
        if moe.activation == "swiglu":
            h = tF.silu(h[:, :H]) * h[:, H:]
        else:
            h = tF.gelu(h, approximate="tanh")
        out = out + ge * (h @ P["experts_proj"][e])
    if moe.shared is not None:
        h = x @ P["shared.fc.weight"].T
        Hs = moe.shared.hidden
        h = tF.silu(h[:, :Hs]) * h[:, Hs:] if moe.activation == "swiglu" else tF.gelu(h, approximate="tanh")
        out = out + h @ P["shared.proj.weight"].T
    f = torch.bincount(ids.reshape(-1), minlength=E).to(x.dtype) / ids.numel()
    aux = E * (f * probs.mean(0)).sum()
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    return out, aux, z


@pytest.mark.parametrize("routing", ["softmax_topk", "topk_softmax", "sigmoid_bias"])
@pytest.mark.parametrize("activation,k,E,shared", [("gelu", 2, 4, 0), ("swiglu", 1, 3, 0),
                                                   ("swiglu", 2, 8, 1), ("gelu", 3, 5, 2)])
@pytest.mark.parametrize("capacity_factor", [None, 0.7])
def test_against_torch(routing, activation, k, E, shared, capacity_factor):
    C, H, N = 12, 10, 37
    moe = MoE(C, H, E, k, activation, shared, routing, capacity_factor, dtype=ls.float64)
    _randomise(moe)
    x = _rng.standard_normal((N, C))
    w_out = _rng.standard_normal((N, C))
    lx = ls.tensor(x, requires_grad=True)
    out = moe(lx)
    loss = (out * ls.tensor(w_out)).sum() + moe.aux_loss * 0.7 + moe.z_loss * 0.3
    loss.backward()

    P = _torch_params(moe)
    tx = torch.tensor(x, requires_grad=True)
    ref, aux, z = torch_moe(moe, tx, P, moe.capacity(N))
    (( ref * torch.tensor(w_out)).sum() + aux * 0.7 + z * 0.3).backward()
    assert rel_err(out, ref) < 1e-10
    assert abs(moe.aux_loss.item() - aux.item()) < 1e-10
    assert abs(moe.z_loss.item() - z.item()) < 1e-10
    assert rel_err(lx.grad, tx.grad) < 1e-10
    for n, p in moe.named_parameters():
        assert p.grad is not None, n
        assert rel_err(p.grad, P[n].grad) < 1e-10, n


def _dense_mlp(x, fc, proj, activation, H):
    h = F.matmul(x, fc)
    if activation == "swiglu":
        a, b = F.split(h, [H, H], dim=-1)
        h = F.swiglu(a, b)
    else:
        h = F.gelu(h, approximate="tanh")
    return F.matmul(h, proj)


@pytest.mark.parametrize("routing", ["softmax_topk", "topk_softmax", "sigmoid_bias"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_one_expert_is_the_dense_mlp(routing, activation):
    C, H = 8, 6
    moe = MoE(C, H, 1, 1, activation, 0, routing, dtype=ls.float64)
    _randomise(moe)
    x = ls.tensor(_rng.standard_normal((2, 5, C)))
    fc, proj = moe.experts_fc[0], moe.experts_proj[0]
    np.testing.assert_allclose(to_np(moe(x)), to_np(_dense_mlp(x, fc, proj, activation, H)),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_equal_gates_and_identical_experts_are_the_dense_mlp(activation, k):
    C, H, E = 8, 6, 4
    moe = MoE(C, H, E, k, activation, 0, "softmax_topk", dtype=ls.float64)
    _randomise(moe)
    fc = _rng.standard_normal((C, H * (2 if activation == "swiglu" else 1)))
    proj = _rng.standard_normal((H, C))
    with ls.no_grad():
        moe.router.weight.zero_()  # equal logits: every gate is 1/k
        moe.experts_fc.copy_(ls.tensor(np.broadcast_to(fc, (E,) + fc.shape).copy()))
        moe.experts_proj.copy_(ls.tensor(np.broadcast_to(proj, (E,) + proj.shape).copy()))
    x = ls.tensor(_rng.standard_normal((13, C)))
    dense = _dense_mlp(x, ls.tensor(fc), ls.tensor(proj), activation, H)
    np.testing.assert_allclose(to_np(moe(x)), to_np(dense), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("routing", ["softmax_topk", "sigmoid_bias"])
def test_dropless_equals_unbounded_capacity(routing):
    C, H, E, k, N = 8, 6, 5, 2, 41
    dropless = MoE(C, H, E, k, "swiglu", 1, routing, None, dtype=ls.float64)
    _randomise(dropless)
    capped = MoE(C, H, E, k, "swiglu", 1, routing, float(E) / k, dtype=ls.float64)  # capacity N
    capped.load_state_dict(dropless.state_dict())
    assert capped.capacity(N) >= N
    x = _rng.standard_normal((N, C))
    outs = []
    for moe in (dropless, capped):
        lx = ls.tensor(x, requires_grad=True)
        out = moe(lx)
        ((out * out).sum() + moe.aux_loss).backward()
        outs.append((to_np(out), to_np(lx.grad), {n: to_np(p.grad) for n, p in moe.named_parameters()}))
        assert moe.metrics()["dropped_fraction"] == 0.0
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    for n in outs[0][2]:
        np.testing.assert_array_equal(outs[0][2][n], outs[1][2][n], err_msg=n)


def test_capacity_drops_and_reports():
    C, H, E, k, N = 8, 6, 4, 2, 64
    moe = MoE(C, H, E, k, "gelu", 0, "softmax_topk", 0.5, dtype=ls.float64)
    _randomise(moe)
    x = ls.tensor(_rng.standard_normal((N, C)))
    moe(x)
    m = moe.metrics()
    cap = moe.capacity(N)
    assert cap == math.ceil(0.5 * N * k / E)
    kept = sum(min(c, cap) for c in m["tokens_per_expert"])
    assert sum(m["tokens_per_expert"]) == N * k
    assert m["dropped_fraction"] == pytest.approx(1 - kept / (N * k))
    assert m["dropped_fraction"] > 0
    assert m["max_mean_load"] == pytest.approx(max(m["tokens_per_expert"]) / (N * k / E))


def _imbalanced(routing, E=8, k=2, C=16, N=256, rate=1e-3):
    """A MoE whose router sends almost every token to expert 0 (inputs share a direction the
    router row 0 points along), and those inputs."""
    moe = MoE(C, 8, E, k, "gelu", 0, routing, bias_update_rate=rate)
    v = _rng.standard_normal(C)
    v /= np.linalg.norm(v)
    x = _rng.standard_normal((N, C)) * 0.3 + v
    w = _rng.standard_normal((E, C)) * 0.1
    w[0] += 3 * v
    with ls.no_grad():
        moe.router.weight.copy_(ls.tensor(w, dtype=ls.float32))
    return moe, ls.tensor(x, dtype=ls.float32)


def test_bias_balances_without_aux_loss():
    moe, x = _imbalanced("sigmoid_bias", rate=0.005)
    moe.train()
    loads = []
    for _ in range(200):
        moe(x)
        loads.append(moe.metrics()["max_mean_load"])
        moe.update_bias()
    # A sign step of fixed size settles into a small cycle around balance, not onto it, so the
    # bound is on the last steps' mean with room for the cycle's peaks.
    assert loads[0] > 2.5
    assert np.mean(loads[-20:]) < 1.5 and max(loads[-20:]) < 1.75, (loads[0], loads[-20:])
    # The router weights never moved: the bias alone did it, and it is a saved buffer.
    assert "expert_bias" in moe.state_dict()


def test_expert_bias_keeps_float32_through_a_cast():
    moe, x = _imbalanced("sigmoid_bias", rate=0.005)
    moe.to(dtype=ls.float64)  # the Trainer casts a bf16 run's model the same way
    assert moe.experts_fc.dtype == ls.float64 and moe.expert_bias.dtype == ls.float32
    moe.train()
    moe(x.to(dtype=ls.float64))
    moe.update_bias()
    assert moe.expert_bias.dtype == ls.float32 and moe.expert_bias.abs().max().item() > 0


_CASTS = {"float64": (ls.float64, lambda m: m.double()),
          "bfloat16": (ls.bfloat16, lambda m: m.to(dtype=ls.bfloat16))}  # the Trainer's bf16 cast


@pytest.mark.parametrize("name", list(_CASTS))
def test_cast_gives_the_router_of_a_moe_built_in_that_dtype(name, monkeypatch):
    dtype, cast = _CASTS[name]
    # The CPU build has no bfloat16 kernels (the init's multiply): build without the init and
    # compare dtypes only.
    monkeypatch.setattr(ls.nn.init, "normal_", lambda t, *a, **kw: t)
    args = (12, 10, 4, 2, "swiglu", 1, "sigmoid_bias")
    built = MoE(*args, dtype=dtype)
    moe = MoE(*args)
    w = to_np(moe.router.weight)
    cast(moe)
    assert moe.router_dtype == built.router_dtype == moe.router.weight.dtype
    assert ({n: t.dtype for n, t in moe.state_dict().items()}
            == {n: t.dtype for n, t in built.state_dict().items()})
    # cast once from float32: the router did not round through bfloat16 on the way
    np.testing.assert_array_equal(to_np(moe.router.weight), w)


def test_double_routes_as_a_moe_built_in_float64():
    """Float64 gradient checks of a cast model need float64 routing."""
    args = (12, 10, 4, 2, "swiglu", 1, "softmax_topk")
    built = MoE(*args, dtype=ls.float64)
    _randomise(built)
    moe = MoE(*args).double()
    with ls.no_grad():
        for (_, p), (_, q) in zip(moe.named_parameters(), built.named_parameters()):
            p.copy_(q)
    x = _rng.standard_normal((37, 12))
    w_out = ls.tensor(_rng.standard_normal((37, 12)))
    results = []
    for m in (moe, built):
        out = m(ls.tensor(x))
        ((out * w_out).sum() + m.aux_loss * 0.7 + m.z_loss * 0.3).backward()
        results.append((to_np(out), to_np(m.router.weight.grad)))
    (out, grad), (want_out, want_grad) = results
    assert rel_err(out, want_out) < 1e-14 and rel_err(grad, want_grad) < 1e-14


def test_discarded_load_updates_no_bias():
    # A step the trainer skips (a non-finite loss) must not carry its batches' load into the
    # next step's bias update, which a resumed run could not reproduce.
    moe, x = _imbalanced("sigmoid_bias", rate=0.005)
    moe.train()
    moe(x)
    before = to_np(moe.expert_bias).copy()
    moe.discard_load()
    moe.update_bias()
    np.testing.assert_array_equal(to_np(moe.expert_bias), before)
    moe(x)
    moe.update_bias()
    assert not np.array_equal(to_np(moe.expert_bias), before)


# ---- models ----------------------------------------------------------------------------------

def _small(**kw):
    base = dict(vocab_size=64, n_layer=3, n_head=2, n_embd=16, block_size=16, n_experts=4,
                top_k=2, intermediate_size=24)
    return M.ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("layers,expect", [("all", [0, 1, 2]), ("every_other", [1]), ([0, 2], [0, 2])])
def test_moe_layers_and_parameter_count(layers, expect):
    c = _small(moe_layers=layers, n_shared_experts=1, mlp="swiglu")
    model = M.Transformer(c)
    assert [i for i, b in enumerate(model.blocks) if isinstance(b.mlp, MoE)] == expect
    assert model.num_parameters() == c.num_parameters()
    assert model.flops_per_token() < 6 * model.num_parameters() + 12 * c.n_layer * c.n_embd * c.block_size


def test_config_errors():
    with pytest.raises(ValueError, match="top_k"):
        _small(top_k=5)
    with pytest.raises(ValueError, match="routing"):
        _small(routing="hash")
    with pytest.raises(ValueError, match="moe_layers"):
        _small(moe_layers=[3])
    with pytest.raises(ValueError, match="capacity_factor"):
        _small(capacity_factor=0)


def test_presets():
    tiny = M.get_preset("moe-tiny")
    assert tiny.n_experts == 8 and tiny.top_k == 2
    big = M.get_preset("moe-124m-8e")
    assert (big.n_layer, big.n_embd, big.n_experts, big.top_k) == (12, 768, 8, 2)
    assert big.num_parameters() > 400e6  # 8 experts of GPT-2's MLP in all 12 layers


def test_loss_adds_aux_terms_in_training_only():
    c = _small(aux_loss_coef=0.5, z_loss_coef=0.25)
    model = M.Transformer(c)
    ids = ls.tensor(_rng.integers(0, 64, (2, 16)))
    model.train()
    model.loss_in_place = False  # the logits are wanted next to the training loss
    logits, loss = model(ids, ids)
    ce = F.cross_entropy(logits.reshape(32, 64), ids.reshape(32)).item()
    extra = sum(0.5 * m.aux_loss.item() + 0.25 * m.z_loss.item() for m in model.moe_modules())
    assert loss.item() == pytest.approx(ce + extra, rel=1e-5)
    model.eval()
    with ls.no_grad():
        _, loss = model(ids, ids)
    assert loss.item() == pytest.approx(ce, rel=1e-5)


def test_training_logs_the_cross_entropy_and_the_aux_loss_apart(tmp_path):
    """The logged loss is the cross-entropy (what the validation loss compares with); the terms
    the objective adds are logged as aux_loss. The model's loss stays the objective, and the
    model keeps its parts (last_ce_loss, last_aux_loss)."""
    from llmscratch.train.loop import Trainer, TrainConfig
    c = _small(aux_loss_coef=0.5, z_loss_coef=0.25)
    ids = ls.tensor(_rng.integers(0, 64, (4, 17)))
    ls.manual_seed(0)
    model = M.Transformer(c)
    before = M.Transformer(c)  # the model as the first step sees it
    before.load_state_dict(model.state_dict())
    before.loss_in_place = False
    logits, loss = before(ids[:, :-1], ids[:, 1:])
    ce = F.cross_entropy(logits.reshape(64, 64), ids[:, 1:].reshape(64)).item()
    extra = sum(0.5 * m.aux_loss.item() + 0.25 * m.z_loss.item() for m in before.moe_modules())
    assert loss.item() == pytest.approx(ce + extra, rel=1e-6)
    assert before.last_ce_loss.item() == pytest.approx(ce, rel=1e-6)
    assert before.last_aux_loss.item() == pytest.approx(extra, rel=1e-6)
    cfg = TrainConfig(steps=1, batch_size=4, seq_len=16, warmup=1, eval_every=1, ckpt_every=1,
                      out=str(tmp_path))
    Trainer(model, cfg, lambda i: ids, lambda i: ids, log=lambda *a: None).fit()
    rec = json.loads((tmp_path / "log.jsonl").read_text())
    assert rec["loss"] == pytest.approx(ce, rel=1e-6)
    assert rec["aux_loss"] == pytest.approx(extra, rel=1e-5)
    assert "val_loss" in rec  # the cross-entropy of eval mode, comparable with rec["loss"]
    with ls.no_grad():
        model.eval()
        model(ids[:, :-1], ids[:, 1:])
    assert model.last_aux_loss is None  # no auxiliary terms outside training


def test_train_logs_metrics_updates_bias_and_resumes(tmp_path):
    from llmscratch.train.loop import Trainer, TrainConfig
    c = _small(routing="sigmoid_bias", aux_loss_coef=0.0, bias_update_rate=0.01)
    data = _rng.integers(0, 64, (64, 17))

    def source(i):
        return ls.tensor(data[(i * 4) % 64:(i * 4) % 64 + 4])

    def run(steps, stop_at=None, resume=False):
        ls.manual_seed(0)
        model = M.Transformer(c)
        cfg = TrainConfig(steps=steps, batch_size=4, seq_len=16, warmup=1, eval_every=3,
                          ckpt_every=3, out=str(tmp_path / "run"))
        tr = Trainer(model, cfg, source, log=lambda *a: None)
        if resume:
            assert tr.resume()
        tr.fit(stop_at=stop_at)
        return model, tr

    import shutil
    # One step: the bias moves by rate * sign(mean load - load), outside autograd, from the
    # load the log reports (sign steps can return to 0 later, so only the first is exact).
    one, _ = run(1)
    with open(tmp_path / "run" / "log.jsonl") as f:
        rec = json.loads(f.readline())
    m = rec["moe"]["0"]
    assert sum(m["tokens_per_expert"]) == 4 * 16 * 2
    assert {"max_mean_load", "aux_loss", "z_loss", "dropped_fraction"} <= set(m)
    load = np.array(m["tokens_per_expert"], dtype=np.float64)
    np.testing.assert_allclose(to_np(one.blocks[0].mlp.expert_bias), 0.01 * np.sign(load.mean() - load),
                               rtol=1e-6)
    shutil.rmtree(tmp_path / "run")

    full, _ = run(6)
    shutil.rmtree(tmp_path / "run")
    run(6, stop_at=3)
    resumed, _ = run(6, resume=True)
    for i in range(c.n_layer):
        np.testing.assert_array_equal(to_np(resumed.blocks[i].mlp.expert_bias),
                                      to_np(full.blocks[i].mlp.expert_bias))
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=n)


def _train_moe_tiny(tmp_path, aux_loss_coef):
    from llmscratch.train.loop import Trainer, TrainConfig
    c = M.get_preset("moe-tiny", vocab_size=256, n_layer=2, block_size=32,
                     aux_loss_coef=aux_loss_coef)
    ls.manual_seed(0)
    model = M.Transformer(c)
    data = np.random.default_rng(0).integers(0, 17, (8, 33))  # small alphabet: fast to learn
    cfg = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=3e-3, warmup=2, eval_every=100,
                      ckpt_every=100, out=str(tmp_path / f"aux{aux_loss_coef}"))
    return Trainer(model, cfg, lambda i: ls.tensor(data), log=lambda *a: None).fit()


def test_moe_tiny_aux_loss_bounds_the_load(tmp_path):
    """20 steps of a shortened moe-tiny (fixed seed and data): the loss falls; without the aux
    loss the routers collapse onto few experts (max/mean load about 3 of at most 4), with it
    (coefficient 0.1) the load stays near balance."""
    def late_load(hist):
        return np.mean([max(m["max_mean_load"] for m in r["moe"].values()) for r in hist[-5:]])

    with_aux = _train_moe_tiny(tmp_path, 0.1)
    without = _train_moe_tiny(tmp_path, 0.0)
    assert with_aux[-1]["loss"] < 0.5 * with_aux[0]["loss"]
    assert all(m["dropped_fraction"] == 0.0 for r in with_aux for m in r["moe"].values())
    assert late_load(with_aux) < 2.0
    assert late_load(with_aux) < late_load(without) - 0.5


# ---- Hugging Face mixtral --------------------------------------------------------------------

def test_hf_mixtral_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.MixtralConfig(
        vocab_size=101, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12,  # 4 x 12 heads over 32
        max_position_embeddings=24, num_local_experts=4, num_experts_per_tok=2,
        initializer_range=0.2, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf_model = transformers.MixtralForCausalLM(hf_config).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf_model.save_pretrained(tmp_path / "theirs")
    ids = _rng.integers(0, 101, size=(2, 24))
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids)).logits.numpy()

    ours = M.from_pretrained(tmp_path / "theirs")
    assert ours.config.n_experts == 4 and ours.config.top_k == 2 and ours.config.head_size == 12
    with ls.no_grad():
        got = to_np(ours(ls.tensor(ids)))
    assert rel_err(got, expected) < 1e-4

    # transformers 5 holds the experts fused in memory (mlp.experts.gate_up_proj, down_proj) but
    # writes the per-expert layout; a file holding the fused names loads too.
    import shutil
    from safetensors.numpy import save_file
    (tmp_path / "fused").mkdir()
    shutil.copy(tmp_path / "theirs" / "config.json", tmp_path / "fused" / "config.json")
    save_file({k: v.numpy() for k, v in hf_model.state_dict().items()},
              str(tmp_path / "fused" / "model.safetensors"))
    fused = M.from_pretrained(tmp_path / "fused")
    with ls.no_grad():
        assert rel_err(to_np(fused(ls.tensor(ids))), expected) < 1e-4

    ours.save_pretrained(tmp_path / "ours")
    back = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert rel_err(back(torch.tensor(ids)).logits.numpy(), expected) < 1e-4
    again = M.from_pretrained(tmp_path / "ours")
    for (n, p), (_, q) in zip(ours.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(to_np(p), to_np(q), err_msg=n)


def test_save_pretrained_rejects_moe_mixtral_cannot_hold(tmp_path):
    model = M.Transformer(_small(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                 n_shared_experts=1))
    with pytest.raises(ValueError, match="mixtral"):
        model.save_pretrained(tmp_path)


def test_capacity_drops_in_training_only():
    """At inference a token's output must not depend on the batch around it: eval is dropless."""
    C, H, E, k, N = 8, 6, 4, 2, 64
    moe = MoE(C, H, E, k, "gelu", 0, "softmax_topk", 0.5, dtype=ls.float64)
    _randomise(moe)
    dropless = MoE(C, H, E, k, "gelu", 0, "softmax_topk", None, dtype=ls.float64)
    dropless.load_state_dict(moe.state_dict())
    x = ls.tensor(_rng.standard_normal((N, C)))
    moe(x)
    assert moe.metrics()["dropped_fraction"] > 0
    moe.eval()
    out = to_np(moe(x))
    assert moe.metrics()["dropped_fraction"] == 0.0
    np.testing.assert_array_equal(out, to_np(dropless(x)))
    np.testing.assert_allclose(out[5:6], to_np(moe(x[5:6])), rtol=1e-12, atol=1e-14)
