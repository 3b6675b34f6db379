"""Optimizer bookkeeping against torch: per-parameter AdamW step counts, failure-atomic steps,
16-bit masters that follow outside writes, parameter-group validation, load_state_dict, and
clip_grad_norm_'s torch signature."""
import math

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.nn as nn
from conftest import assert_close, randn, to_np, torch


def _twins(*shapes):
    """float64 leaf parameters with equal values: ours and torch's."""
    arrays = [randn(*s) for s in shapes]
    return ([ls.tensor(a, requires_grad=True) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


def _set_grads(ours, ref, shapes):
    for p, t, s in zip(ours, ref, shapes):
        g = randn(*s)
        p.grad, t.grad = ls.tensor(g), torch.tensor(g)


# ---- AdamW step counts ----

def test_adamw_counts_steps_per_parameter_like_torch():
    """b has no gradient for three steps (frozen, then unfrozen): its bias correction starts at
    step 1 when it first trains, as in torch, not at the group's step 4."""
    (a, b), (ta, tb) = _twins((4, 3), (5,))
    kw = dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)
    opt, topt = ls.optim.AdamW([a, b], **kw), torch.optim.AdamW([ta, tb], **kw)
    for step in range(6):
        _set_grads([a], [ta], [(4, 3)])
        if step >= 3:
            _set_grads([b], [tb], [(5,)])
        opt.step()
        topt.step()
    assert_close(a, ta, tol=1e-7)
    assert_close(b, tb, tol=1e-7)
    state = opt.state_dict()["state"]
    assert (state[0]["step"], state[1]["step"]) == (6, 3)


def test_adamw_step_that_raises_changes_nothing():
    w = ls.tensor(randn(3), requires_grad=True)
    opt = ls.optim.AdamW([w], lr=0.1)
    with pytest.raises(TypeError, match="assigned grad is float32 but the tensor is float64"):
        w.grad = ls.tensor(randn(3), dtype=ls.float32)
    w.grad = ls.tensor(randn(3))
    with pytest.raises(ValueError, match="grad_scale must be a floating 1-element tensor"):
        opt.step(grad_scale=ls.ones(2, dtype=ls.float64))
    assert opt.state_dict()["state"] == {}  # no half-made state either
    opt.step()
    before = to_np(w).copy()
    with pytest.raises(ValueError, match="grad_scale must be a floating 1-element tensor"):
        opt.step(grad_scale=ls.ones(2, dtype=ls.float64))
    with pytest.raises(TypeError, match="grad_scale must be a Tensor or a number, got str"):
        opt.step(grad_scale="0.5")
    assert opt.state_dict()["state"][0]["step"] == 1
    np.testing.assert_array_equal(to_np(w), before)


def test_adamw_takes_a_number_as_grad_scale():
    (a, b), _ = _twins((4,), (4,))
    with ls.no_grad():
        b.copy_(a)
    opt_a, opt_b = ls.optim.AdamW([a], lr=0.1), ls.optim.AdamW([b], lr=0.1)
    for _ in range(3):
        g = randn(4)
        a.grad, b.grad = ls.tensor(g), ls.tensor(g)
        opt_a.step(grad_scale=0.25)
        opt_b.step(grad_scale=ls.tensor(0.25, dtype=ls.float64))
    np.testing.assert_array_equal(to_np(a), to_np(b))


# ---- 16-bit parameters and their float32 masters ----

def _step_16bit_and_float32(model, ref, opt, ref_opt, dtype):
    for p, r in zip(model.parameters(), ref.parameters()):
        g = ls.tensor(randn(*p.shape)).to(dtype=dtype)
        p.grad, r.grad = g, g.float()
    opt.step()
    ref_opt.step()


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float16])
def test_adamw_master_follows_outside_writes_to_16bit_parameters(dtype):
    """A float32 twin steps its weights directly, so outside writes reach it as they are; the
    16-bit model's masters must follow them (a load_state_dict, then one copy_) bit for bit,
    with the moments carried on."""
    model = nn.Linear(5, 3).to(dtype=dtype)
    ref = nn.Linear(5, 3)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    opt = ls.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = ls.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        _step_16bit_and_float32(model, ref, opt, ref_opt, dtype)
    fresh = nn.Linear(5, 3).to(dtype=dtype).state_dict()
    model.load_state_dict(fresh)
    ref.load_state_dict({k: v.float() for k, v in fresh.items()})
    _step_16bit_and_float32(model, ref, opt, ref_opt, dtype)
    bias = ls.tensor(randn(3)).to(dtype=dtype)
    with ls.no_grad():
        model.bias.copy_(bias)
        ref.bias.copy_(bias.float())
    opt.load_state_dict(opt.state_dict())  # a round trip between the write and the step keeps it
    _step_16bit_and_float32(model, ref, opt, ref_opt, dtype)
    state = opt.state_dict()["state"]
    for k, (p, r) in enumerate(zip(model.parameters(), ref.parameters())):
        np.testing.assert_array_equal(to_np(state[k]["master"]), to_np(r))
        np.testing.assert_array_equal(to_np(p.float()), to_np(r.to(dtype=dtype).float()))
        assert state[k]["step"] == 4


def test_adamw_keeps_the_masters_of_parameters_sharing_a_version_counter():
    """Two 16-bit parameters over one tensor's rows, in two groups (two fused calls): each call's
    write moves the counter both share, which must not read as an outside write."""
    w = ls.zeros(2, 4, dtype=ls.bfloat16)
    a, b = nn.Parameter(w[0]), nn.Parameter(w[1])
    opt = ls.optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    masters = []
    for _ in range(3):
        a.grad, b.grad = ls.ones(4, dtype=ls.bfloat16), ls.ones(4, dtype=ls.bfloat16)
        opt.step()
        masters.append([opt.state[p._impl_id()]["master"]._impl_id() for p in (a, b)])
    assert masters[0] == masters[1] == masters[2]  # never rebuilt from the rounded weights


def test_adamw_resumes_16bit_training_from_the_saved_masters():
    """Model loaded, then optimizer: the loaded masters stay in use (re-deriving them from the
    rounded 16-bit weights would drift from the uninterrupted run)."""
    grads = [[randn(3, 5), randn(3)] for _ in range(5)]

    def run(resume_at=None):
        ls.manual_seed(0)
        model = nn.Linear(5, 3).to(dtype=ls.bfloat16)
        opt = ls.optim.AdamW(model.parameters(), lr=1e-2)
        for i, gs in enumerate(grads):
            if i == resume_at:
                msd = {k: v.clone() for k, v in model.state_dict().items()}
                osd = opt.state_dict()
                model = nn.Linear(5, 3).to(dtype=ls.bfloat16)
                opt = ls.optim.AdamW(model.parameters(), lr=1e-2)
                model.load_state_dict(msd)
                opt.load_state_dict(osd)
            for p, g in zip(model.parameters(), gs):
                p.grad = ls.tensor(g).to(dtype=ls.bfloat16)
            opt.step()
        return opt.state_dict()["state"][0]["master"]
    np.testing.assert_array_equal(to_np(run()), to_np(run(resume_at=2)))


# ---- parameter groups ----

def test_optimizer_rejects_a_tensor_and_non_leaf_parameters_like_torch():
    w = ls.tensor(randn(3, 2), requires_grad=True)
    with pytest.raises(TypeError, match="params must be an iterable of Tensors or dicts, got a Tensor"):
        ls.optim.SGD(w)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        ls.optim.SGD([w * 2])
    with pytest.raises(TypeError, match="not a set"):
        ls.optim.SGD([{"params": {w}}])
    with pytest.raises(TypeError, match="not a set"):  # its order changes between processes
        ls.optim.SGD({w})


def test_a_group_with_a_lone_tensor_trains_it():
    (w,), (tw,) = _twins((3, 2))
    opt = ls.optim.SGD([{"params": w, "lr": 0.1}], momentum=0.9)
    topt = torch.optim.SGD([{"params": tw, "lr": 0.1}], momentum=0.9)
    for _ in range(3):
        _set_grads([w], [tw], [(3, 2)])
        opt.step()
        topt.step()
    assert_close(w, tw)


def test_a_parameter_may_appear_once_only():
    a, b = (ls.tensor(randn(2), requires_grad=True) for _ in range(2))
    same_a = a.requires_grad_()  # another Python object over the same tensor
    assert same_a is not a
    with pytest.raises(ValueError, match="appears twice in one parameter group"):
        ls.optim.SGD([a, b, same_a])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        ls.optim.AdamW([{"params": [a]}, {"params": [b, same_a]}])
    opt = ls.optim.SGD([a])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [same_a]})
    assert len(opt.param_groups) == 1


# ---- load_state_dict ----

def _trained_adamw(params):
    """AdamW over float64 params after two steps."""
    opt = ls.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        for p in params:
            p.grad = ls.tensor(randn(*p.shape))
        opt.step()
    return opt


def test_load_state_dict_replaces_the_whole_state():
    a, b = (ls.tensor(randn(2), requires_grad=True) for _ in range(2))
    opt = _trained_adamw([a, b])
    only_a = ls.optim.AdamW([a.detach().requires_grad_(), b.detach().requires_grad_()], lr=0.1)
    a2 = only_a.param_groups[0]["params"][0]
    a2.grad = ls.tensor(randn(2))
    only_a.step()
    opt.load_state_dict(only_a.state_dict())
    state = opt.state_dict()["state"]
    assert list(state) == [0] and state[0]["step"] == 1  # b starts afresh, as in torch


def test_load_state_dict_casts_state_to_the_kept_dtype():
    """float64 state loads into float32 parameters as float32, and into 16-bit ones as float32
    (their masters' dtype), on the parameter's device."""
    w64 = [ls.tensor(randn(3, 2), requires_grad=True), ls.tensor(randn(4), requires_grad=True)]
    sd = _trained_adamw(w64).state_dict()
    w32 = ls.tensor(randn(3, 2), dtype=ls.float32).requires_grad_()
    w16 = ls.tensor(randn(4)).to(dtype=ls.bfloat16).requires_grad_()
    sd["state"][1]["master"] = ls.tensor(randn(4))
    opt = ls.optim.AdamW([w32, w16], lr=0.1)
    opt.load_state_dict(sd)
    state = opt.state_dict()["state"]
    assert {k: v.dtype for k, v in state[0].items() if k != "step"} == \
        {"exp_avg": ls.float32, "exp_avg_sq": ls.float32}
    assert {k: v.dtype for k, v in state[1].items() if k != "step"} == \
        {"exp_avg": ls.float32, "exp_avg_sq": ls.float32, "master": ls.float32}
    np.testing.assert_array_equal(to_np(state[0]["exp_avg"]),
                                  to_np(sd["state"][0]["exp_avg"]).astype(np.float32))
    sgd_w = ls.tensor(randn(3, 2), dtype=ls.float32).requires_grad_()
    sgd = ls.optim.SGD([sgd_w], lr=0.1, momentum=0.9)
    sgd.load_state_dict({"state": {0: {"momentum_buffer": ls.tensor(randn(3, 2))}},
                         "param_groups": sgd.state_dict()["param_groups"]})
    assert sgd.state_dict()["state"][0]["momentum_buffer"].dtype == ls.float32


def test_load_state_dict_checks_shapes_and_changes_nothing_on_error():
    a, b = ls.tensor(randn(2), requires_grad=True), ls.tensor(randn(3), requires_grad=True)
    opt = _trained_adamw([a, b])
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = 5.0
    bad["state"][1]["exp_avg"] = ls.zeros(4, dtype=ls.float64)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 1 has shape \(4,\), but the "
                                         r"parameter has shape \(3,\)"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"][0]["lr"] == 0.1
    for k in (0, 1):
        np.testing.assert_array_equal(to_np(after["state"][k]["exp_avg"]),
                                      to_np(before["state"][k]["exp_avg"]))


# ---- clip_grad_norm_ ----

@pytest.mark.parametrize("norm_type", [2.0, math.inf, "inf"])
def test_clip_grad_norm_matches_torch(norm_type):
    shapes = [(4, 3), (5,), (1,)]
    ours, ref = _twins(*shapes)
    _set_grads(ours, ref, shapes)
    norm = nn.utils.clip_grad_norm_(ours, 0.5, norm_type)
    tnorm = torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type)
    # float64 gradients: a float64 norm, as torch's (it was float32, the clipped gradients 6e-9 off)
    assert tuple(norm.shape) == () and norm.dtype == ls.float64
    assert abs(norm.item() - tnorm.item()) < 1e-14 * tnorm.item()
    for p, t in zip(ours, ref):
        assert_close(p.grad, t.grad, tol=1e-14)
    # float32 gradients: float32
    w = ls.tensor(randn(7), dtype=ls.float32, requires_grad=True)
    w.grad = ls.tensor(randn(7), dtype=ls.float32)
    assert nn.utils.clip_grad_norm_([w], 0.5, norm_type).dtype == ls.float32


def test_clip_grad_norm_takes_a_lone_tensor():
    (w,), (tw,) = _twins((6, 4))
    _set_grads([w], [tw], [(6, 4)])
    norm = nn.utils.clip_grad_norm_(w, 0.1)
    torch.nn.utils.clip_grad_norm_(tw, 0.1)
    assert norm.item() > 0.1
    assert_close(w.grad, tw.grad, tol=1e-6)


def test_clip_grad_norm_edge_cases_like_torch():
    (w,), (tw,) = _twins((3,))
    for no_grads in (nn.utils.clip_grad_norm_([w], 1.0), nn.utils.clip_grad_norm_([], 1.0)):
        assert tuple(no_grads.shape) == () and no_grads.item() == 0.0
    _set_grads([w], [tw], [(3,)])
    nn.utils.clip_grad_norm_([w], 0.0)  # torch takes max_norm 0: every gradient becomes zero
    torch.nn.utils.clip_grad_norm_([tw], 0.0)
    assert not to_np(w.grad).any() and not to_np(tw.grad).any()
    # an empty gradient has no elements to bound the max-abs norm (torch raises for it)
    empty = ls.zeros(0, dtype=ls.float64, requires_grad=True)
    empty.grad = ls.zeros(0, dtype=ls.float64)
    w.grad = ls.tensor([0.5, -2.0, 1.0], dtype=ls.float64)
    assert nn.utils.clip_grad_norm_([empty, w], 4.0, math.inf).item() == 2.0
    assert nn.utils.clip_grad_norm_([empty], 4.0, math.inf).item() == 0.0


def test_clip_grad_norm_rejects_bad_arguments():
    w = ls.tensor(randn(3), requires_grad=True)
    with pytest.raises(ValueError, match="max_norm must be non-negative, got -1.0"):
        nn.utils.clip_grad_norm_([w], -1.0)  # checked even with no gradient to clip
    w.grad = ls.tensor(randn(3))
    with pytest.raises(ValueError, match="norm_type must be 2.0 or inf, got 1.0"):
        nn.utils.clip_grad_norm_([w], 1.0, 1)
    w.grad = ls.tensor([1.0, math.inf, 0.0], dtype=ls.float64)
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_([w], 1.0, error_if_nonfinite=True)
    assert math.isinf(nn.utils.clip_grad_norm_([w], 1.0).item())  # scaled anyway, as in torch


def test_adamw_steps_a_strided_parameter_like_torch():
    # a transposed leaf: the fused kernel steps a contiguous copy that is written back
    a = randn(3, 4)
    p = nn.Parameter(ls.tensor(a).t())
    t = torch.nn.Parameter(torch.tensor(a).t())
    assert not p.is_contiguous()
    opt, topt = ls.optim.AdamW([p], lr=0.1, weight_decay=0.1), torch.optim.AdamW([t], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        g = randn(4, 3)
        p.grad, t.grad = ls.tensor(g), torch.tensor(g)
        opt.step()
        topt.step()
    assert_close(p, t, tol=1e-12)


def test_load_state_dict_refuses_a_torch_optimizers_state():
    (a,), (ta,) = _twins((2, 3))
    topt = torch.optim.AdamW([ta], lr=0.1)
    ta.grad = torch.ones(2, 3, dtype=torch.float64)
    topt.step()
    opt = ls.optim.AdamW([a], lr=0.1)
    with pytest.raises(TypeError, match="state 'step' of parameter 0 is a Tensor.*torch optimizer"):
        opt.load_state_dict(topt.state_dict())
    assert opt.state == {}  # nothing changed
