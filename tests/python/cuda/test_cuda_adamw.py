"""CUDA adamw_step and global_norm (cuda/adamw.cu) against the CPU ops on the same values:
float32 and float64 parameters, mixed precision (bfloat16/float16 gradients into float32 master
weights, 16-bit model copies written in the same launch), grad_scale read on the device, odd
sizes, an unaligned parameter view, more tensors than one launch's table holds; global_norm over
mixed dtypes, deterministic, on the device."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
from conftest import randn, rel_err
from cuda_vs_cpu import host

pytestmark = pytest.mark.cuda

HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def make_state(shapes, pdtype, device):
    params = [ls.tensor(randn(*s)).to(dtype=pdtype).to(device=device) for s in shapes]
    m = [ls.tensor(randn(*s) * 0.1).to(dtype=pdtype).to(device=device) for s in shapes]
    v = [ls.tensor(np.abs(randn(*s)) * 0.01).to(dtype=pdtype).to(device=device) for s in shapes]
    return params, m, v


def assert_states_close(gpu, cpu, pdtype):
    """Per element: float32 (or float64) rounding of GPU and CPU, with an absolute floor for
    moments that sum gradients of both signs."""
    rtol, atol = (1e-5, 1e-7) if pdtype == ls.float32 else (1e-12, 1e-15)
    for group_g, group_c in zip(gpu, cpu):
        for a, b in zip(group_g, group_c):
            np.testing.assert_allclose(host(a), host(b), rtol=rtol, atol=atol)


def step_both(shapes, pdtype, gdtype, cdtype, with_scale, steps=3):
    """The same AdamW steps on the GPU and on the CPU; returns both final states."""
    gpu = make_state(shapes, pdtype, "cuda")
    cpu = tuple([t.cpu() for t in group] for group in gpu)
    copies = {"cuda": [ls.zeros(*s, dtype=cdtype, device="cuda") for s in shapes] if cdtype else [],
              "cpu": [ls.zeros(*s, dtype=cdtype) for s in shapes] if cdtype else []}
    for step in range(1, steps + 1):
        grads = [ls.tensor(randn(*s)).to(dtype=gdtype) for s in shapes]
        scale = ls.tensor(0.6).to(dtype=ls.float32) if with_scale else None
        for dev, (p, m, v) in (("cuda", gpu), ("cpu", cpu)):
            _core.ops.adamw_step(p, [g.to(device=dev) for g in grads], m, v, HYPER["lr"], HYPER["beta1"],
                                 HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"], step,
                                 None if scale is None else scale.to(device=dev), model_copies=copies[dev])
    return gpu, cpu, copies


SHAPES = [(3, 5), (127,), (1,), (64, 33), (1023,), (4099,), (2, 3, 4)]


@pytest.mark.parametrize("gdtype", [ls.float32, ls.bfloat16, ls.float16])
@pytest.mark.parametrize("cdtype", [None, ls.bfloat16, ls.float16])
@pytest.mark.parametrize("with_scale", [False, True])
def test_adamw_mixed_precision_matches_cpu(gdtype, cdtype, with_scale):
    gpu, cpu, copies = step_both(SHAPES, ls.float32, gdtype, cdtype, with_scale)
    assert_states_close(gpu, cpu, ls.float32)
    for k, (a, b) in enumerate(zip(copies["cuda"], copies["cpu"])):
        assert a.dtype == cdtype
        # the copy is the rounded master weight (masters may differ in their last float32 bit)
        np.testing.assert_array_equal(host(a), host(gpu[0][k].to(dtype=cdtype)))
        assert rel_err(host(a), host(b)) < (1e-2 if cdtype == ls.bfloat16 else 2e-3)


@pytest.mark.parametrize("with_scale", [False, True])
def test_adamw_float64_matches_cpu(with_scale):
    gpu, cpu, _ = step_both(SHAPES, ls.float64, ls.float64, None, with_scale)
    assert_states_close(gpu, cpu, ls.float64)


def test_adamw_many_tensors_and_an_unaligned_view():
    shapes = [(k % 13 + 1,) for k in range(700)] + [(3 * 4096 + 5,)]
    gpu, cpu, _ = step_both(shapes, ls.float32, ls.bfloat16, None, True, steps=2)
    assert_states_close(gpu, cpu, ls.float32)
    # parameters that start one element into their storage take the element-by-element path
    base = [ls.tensor(randn(1 + n), dtype=ls.float32).cuda() for n in (5, 4096 + 3)]
    p = [b[1:] for b in base]
    g = [ls.tensor(randn(*t.shape)).to(dtype=ls.bfloat16).cuda() for t in p]
    m, v = [ls.zeros(*t.shape, device="cuda") for t in p], [ls.zeros(*t.shape, device="cuda") for t in p]
    pc, gc, mc, vc = ([t.cpu() for t in group] for group in (p, g, m, v))
    for dev_args in ((p, g, m, v), (pc, gc, mc, vc)):
        _core.ops.adamw_step(*dev_args, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    assert_states_close((p, m, v), (pc, mc, vc), ls.float32)


def test_adamw_skips_empty_and_checks_inputs():
    p = [ls.zeros(0, device="cuda"), ls.randn(5, device="cuda")]
    g = [ls.zeros(0, device="cuda"), ls.randn(5, device="cuda")]
    m = [ls.zeros(0, device="cuda"), ls.zeros(5, device="cuda")]
    v = [ls.zeros(0, device="cuda"), ls.zeros(5, device="cuda")]
    before = host(p[1])
    _core.ops.adamw_step(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    assert not np.array_equal(host(p[1]), before)
    with pytest.raises(TypeError, match="exp_avg 0 has dtype bfloat16"):
        _core.ops.adamw_step([p[1]], [g[1]], [m[1].to(dtype=ls.bfloat16)], [v[1]], 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)


def test_optimizer_step_with_clipping_on_the_gpu_matches_cpu():
    import llmscratch.nn as nn
    w0, b0, x0 = randn(5, 7), randn(5), randn(5, 7)
    results = []
    for device in ("cpu", "cuda"):
        w = ls.tensor(w0, dtype=ls.float32).to(device=device).requires_grad_()
        b = ls.tensor(b0, dtype=ls.float32).to(device=device).requires_grad_()
        x = ls.tensor(x0, dtype=ls.float32).to(device=device)
        opt = ls.optim.AdamW([w, b], lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            (((w * x).sum(1) + b) ** 2).mean().backward()
            nn.utils.clip_grad_norm_([w, b], 0.1)
            opt.step()
        results.append((host(w), host(b)))
    for ours, ref in zip(results[1], results[0]):
        assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("dtypes", [[ls.float32], [ls.bfloat16, ls.float16, ls.float32, ls.float64]])
def test_global_norm_matches_cpu_and_is_deterministic(dtypes):
    shapes = [(3, 5), (1,), (0,), (1023,), (3_000_001,), (64, 33)]
    ts = [ls.tensor(randn(*s)).to(dtype=dtypes[k % len(dtypes)]).cuda() for k, s in enumerate(shapes)]
    a = _core.ops.global_norm(ts)
    b = _core.ops.global_norm(ts)
    want = ls.float64 if ls.float64 in dtypes else ls.float32  # float64 when a tensor is float64
    assert str(a.device).startswith("cuda") and a.dtype == want and tuple(a.shape) == ()
    assert a.item() == b.item()
    ref = _core.ops.global_norm([t.cpu() for t in ts]).item()
    assert abs(a.item() - ref) <= 1e-6 * ref


def test_global_norm_many_tensors_and_strided():
    ts = [ls.tensor(randn(k % 7 + 1, 3)).cuda() for k in range(1500)]
    ts.append(ls.tensor(randn(40, 30)).cuda().transpose(0, 1)[::2])
    got = _core.ops.global_norm(ts).item()
    ref = _core.ops.global_norm([t.cpu() for t in ts]).item()
    assert abs(got - ref) <= 1e-6 * ref


@pytest.mark.parametrize("dtype", [ls.bfloat16, ls.float16])
def test_optimizer_16bit_parameters_on_the_gpu_match_cpu(dtype):
    w0 = randn(33, 17)
    grads = [randn(33, 17) for _ in range(3)]
    results = []
    for device in ("cpu", "cuda"):
        w = ls.tensor(w0).to(dtype=dtype).to(device=device).requires_grad_()
        opt = ls.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
        for g in grads:
            w.grad = ls.tensor(g).to(dtype=dtype).to(device=device)
            opt.step()
        results.append((host(opt.state_dict()["state"][0]["master"]), host(w)))
    (mc, wc), (mg, wg) = results
    assert rel_err(mg, mc) < 1e-6
    assert rel_err(wg, wc) < (1e-2 if dtype == ls.bfloat16 else 2e-3)
    np.testing.assert_array_equal(wg, host(ls.tensor(mg, dtype=ls.float32).to(dtype=dtype)))
