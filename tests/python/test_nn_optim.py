"""nn modules and optimizers: parameters, state_dict, moves, AdamW/SGD/clipping against torch,
and a small MLP that learns."""
import copy
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
import llmscratch.nn as nn
from conftest import assert_close, randn, to_np, torch


def test_module_registers_parameters_and_submodules():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight"]
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2
    assert all(p.requires_grad for p in m.parameters())
    assert m[2].bias is None
    assert "Linear(in_features=3, out_features=4, bias=True)" in repr(m)


def test_layer_parameters_are_the_cpp_layers_tensors():
    lin = nn.Linear(5, 3)
    assert lin.weight.data_ptr() == lin._impl.weight.data_ptr()
    with ls.no_grad():
        lin.weight.fill_(0.5)
        lin.bias.zero_()
    out = lin(ls.ones(2, 5))
    assert out.tolist() == [[2.5] * 3] * 2


def test_deepcopy_gives_a_module_of_its_own_weights():
    # copy.deepcopy (a frozen reference model, an EMA copy): every C++-backed layer gets its own
    # layer over the copied Parameters, so the copy's forward reads the copy's weights; a tied
    # weight stays one Parameter; gradients go to the copy only.
    emb = nn.Embedding(7, 4)
    head = nn.Linear(4, 7, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, nn.LayerNorm(4), nn.RMSNorm(4, eps=1e-6), head)
    twin = copy.deepcopy(model)
    assert twin[3].weight is twin[0].weight and twin[0].weight is not model[0].weight
    assert isinstance(twin[0].weight, nn.Parameter) and twin[0].weight.requires_grad
    ids = ls.tensor(np.array([[1, 2, 6]]))
    np.testing.assert_array_equal(to_np(twin(ids)), to_np(model(ids)))
    with ls.no_grad():
        twin[0].weight.fill_(0.5)
        twin[1].bias.fill_(2.0)
    out = twin(ids)
    assert np.allclose(to_np(out), 0.5 * to_np(twin[2](twin[1](twin[0](ids))).sum(-1, keepdim=True)))
    # constant rows: the copy's LayerNorm gives its own bias, 2.0 (the model's would give 0)
    np.testing.assert_allclose(to_np(twin[1](twin[0](ids))), 2.0)
    assert not np.allclose(to_np(model[0].weight), 0.5) and not np.allclose(to_np(model[1].bias), 2.0)
    out.sum().backward()
    assert twin[0].weight.grad is not None and model[0].weight.grad is None
    assert twin[2].eps == 1e-6 and twin[1].eps == model[1].eps


def test_deepcopy_of_a_model_and_its_optimizer_keeps_the_state_on_the_copies():
    # the state is keyed by the parameter's identity: the copy's is re-keyed to the copied
    # parameters, so both go on identically (torch's behaviour); an MoE model deep-copies after a
    # forward too (its aux_loss, a graph tensor, is copied detached)
    from llmscratch.models import ModelConfig, Transformer
    for make_opt in (lambda ps: ls.optim.AdamW(ps, lr=0.1), lambda ps: ls.optim.SGD(ps, lr=0.1, momentum=0.9)):
        ls.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=16, n_experts=4))
        opt = make_opt(model.parameters())
        ids = ls.tensor(np.arange(16).reshape(2, 8) % 50)

        def step(m, o):
            o.zero_grad()
            m(ids, ids)[1].backward()
            o.step()
        for _ in range(2):
            step(model, opt)
        twin, twin_opt = copy.deepcopy((model, opt))
        assert twin_opt.param_groups[0]["params"][0] is next(twin.parameters())
        assert len(twin_opt.state) == len(opt.state) > 0
        step(model, opt)
        step(twin, twin_opt)
        for a, b in zip(model.parameters(), twin.parameters()):
            np.testing.assert_array_equal(to_np(a), to_np(b))


def test_deepcopy_of_tensors_as_torch():
    x = ls.tensor(randn(2, 3), requires_grad=True)
    (x * 3.0).sum().backward()
    y = copy.deepcopy(x)
    assert y.is_leaf and y.requires_grad and _shares(y, x) is False
    np.testing.assert_array_equal(to_np(y), to_np(x))
    np.testing.assert_array_equal(to_np(y.grad), to_np(x.grad))
    p = nn.Parameter(ls.ones(3))
    p.grad = ls.ones(3)
    q = copy.deepcopy(p)
    assert isinstance(q, nn.Parameter) and q.requires_grad and q.grad is None  # as torch's Parameter
    view = ls.arange(6.0).reshape(2, 3).T
    np.testing.assert_array_equal(to_np(copy.deepcopy(view)), to_np(view))
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        copy.deepcopy(x * 2.0)


def _shares(a, b):
    return a.data_ptr() == b.data_ptr()


def test_shared_parameters_are_listed_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleList([emb, head])
    assert len(list(model.parameters())) == 1
    assert set(model.state_dict()) == {"0.weight", "1.weight"}


def test_state_dict_round_trip_copies_in_place():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    ptr = b.weight.data_ptr()
    b.load_state_dict(a.state_dict())
    assert b.weight.data_ptr() == ptr
    np.testing.assert_array_equal(to_np(a.weight), to_np(b.weight))
    with pytest.raises(RuntimeError, match="missing keys"):
        b.load_state_dict({"weight": a.weight})
    with pytest.raises(RuntimeError, match="size mismatch for 'weight'"):  # torch's type
        b.load_state_dict({"weight": ls.zeros(2, 2), "bias": ls.zeros(3)})
    np.testing.assert_array_equal(to_np(a.bias), to_np(b.bias))  # nothing copied: the bias neither
    result = b.load_state_dict({"weight": a.weight, "extra": ls.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["extra"]


def test_to_dtype_moves_parameters_and_cpp_layer_together():
    m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    m.to(dtype=ls.float64)
    assert all(p.dtype == ls.float64 for p in m.parameters())
    assert m[0]._impl.weight.dtype == ls.float64
    assert m(ls.ones(1, 3, dtype=ls.float64)).dtype == ls.float64


def test_to_keeps_the_parameter_objects_an_optimizer_holds():
    m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    params = list(m.parameters())
    opt = ls.optim.SGD(m.parameters(), lr=1.0)
    (m(ls.tensor([[1.0, -2.0, 0.5]])) * ls.tensor([1.0, -3.0])).sum().backward()
    m.to(dtype=ls.float64)
    assert all(a is b for a, b in zip(params, m.parameters()))  # the same objects, new data
    assert m[0].weight.grad.dtype == ls.float64  # the gradient moved with its parameter
    assert m[0]._impl.weight.dtype == ls.float64
    before = to_np(m[0].weight).copy()
    opt.step()  # the optimizer made before the move still trains the model
    assert not np.array_equal(to_np(m[0].weight), before)
    ptr = m[0].weight.data_ptr()
    m.to("cpu")  # nothing to move: the data stays where it is
    assert m[0].weight.data_ptr() == ptr


def test_assignments_keep_registered_parameters_and_buffers_registered():
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="cannot assign a Tensor as parameter 'weight'"):
        lin.weight = ls.zeros(2, 3)
    lin.bias = None  # as torch: the parameter slot stays, empty, and the layer adds no bias
    assert "bias" in lin._parameters and lin.bias is None and "bias" not in lin.state_dict()
    with ls.no_grad():
        lin.weight.fill_(1.0)
    assert lin(ls.ones(1, 3)).tolist() == [[3.0, 3.0]]
    m = nn.Module()
    m.register_buffer("running", ls.zeros(2))
    m.running = ls.ones(2)  # a buffer stays a buffer
    assert "running" in m.state_dict() and m.state_dict()["running"].tolist() == [1.0, 1.0]
    with pytest.raises(TypeError, match="as buffer 'running'"):
        m.running = 3.0
    with pytest.raises(TypeError, match="register_buffer: 'y' must be a Tensor or None, got float"):
        m.register_buffer("y", 3.0)
    with pytest.raises(KeyError, match="register_buffer: attribute 'weight' already exists"):
        lin.register_buffer("weight", ls.zeros(1))
    with pytest.raises(TypeError, match="register_parameter: 'p' must be a Parameter or None"):
        m.register_parameter("p", ls.zeros(1))
    m.register_buffer("x", ls.zeros(1), persistent=False)
    m.register_buffer("x", ls.zeros(1))  # registered again as persistent: saved now
    assert list(m.state_dict()) == ["running", "x"]
    with pytest.raises(TypeError, match="add_module: '0' must be a Module or None, got int"):
        nn.Sequential(3)
    with pytest.raises(KeyError, match="add_module: attribute 'weight' already exists"):
        lin.add_module("weight", nn.Linear(2, 2))
    m.running = nn.Parameter(ls.ones(2))  # a Parameter takes a buffer's name as a parameter
    assert [n for n, _ in m.named_parameters()] == ["running"] and "running" not in m._buffers
    lin2 = nn.Linear(3, 2)
    with ls.no_grad():
        lin2.bias.fill_(7.0)
        lin2.weight.zero_()
    lin2.register_parameter("bias", None)  # the C++ layer drops it too
    assert lin2(ls.ones(1, 3)).tolist() == [[0.0, 0.0]]
    lin3 = nn.Linear(3, 2)
    with ls.no_grad():
        lin3.bias.fill_(7.0)
        lin3.weight.zero_()
    del lin3.bias
    assert lin3(ls.ones(1, 3)).tolist() == [[0.0, 0.0]]


def test_a_shared_submodule_is_saved_under_each_name():
    m = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 1))
    shared = nn.Linear(2, 2)
    twice = nn.Sequential(shared, shared)
    assert list(twice.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert len(list(twice.parameters())) == 2
    head = m[1:]
    assert isinstance(head, nn.Sequential) and list(head.state_dict()) == ["1.weight", "1.bias"]


def test_train_calls_the_childrens_own_train():
    class FrozenDropout(nn.Dropout):
        def train(self, mode=True):  # stays in eval whatever its parent asks
            return super().train(False)

    m = nn.Sequential(nn.Linear(2, 2), FrozenDropout(0.5))
    m.train()
    assert m.training and m[0].training and not m[1].training
    with pytest.raises(ValueError, match="train: mode must be a bool"):
        m.train("False")


def test_train_eval_and_dropout():
    m = nn.Sequential(nn.Dropout(0.5))
    x = ls.ones(1000)
    assert (to_np(m(x)) == 0).mean() > 0.3
    m.eval()
    assert not m[0].training
    assert to_np(m(x)).tolist() == to_np(x).tolist()



def test_module_registration_refuses_what_torch_refuses():
    m = nn.Module()
    m.sub = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign a int as child module 'sub'"):
        m.sub = 3  # had unregistered it: its weights left state_dict and parameters() unseen
    assert [n for n, _ in m.named_parameters()] == ["sub.weight", "sub.bias"]
    m.sub = None  # kept as an empty slot, as torch
    assert "sub" in m._modules and m.sub is None and not list(m.parameters())
    m.sub = nn.Linear(2, 2)
    m.sub = nn.Parameter(ls.ones(3))  # a Parameter replaces a submodule, as torch
    assert "sub" not in m._modules and [n for n, _ in m.named_parameters()] == ["sub"]
    del m.sub
    m.a = nn.Linear(2, 2, bias=False)
    for bad in ("a.weight", "", 3):  # a dotted name had shadowed a.weight in state_dict
        with pytest.raises(KeyError, match="register_parameter: the name must be a non-empty string"):
            m.register_parameter(bad, nn.Parameter(ls.ones(5)))
        with pytest.raises(KeyError, match="register_buffer: the name must be a non-empty string"):
            m.register_buffer(bad, ls.ones(5))
    m.foo = 3
    with pytest.raises(KeyError, match="register_buffer: attribute 'foo' already exists"):
        m.register_buffer("foo", ls.ones(1))
    with pytest.raises(KeyError, match="register_parameter: attribute 'a' already exists"):
        m.register_parameter("a", None)
    with pytest.raises(TypeError, match="Module.to: dtype must be floating"):
        nn.Linear(2, 2).to(ls.int64)  # had truncated every weight to 0


def test_a_shared_child_or_buffer_is_visited_once():
    m, lin, calls = nn.Module(), nn.Linear(2, 2), []
    m.a = m.b = lin
    assert list(m.children()) == [lin] and [n for n, _ in m.named_children()] == ["a"]
    m.apply(lambda mod: calls.append(mod) if mod is lin else None)
    assert len(calls) == 1  # apply ran twice on it: a scaling fn scaled twice
    shared = ls.zeros(3)
    m.u, m.v = nn.Module(), nn.Module()
    m.u.register_buffer("b", shared)
    m.v.register_buffer("b", shared)
    assert [n for n, _ in m.named_buffers()] == ["u.b"]
    assert [n for n, _ in torch_twin_buffers()] == ["u.b"]


def torch_twin_buffers():
    t, shared = torch.nn.Module(), torch.zeros(3)
    t.u, t.v = torch.nn.Module(), torch.nn.Module()
    t.u.register_buffer("b", shared)
    t.v.register_buffer("b", shared)
    return t.named_buffers()


def test_module_dict_iterates_over_its_keys():
    md = nn.ModuleDict({"x": nn.ReLU(), "y": nn.GELU()})
    assert list(md) == ["x", "y"] == list(torch.nn.ModuleDict({"x": torch.nn.ReLU(), "y": torch.nn.GELU()}))

def test_layers_match_torch():
    x = randn(3, 5, 8)
    for ours, ref in [(nn.Linear(8, 6), torch.nn.Linear(8, 6)),
                      (nn.LayerNorm(8), torch.nn.LayerNorm(8)),
                      (nn.RMSNorm(8, eps=1e-6), torch.nn.RMSNorm(8, eps=1e-6)),
                      (nn.RMSNorm(8), torch.nn.RMSNorm(8))]:  # eps None: machine epsilon
        ours.to(dtype=ls.float64)
        ref.double()
        ref.load_state_dict({k: torch.from_dlpack(v) for k, v in ours.state_dict().items()})
        # small activations, where eps 1e-6 against float64's machine epsilon changes the result
        for scale in (1.0, 1e-4):
            assert_close(ours(ls.tensor(x * scale)), ref(torch.tensor(x * scale)))
    x32 = ls.tensor(x * 1e-4, dtype=ls.float32)
    assert_close(nn.RMSNorm(8)(x32), torch.nn.RMSNorm(8)(torch.from_dlpack(x32)))
    assert_close(F.rms_norm(x32, (8,)), torch.nn.functional.rms_norm(torch.from_dlpack(x32), (8,)))
    with pytest.raises(TypeError, match="RMSNorm: eps must be a number or None"):
        nn.RMSNorm(8, eps="1e-6")
    emb, temb = nn.Embedding(11, 4), torch.nn.Embedding(11, 4)
    temb.load_state_dict({"weight": torch.from_dlpack(emb.weight.detach())})
    ids = np.array([[1, 10, 3], [0, 0, 7]])
    assert_close(emb(ls.tensor(ids)), temb(torch.tensor(ids)))


def _twin_models():
    ours = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    ours.to(dtype=ls.float64)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)).double()
    ref.load_state_dict({k: torch.from_dlpack(v).clone() for k, v in ours.state_dict().items()})
    return ours, ref


@pytest.mark.parametrize("make", [
    (lambda p: ls.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1),
     lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)),
    (lambda p: ls.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (lambda p: ls.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
])
def test_optimizers_and_clipping_match_torch(make):
    ours, ref = _twin_models()
    opt, topt = make[0](ours.parameters()), make[1](ref.parameters())
    x, y = randn(10, 6), np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    for _ in range(5):
        opt.zero_grad()
        topt.zero_grad()
        loss = ls.functional.cross_entropy(ours(ls.tensor(x)), ls.tensor(y))
        tloss = torch.nn.functional.cross_entropy(ref(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        tloss.backward()
        norm = nn.utils.clip_grad_norm_(ours.parameters(), 0.5)
        tnorm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        assert abs(norm.item() - tnorm.item()) < 1e-6 * (1 + tnorm.item())
        opt.step()
        topt.step()
    for (name, p), tp in zip(ours.named_parameters(), ref.parameters()):
        assert_close(p, tp, tol=1e-7)  # float64 through 5 AdamW steps (1/sqrt(v) amplifies rounding)


def test_optimizer_state_dict_resumes_exactly():
    def run(steps, resume_at=None):
        ls.manual_seed(0)
        model = nn.Linear(4, 2)
        opt = ls.optim.AdamW(model.parameters(), lr=0.1)
        x = ls.randn(8, 4)
        for i in range(steps):
            if i == resume_at:
                msd, osd = model.state_dict(), opt.state_dict()
                msd = {k: v.clone() for k, v in msd.items()}
                model = nn.Linear(4, 2)
                opt = ls.optim.AdamW(model.parameters(), lr=0.1)
                model.load_state_dict(msd)
                opt.load_state_dict(osd)
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        return to_np(model.weight)
    np.testing.assert_array_equal(run(6), run(6, resume_at=3))


def test_mlp_learns_xor():
    ls.manual_seed(1)
    x = ls.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = ls.tensor([0, 1, 1, 0])
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = ls.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(300):
        opt.zero_grad()
        loss = ls.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert model(x).argmax(1).tolist() == [0, 1, 1, 0]


def test_regression_converges():
    ls.manual_seed(2)
    x = ls.randn(64, 3)
    w_true = ls.tensor([[1.5], [-2.0], [0.5]])
    y = x @ w_true + 0.3
    model = nn.Linear(3, 1)
    opt = ls.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    for _ in range(200):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    np.testing.assert_allclose(to_np(model.weight).ravel(), [1.5, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.item(), 0.3, atol=1e-3)


def test_layers_take_integer_sizes_only():
    assert nn.Linear(np.int64(3), 2).weight.shape == (2, 3)
    with pytest.raises(TypeError, match="Linear: in_features must be an integer, got float"):
        nn.Linear(3.0, 2)
    with pytest.raises(TypeError, match="Embedding: embedding_dim must be an integer, got str"):
        nn.Embedding(10, "4")
    with pytest.raises(TypeError, match="RMSNorm: normalized_shape must be an int or a sequence"):
        nn.RMSNorm([4.0])
    for bad in ((), (2, -3)):
        with pytest.raises(ValueError, match="LayerNorm: normalized_shape must be one or more sizes >= 0"):
            nn.LayerNorm(bad)
    assert nn.LayerNorm([6]).normalized_shape == (6,)


@pytest.mark.parametrize("name,kw", [("LayerNorm", {}), ("LayerNorm", {"bias": False}),
                                     ("LayerNorm", {"elementwise_affine": False}), ("RMSNorm", {}),
                                     ("RMSNorm", {"eps": 1e-3})])
def test_norm_layers_over_several_trailing_dims_match_torch(name, kw):
    # Parameters of normalized_shape's own shape (a torch state_dict loads), the forward and every
    # gradient against torch in float64, then a deepcopy, a cast and a later eps.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    ours, ref = getattr(nn, name)((3, 5), **kw), getattr(torch.nn, name)((3, 5), **kw).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.tensor(rng.standard_normal(p.shape)))
    ours = ours.to(ls.float64)
    ours.load_state_dict({k: ls.tensor(v.numpy()) for k, v in ref.state_dict().items()})
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    x = rng.standard_normal((2, 4, 3, 5))
    g = rng.standard_normal(x.shape)
    xl, xt = ls.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y = ours(xl)
    y.backward(ls.tensor(g))
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xl.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    for pname, p in ref.named_parameters():
        np.testing.assert_allclose(getattr(ours, pname).grad.numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-9)
    twin = copy.deepcopy(ours).to(ls.float32)
    np.testing.assert_allclose(twin(ls.tensor(x, dtype=ls.float32)).detach().numpy(), yt.detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    ours.eps = ref.eps = 0.5
    np.testing.assert_allclose(ours(ls.tensor(x)).detach().numpy(), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-10)


def test_optimizer_rejects_bad_input():
    with pytest.raises(ValueError, match="empty parameter list"):
        ls.optim.AdamW([])
    with pytest.raises(ValueError, match="learning rate"):
        ls.optim.AdamW(nn.Linear(2, 2).parameters(), lr=-1)
    for bad in (dict(lr=math.nan), dict(eps=math.nan), dict(weight_decay=math.nan), dict(betas=(math.nan, 0.9))):
        with pytest.raises(ValueError, match="AdamW"):  # NaN had passed, and made every weight NaN
            ls.optim.AdamW(nn.Linear(2, 2).parameters(), **bad)
    with pytest.raises(ValueError, match="does not require grad"):
        ls.optim.SGD([ls.zeros(2)])


def _adamw_reference(p, g, m, v, lr, b1, b2, eps, wd, step, scale=1.0):
    """One AdamW step in float64 numpy (the formula of cpp/optim/adamw.cpp)."""
    g = g * scale
    p = p - lr * wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** step)) / (np.sqrt(v / (1 - b2 ** step)) + eps)
    return p, m, v


@pytest.mark.parametrize("grad_dtype", [ls.float32, ls.bfloat16, ls.float16])
@pytest.mark.parametrize("copy_dtype", [None, ls.bfloat16, ls.float16])
@pytest.mark.parametrize("with_scale", [False, True])
def test_adamw_mixed_precision_grads_and_model_copies(grad_dtype, copy_dtype, with_scale):
    """float32 master weights and moments, 16-bit gradients (read widened), and 16-bit model
    copies that receive the rounded new weights in the same call; odd sizes, three steps."""
    import llmscratch_core as _core
    shapes = [(3, 5), (127,), (1,), (64, 33)]
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    params = [ls.tensor(randn(*s), dtype=ls.float32) for s in shapes]
    m = [ls.zeros(*s) for s in shapes]
    v = [ls.zeros(*s) for s in shapes]
    copies = [ls.zeros(*s, dtype=copy_dtype) for s in shapes] if copy_dtype else []
    ref = [(to_np(p).astype(np.float64), np.zeros(s), np.zeros(s)) for p, s in zip(params, shapes)]
    for step in (1, 2, 3):
        grads = [ls.tensor(randn(*s)).to(dtype=grad_dtype) for s in shapes]
        scale = ls.tensor(0.75) if with_scale else None
        _core.ops.adamw_step(params, grads, m, v, lr, b1, b2, eps, wd, step, scale,
                             model_copies=copies)
        ref = [_adamw_reference(rp, to_np(g.float()).astype(np.float64), rm, rv, lr, b1, b2, eps, wd,
                                step, 0.75 if with_scale else 1.0)
               for (rp, rm, rv), g in zip(ref, grads)]
    # float32 rounding per element, with an absolute floor: m sums gradients of both signs
    for k in range(len(shapes)):
        for ours, want, atol in ((params[k], ref[k][0], 1e-7), (m[k], ref[k][1], 1e-7), (v[k], ref[k][2], 1e-9)):
            np.testing.assert_allclose(to_np(ours), want, rtol=1e-6, atol=atol)
        if copy_dtype:
            assert copies[k].dtype == copy_dtype
            np.testing.assert_array_equal(to_np(copies[k].float()), to_np(params[k].to(dtype=copy_dtype).float()))


def test_adamw_mixed_precision_rejects_bad_dtypes():
    import llmscratch_core as _core
    p, g16 = ls.randn(4), ls.randn(4).to(dtype=ls.bfloat16)
    args = (1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(TypeError, match="grad 0 has dtype bfloat16 for a float64 parameter"):
        _core.ops.adamw_step([p.double()], [g16], [ls.zeros(4).double()], [ls.zeros(4).double()], *args)
    with pytest.raises(TypeError, match="exp_avg 0 has dtype bfloat16"):
        _core.ops.adamw_step([p], [g16], [ls.zeros(4, dtype=ls.bfloat16)], [ls.zeros(4)], *args)
    with pytest.raises(TypeError, match="model copy 0 has dtype float32"):
        _core.ops.adamw_step([p], [g16], [ls.zeros(4)], [ls.zeros(4)], *args, model_copies=[ls.zeros(4)])
    with pytest.raises(ValueError, match="expected 1 model copies"):
        _core.ops.adamw_step([p], [g16], [ls.zeros(4)], [ls.zeros(4)], *args,
                             model_copies=[ls.zeros(4, dtype=ls.bfloat16)] * 2)
    with pytest.raises(ValueError, match="does not match its parameter"):
        _core.ops.adamw_step([p], [g16], [ls.zeros(4)], [ls.zeros(4)], *args,
                             model_copies=[ls.zeros(5, dtype=ls.bfloat16)])


def test_global_norm_of_16bit_gradients():
    import llmscratch_core as _core
    a, b = randn(37), randn(5, 3)
    ta, tb = ls.tensor(a).to(dtype=ls.bfloat16), ls.tensor(b).to(dtype=ls.float16)
    want = np.sqrt((to_np(ta.float()).astype(np.float64) ** 2).sum() + (to_np(tb.float()).astype(np.float64) ** 2).sum())
    got = _core.ops.global_norm([ta, tb, ls.tensor(b, dtype=ls.float32)])
    want = np.sqrt(want ** 2 + (b.astype(np.float32).astype(np.float64) ** 2).sum())
    assert abs(got.item() - want) < 1e-6 * want


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float16])
def test_adamw_trains_16bit_parameters_through_float32_masters(dtype):
    """A 16-bit parameter steps through a float32 master in the optimizer state: the master
    follows a float32 run from the same rounded start bit for bit, and the parameter holds the
    master rounded; float32 parameters of the same group step as before."""
    w16 = ls.tensor(randn(6, 5)).to(dtype=dtype).requires_grad_()
    w32 = w16.detach().to(dtype=ls.float32).requires_grad_()
    other, other_ref = (ls.tensor(randn(3), dtype=ls.float32).requires_grad_() for _ in range(2))
    with ls.no_grad():
        other_ref.copy_(other)
    opt = ls.optim.AdamW([w16, other], lr=1e-2, weight_decay=0.1)
    ref = ls.optim.AdamW([w32, other_ref], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        g = ls.tensor(randn(6, 5)).to(dtype=dtype)
        go = ls.tensor(randn(3), dtype=ls.float32)
        w16.grad, other.grad = g, go
        w32.grad, other_ref.grad = g.to(dtype=ls.float32), go.clone()
        opt.step()
        ref.step()
    master = opt.state_dict()["state"][0]["master"]
    assert master.dtype == ls.float32 and w16.dtype == dtype
    np.testing.assert_array_equal(to_np(master), to_np(w32))
    np.testing.assert_array_equal(to_np(w16.float()), to_np(w32.to(dtype=dtype).float()))
    np.testing.assert_array_equal(to_np(other), to_np(other_ref))


def test_container_edits_like_torch():
    a, b, c = nn.ReLU(), nn.GELU(), nn.SiLU()
    seq = nn.Sequential(a).append(b).insert(0, c)
    assert list(seq) == [c, a, b] and list(seq._modules) == ["0", "1", "2"]
    seq.extend([nn.Identity()])
    assert len(seq) == 4
    tseq = torch.nn.Sequential(torch.nn.ReLU()).append(torch.nn.GELU())
    tseq.insert(0, torch.nn.SiLU())
    assert [type(m).__name__ for m in tseq] == [type(m).__name__ for m in list(seq)[:3]]
    with pytest.raises(IndexError, match="index 9 is out of range"):
        seq.insert(9, a)
    ml = nn.ModuleList([a, b])
    ml[-1] = c
    ml.insert(1, b)
    assert list(ml) == [a, b, c]
    with pytest.raises(TypeError, match="as child module '0'"):
        ml[0] = 3
    md = nn.ModuleDict({"x": a})
    md.update({"y": b})
    md.update([("z", c)])
    assert list(md) == ["x", "y", "z"] and md.pop("y") is b and list(md) == ["x", "z"]


@pytest.mark.parametrize("shape", [(300, 200), (64, 32, 3, 3)])
def test_xavier_and_kaiming_init_like_torch(shape):
    receptive = int(np.prod(shape[2:]))
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    assert nn.init._calculate_fan_in_and_fan_out(ls.empty(*shape)) == (fan_in, fan_out)
    for name, param in (("relu", None), ("leaky_relu", 0.2), ("tanh", None), ("linear", None), ("selu", None)):
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))
    ls.manual_seed(0)
    cases = [(nn.init.xavier_uniform_, {}, math.sqrt(6 / (fan_in + fan_out)), "uniform"),
             (nn.init.xavier_normal_, {"gain": 2.0}, 2 * math.sqrt(2 / (fan_in + fan_out)), "normal"),
             (nn.init.kaiming_uniform_, {"nonlinearity": "relu"}, math.sqrt(2) * math.sqrt(3 / fan_in), "uniform"),
             (nn.init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(2 / fan_out), "normal")]
    for fn, kw, scale, kind in cases:
        w = fn(ls.empty(*shape, dtype=ls.float64), **kw).numpy()
        if kind == "uniform":  # U(-a, a): |w| <= a, std a / sqrt(3)
            assert np.abs(w).max() <= scale and w.std() == pytest.approx(scale / math.sqrt(3), rel=0.05)
        else:
            assert w.std() == pytest.approx(scale, rel=0.05)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(ls.empty(5))
    with pytest.raises(ValueError, match="mode must be"):
        nn.init.kaiming_normal_(ls.empty(3, 3), mode="fan")


def test_erfinv_of_the_truncated_normal_against_torch():
    u = np.concatenate([np.linspace(-0.9999999, 0.9999999, 4001), [0.0, -0.5, 0.99]])
    got = to_np(nn.init._erfinv(ls.tensor(u)))
    np.testing.assert_allclose(got, torch.special.erfinv(torch.tensor(u)).numpy(), rtol=3e-7, atol=3e-7)


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -2.0, 2.0), (1.0, 2.0, 0.5, 3.0),
                                          (0.0, 1.0, 1.5, 4.0), (0.0, 1.0, -math.inf, 0.0)])
def test_trunc_normal_draws_the_truncated_distribution(mean, std, a, b):
    ls.manual_seed(0)
    w = to_np(nn.init.trunc_normal_(ls.empty(200_000, dtype=ls.float64), mean, std, a, b))
    assert a <= w.min() and w.max() <= b
    # the truncated normal's mean and std in closed form
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi) if math.isfinite(z) else 0.0  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    Z = cdf(beta) - cdf(alpha)
    shift = (pdf(alpha) - pdf(beta)) / Z
    edge = lambda z: z * pdf(z) if math.isfinite(z) else 0.0  # noqa: E731
    var = 1 + (edge(alpha) - edge(beta)) / Z - shift ** 2
    assert w.mean() == pytest.approx(mean + std * shift, abs=0.01 * std)
    assert w.std() == pytest.approx(std * math.sqrt(var), rel=0.01)
    half = nn.init.trunc_normal_(ls.empty(64, 8, dtype=ls.bfloat16), std=0.02)
    assert half.dtype == ls.bfloat16 and to_np(half.float()).std() == pytest.approx(0.02, rel=0.2)
    with pytest.raises(ValueError, match="a < b"):
        nn.init.trunc_normal_(ls.empty(3), a=1.0, b=1.0)
    with pytest.raises(ValueError, match="std finite and positive"):
        nn.init.trunc_normal_(ls.empty(3), std=0.0)


def test_a_norms_eps_assigned_after_construction_sets_its_forward():
    x = randn(3, 8).astype(np.float32)
    for ours, ref in ((nn.LayerNorm(8), torch.nn.LayerNorm(8)), (nn.RMSNorm(8), torch.nn.RMSNorm(8)),
                      (nn.RMSNorm(8, eps=1e-6), torch.nn.RMSNorm(8, eps=1e-6))):
        ours.eps = ref.eps = 0.5
        np.testing.assert_allclose(to_np(ours(ls.tensor(x))), to_np(ref(torch.tensor(x))), rtol=1e-5, atol=1e-6)
    zero = nn.RMSNorm(4)
    zero.eps = 1e-6  # from None (machine epsilon per call) to a number: no 0 / 0
    assert to_np(zero(ls.zeros(1, 4))).tolist() == [[0.0] * 4]


def test_modules_and_parameters_are_walked_depth_first_as_torch_and_state_dict():
    ours = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)), nn.Linear(3, 4))
    ref = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3)), torch.nn.Linear(3, 4))
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()] == list(ours.state_dict())
    shared = nn.Linear(2, 2)
    twice = nn.Sequential(shared, shared)
    assert [n for n, _ in twice.named_modules()] == ["", "0"]
    assert [n for n, _ in twice.named_modules(remove_duplicate=False)] == ["", "0", "1"]
    assert [n for n, _ in ours.named_modules(prefix="m")][:2] == ["m", "m.0"]


def test_containers_delete_pop_add_and_replace_in_place_as_torch():
    for lib in (nn, torch.nn):
        seq = lib.Sequential(lib.Linear(1, 2), lib.ReLU(), lib.Linear(2, 3), lib.Tanh())
        del seq[1]
        first = seq.pop(0)
        seq[0] = lib.Linear(2, 5)  # replaced where it was, not moved last
        assert [n for n, _ in seq.named_children()] == ["0", "1"] and seq[0].out_features == 5
        assert type(first).__name__ == "Linear" and len(seq + seq) == 4
        ml = lib.ModuleList(None)
        ml += [lib.ReLU(), lib.Tanh()]
        ml[0] = lib.SiLU()
        both = ml + ml
        del both[1:3]
        assert [type(m).__name__ for m in ml] == ["SiLU", "Tanh"] and len(both) == 2
        md = lib.ModuleDict([("a", lib.ReLU()), ("b", lib.Tanh())])
        del md["a"]
        assert list(md) == ["b"]
        md.clear()
        assert len(md) == 0


def test_module_lookups_casts_and_listing_as_torch():
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.LayerNorm(3)))
    assert model.get_submodule("1.0") is model[1][0] and model.get_submodule("") is model
    assert model.get_parameter("1.0.weight") is model[1][0].weight
    with pytest.raises(AttributeError, match="no submodule '2'"):
        model.get_submodule("2.0")
    with pytest.raises(AttributeError, match="no parameter 'scale'"):
        model.get_parameter("0.scale")
    assert {"0", "1"} <= set(dir(model)) and "weight" in dir(model[0])
    model[0].register_buffer("mask", ls.ones(3))
    assert [n for n, _ in model.named_buffers(recurse=False)] == [] and len(list(model[0].buffers(recurse=False))) == 1
    assert model.half() is model and model[0].weight.dtype == ls.float16
    assert model.bfloat16()[0].weight.dtype == ls.bfloat16

    class Early(nn.Module):
        def __init__(self):
            self.width = 4  # a plain attribute before Module.__init__, as torch allows
            super().__init__()
            self.lin = nn.Linear(self.width, 1)
    assert Early().lin.in_features == 4
    with pytest.raises(NotImplementedError, match="inplace=True"):
        nn.Dropout(0.1, inplace=True)


@pytest.mark.parametrize("padding_idx", [2, -1])
def test_embedding_padding_idx_as_torch(padding_idx):
    ids = np.array([[0, 2, 2, 1], [2, 3, 0, 3]])
    ours, ref = nn.Embedding(4, 3, padding_idx=padding_idx), torch.nn.Embedding(4, 3, padding_idx=padding_idx)
    assert ours.padding_idx == ref.padding_idx and not to_np(ours.weight)[padding_idx].any()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(to_np(ours.weight)))
    out, tout = ours(ls.tensor(ids)), ref(torch.tensor(ids))
    np.testing.assert_array_equal(to_np(out), to_np(tout))
    w = randn(*out.shape).astype(np.float32)
    (out * ls.tensor(w)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(to_np(ours.weight.grad), to_np(ref.weight.grad), rtol=1e-6, atol=1e-6)
    assert not to_np(ours.weight.grad)[padding_idx].any()
    with pytest.raises(ValueError, match="padding_idx must be in"):
        nn.Embedding(4, 3, padding_idx=4)


def test_forward_hooks_as_torch():
    for lib, mod in ((ls, nn), (torch, torch.nn)):
        lin = mod.Linear(2, 2)
        seen = []
        pre = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0.0,))  # new args
        post = lin.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
        x = lib.ones(3, 2)
        out = lin(x)
        np.testing.assert_allclose(out.detach().numpy(), np.broadcast_to(lin.bias.detach().numpy(), (3, 2)), rtol=1e-6)
        assert seen == [(3, 2)]
        pre.remove()
        post.remove()
        lin(x)
        assert seen == [(3, 2)]
        with lin.register_forward_hook(lambda m, args, out: out * 2.0):  # a new output, then removed
            doubled = lin(x)
        np.testing.assert_allclose(doubled.detach().numpy(), 2.0 * lin(x).detach().numpy(), rtol=1e-6)


def test_state_dict_keep_vars_destination_and_to_a_tensor_as_torch():
    lin = nn.Linear(2, 3)
    kept = lin.state_dict(keep_vars=True)
    assert kept["weight"] is lin.weight and not lin.state_dict()["weight"].requires_grad
    into = {}
    assert lin.state_dict(into, "head.") is into and list(into) == ["head.weight", "head.bias"]
    assert lin.to(ls.zeros(1, dtype=ls.float64)).weight.dtype == ls.float64  # a tensor's dtype
    assert lin.to(ls.zeros(1, dtype=ls.int64)).weight.dtype == ls.float64  # an int one's device only
