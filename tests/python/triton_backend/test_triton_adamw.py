"""adamw_step (in place, many tensors per launch) and global_norm through the triton backend."""
import numpy as np
import pytest

import llmscratch as ls
from triton_check import CASES, as64, compare, cpu_call, kernel_module, rng, rounded, to_ls, triton_call

# several tensors of odd sizes, one over a 1024-element block, and an empty one
SHAPES = [(3,), (7, 5), (1, 1), (1100,), (0,)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("grad_scale", [None, 0.5])
def test_adamw_step(device, dtype, grad_scale):
    r = rng()
    arrays = [rounded(r.standard_normal(s), dtype) for s in SHAPES]  # params
    arrays += [rounded(r.standard_normal(s), dtype) for s in SHAPES]  # grads
    arrays += [rounded(r.standard_normal(s) * 0.1, dtype) for s in SHAPES]  # exp_avg
    arrays += [rounded(np.abs(r.standard_normal(s)) * 0.01, dtype) for s in SHAPES]  # exp_avg_sq
    attrs = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1, "step": 3}
    ours = [to_ls(a, device, dtype) for a in arrays]
    ref = as64(arrays)
    if grad_scale is not None:
        attrs["has_grad_scale"] = True
        ours.append(to_ls(np.array(grad_scale), device, "float32"))
        ref.append(ls.tensor(np.array(grad_scale)))
    assert triton_call("adamw_step", ours, attrs) == []
    cpu_call("adamw_step", ref, attrs)
    n = len(SHAPES)
    for role in (0, 2, 3):  # params, exp_avg, exp_avg_sq were updated in place
        # floor: a one-element parameter whose update nearly cancels it (p ~ lr * step) would turn
        # float32 rounding into a large relative error
        compare("adamw_step", ours[role * n:(role + 1) * n], ref[role * n:(role + 1) * n], dtype,
                tol_scale=2, floor=0.1)


@pytest.mark.parametrize("device,dtype", CASES)
def test_global_norm(device, dtype):
    r = rng()
    arrays = [rounded(r.standard_normal(s), dtype) for s in SHAPES]
    (norm,) = triton_call("global_norm", [to_ls(a, device, dtype) for a in arrays], {})
    assert tuple(norm.shape) == () and norm.dtype == ls.float32 and str(norm.device).startswith(device)
    want = np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in arrays))
    assert abs(float(norm.to("cpu").item()) - want) <= 1e-5 * want


def test_float64_parameters_fall_back_whole():
    """A float64 parameter behind a float32 one (the registry dispatches on the first tensor's
    dtype) would be updated in float32 by the kernels: the step goes to the native backend."""
    import llmscratch_core as core
    p = [ls.ones(3), ls.full([2], 1.0 + 1e-12, dtype=ls.float64)]
    g = [ls.zeros(3), ls.zeros(2, dtype=ls.float64)]
    m, v = [ls.zeros_like(t) for t in p], [ls.zeros_like(t) for t in p]
    core.backend_report(True)
    with ls.backend("triton"):
        core.ops.adamw_step(p, g, m, v, 0.0, 0.9, 0.99, 1e-8, 0.0, 1, None)
        core.call("global_norm", [p[1]], {})
    report = core.backend_report(False)
    assert report["adamw_step"] == "cpu" and report["global_norm"] == "cpu"
    assert p[1].tolist() == [1.0 + 1e-12] * 2


def test_mixed_precision_step_falls_back_to_the_native_backend():
    """16-bit gradients with float32 masters and model copies: not a triton kernel case, so the
    device's native backend serves it, and backend_report says so."""
    import llmscratch_core as core
    r = rng()
    p = [ls.tensor(r.standard_normal(s), dtype=ls.float32) for s in ((5,), (3, 4))]
    g = [ls.tensor(r.standard_normal(tuple(t.shape)), dtype=ls.bfloat16) for t in p]
    m, v = [ls.zeros(*t.shape) for t in p], [ls.zeros(*t.shape) for t in p]
    copies = [ls.zeros(*t.shape, dtype=ls.bfloat16) for t in p]
    core.backend_report(True)
    with ls.backend("triton"):
        core.ops.adamw_step(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 0.0, 1, None, model_copies=copies)
    assert core.backend_report(False)["adamw_step"] == "cpu"
    for t, c in zip(p, copies):
        np.testing.assert_array_equal(c.float().numpy(), t.to(dtype=ls.bfloat16).float().numpy())


@pytest.mark.parametrize("device,dtype", CASES)
def test_adamw_steps_with_gradients_that_move(device, dtype):
    # Three steps, each with fresh gradient tensors (new addresses, the same sizes), as every
    # training step's backward brings: the block tables are reused, the address table is not.
    r = rng()
    n = len(SHAPES)
    state = [rounded(r.standard_normal(s), dtype) for s in SHAPES]
    state += [rounded(r.standard_normal(s) * 0.1, dtype) for s in SHAPES]
    state += [rounded(np.abs(r.standard_normal(s)) * 0.01, dtype) for s in SHAPES]
    ours = [to_ls(a, device, dtype) for a in state]
    ref = as64(state)
    for step in (1, 2, 3):
        grads = [rounded(r.standard_normal(s), dtype) for s in SHAPES]
        attrs = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
                 "step": step}
        triton_call("adamw_step", ours[:n] + [to_ls(g, device, dtype) for g in grads] + ours[n:], attrs)
        cpu_call("adamw_step", ref[:n] + as64(grads) + ref[n:], attrs)
        compare("adamw_step", ours, ref, dtype, tol_scale=4, floor=0.1)


def test_block_tables_cover_every_element():
    torch = pytest.importorskip("torch")
    adamw = kernel_module("adamw")
    numels = (3, 1024, 1025, 1, 4096, 2047)
    n, blk_tensor, blk_start = adamw._block_tables(numels, "cpu")
    expect = [(k, s) for k, m in enumerate(numels) for s in range(0, m, adamw._BLOCK)]
    assert n.tolist() == list(numels)
    assert list(zip(blk_tensor.tolist(), blk_start.tolist())) == expect
    assert blk_tensor.dtype == torch.int32 and blk_start.dtype == torch.int64
