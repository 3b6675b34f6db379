"""CUDA runtime: device tensors, copies both ways, the Philox stream reproduced on the GPU,
zero-copy DLPack with torch CUDA tensors. Skipped without a GPU."""
import os

import numpy as np
import pytest

import llmscratch as ls
from conftest import to_np, torch

pytestmark = pytest.mark.cuda


def test_module_reports_the_device():
    assert ls.cuda.is_compiled() and ls.cuda.is_available()
    assert ls.cuda.device_count() >= 1


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16, ls.float16, ls.int64, ls.int32, ls.uint8, ls.bool])
def test_factories_and_round_trip(dtype):
    z = ls.full((3, 5), 1, dtype=dtype, device="cuda")
    assert str(z.device) == "cuda:0" and z.dtype == dtype
    assert z.cpu().float().tolist() == [[1.0] * 5] * 3
    a = (np.arange(15).reshape(3, 5) % 7).astype(np.float32)
    back = ls.tensor(a).to(dtype=dtype).cuda().cpu()
    np.testing.assert_array_equal(to_np(back.float()), to_np(ls.tensor(a).to(dtype=dtype).float()))
    assert ls.arange(0, 10, 3, device="cuda").tolist() == [0, 3, 6, 9]


def test_philox_streams_match_the_cpu():
    for fn in (ls.rand, ls.randn):
        ls.manual_seed(7)
        cpu = to_np(fn(1001))
        ls.manual_seed(7)
        gpu = to_np(fn(1001, device="cuda").cpu())
        if fn is ls.rand:
            np.testing.assert_array_equal(cpu, gpu)
        else:
            np.testing.assert_allclose(cpu, gpu, rtol=2e-6, atol=2e-6)
    ls.manual_seed(3)
    a = ls.randint(0, 50257, (4096,))
    ls.manual_seed(3)
    b = ls.randint(0, 50257, (4096,), device="cuda")
    assert a.tolist() == b.cpu().tolist()


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.bfloat16, ls.float16])
def test_philox_rand_and_randn_match_the_cpu_in_every_float_dtype(dtype):
    # rand: k 2^-d with the dtype's d significand bits (53 from two words for float64), bitwise;
    # randn: float32 Box-Muller rounded, or float64 math for float64, to the last bits of log/sin/cos
    n = (1 << 20) + 3
    ls.manual_seed(17)
    cpu = to_np(ls.rand(n, dtype=dtype).double())
    ls.manual_seed(17)
    gpu = to_np(ls.rand(n, dtype=dtype, device="cuda").cpu().double())
    np.testing.assert_array_equal(cpu, gpu)
    assert gpu.min() >= 0 and gpu.max() < 1  # a 16-bit rand never rounds up to 1.0
    if dtype == ls.float64:
        assert np.mean(gpu != gpu.astype(np.float32)) > 0.99
    ls.manual_seed(17)
    cpu = to_np(ls.randn(4099, dtype=dtype).double())
    ls.manual_seed(17)
    gpu = to_np(ls.randn(4099, dtype=dtype, device="cuda").cpu().double())
    if dtype == ls.float64:
        np.testing.assert_allclose(cpu, gpu, rtol=1e-14, atol=1e-14)
        assert np.mean(gpu != gpu.astype(np.float32)) > 0.99
    else:  # one rounding step of the dtype apart at most where float32 math differs in a last bit
        tol = {ls.float32: 2e-6, ls.bfloat16: 2 ** -7, ls.float16: 2 ** -10}[dtype]
        np.testing.assert_allclose(cpu, gpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("low,high,dtype", [(0, 50257, ls.int64), (-5, 1 << 32, ls.int64),
                                            (0, 1 << 48, ls.int64), (1 << 60, (1 << 60) + (1 << 40), ls.int64),
                                            (-(1 << 63), (1 << 63) - 1, ls.int64),
                                            (-(1 << 31), 1 << 31, ls.int32), (0, 256, ls.uint8),
                                            (0, 1 << 40, ls.float64), (-100, 100, ls.float32)])
def test_philox_randint_matches_the_cpu_on_32_and_64_bits(low, high, dtype):
    ls.manual_seed(23)
    cpu = ls.randint(low, high, (4099,), dtype=dtype).tolist()
    ls.manual_seed(23)
    gpu = ls.randint(low, high, (4099,), dtype=dtype, device="cuda").cpu().tolist()
    assert cpu == gpu
    assert min(gpu) >= low and max(gpu) < high
    assert max(gpu) - low > (high - low) // 2  # 32-bit words would stay below 2^32 past low


def test_dlpack_with_torch_cuda_shares_memory():
    t = ls.randn(4, 6, device="cuda")
    x = torch.from_dlpack(t)
    assert x.is_cuda and x.data_ptr() == t.data_ptr()
    x.mul_(2)
    torch.cuda.synchronize()
    y = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    ours = ls.from_dlpack(y)
    torch.cuda.synchronize()
    assert str(ours.device) == "cuda:0" and ours.data_ptr() == y.data_ptr()
    assert ours.cpu().tolist() == y.cpu().tolist()


def test_missing_kernels_and_devices_are_clear_errors():
    import llmscratch_core as core
    if not core.has_op("cpu_only_test_op"):  # an op with a CPU kernel alone
        core.declare_op("cpu_only_test_op")
        core.register_kernel("cpu_only_test_op", "cpu", lambda inputs, attrs: [inputs[0]])
    t = ls.ones(3, device="cuda")
    with pytest.raises(NotImplementedError, match="op 'cpu_only_test_op' has no implementation for device cuda:0"):
        core.call("cpu_only_test_op", [t])
    with pytest.raises(ValueError, match="does not exist"):
        ls.ones(3, device=f"cuda:{ls.cuda.device_count()}")
    with pytest.raises(ValueError, match="one device"):
        ls.ones(3) + t


def test_bad_device_indices_raise_and_leave_no_error_behind():
    n = ls.cuda.device_count()
    for call in (lambda d: ls.cuda.memory_stats(d), lambda d: ls.cuda.reset_peak_memory_stats(d),
                 lambda d: ls.cuda.synchronize(d), lambda d: ls.cuda.get_device_name(d)):
        for d in (-1, n):
            with pytest.raises(ValueError, match="does not exist|must be >= 0"):
                call(d)
    x = ls.ones(4, device="cuda")
    assert (x + 1).cpu().tolist() == [2.0] * 4  # the next launch sees no stale error


@pytest.mark.skipif(ls.cuda.device_count() < 2, reason="needs two GPUs")
def test_copies_between_two_gpus():
    a = np.random.default_rng(0).standard_normal((64, 257)).astype(np.float32)
    x = ls.tensor(a, device="cuda:0")
    y = x.to("cuda:1")
    assert str(y.device) == "cuda:1"
    np.testing.assert_array_equal(to_np(y.cpu()), a)
    np.testing.assert_array_equal(to_np(x.t().to("cuda:1").cpu()), a.T)  # a strided source
    np.testing.assert_array_equal(to_np((y * 2).to("cuda:0").cpu()), a * 2)  # and back
    h = x.to(dtype=ls.bfloat16).to("cuda:1")
    assert h.dtype == ls.bfloat16 and to_np(h.float().cpu()).tolist() == to_np(x.to(dtype=ls.bfloat16).float().cpu()).tolist()
    # The copy runs on cuda:0's stream into a block of cuda:1's pool, which a kernel still queued
    # on cuda:1 may write: a freed matmul output is reused at once. The copy must wait for it, or
    # the matmul's late write overwrites the copied values. (On the legacy default streams the
    # runtime orders a copy between devices by itself: streams of their own on both.)
    n = 2048
    src = ls.full((n, n), 7.0, device="cuda:0")
    m = ls.randn(n, n, device="cuda:1")
    with ls.cuda.stream(ls.cuda.Stream(device=0)), ls.cuda.stream(ls.cuda.Stream(device=1)):
        for _ in range(3):
            busy = [m @ m for _ in range(8)]  # keeps cuda:1's stream busy for a while
            w = m @ m
            del w, busy
            y = src.to("cuda:1")
            assert (y != 7.0).sum().item() == 0


@pytest.mark.skipif(bool(os.environ.get("LLMSCRATCH_SANITIZER")),
                    reason="compute-sanitizer counts the failed cudaMalloc as an error")
def test_a_caught_out_of_memory_does_not_fail_the_next_op():
    with pytest.raises(RuntimeError, match="out of memory"):
        ls.empty(1 << 50, device="cuda")  # 4 PiB of float32
    x = ls.ones(4, device="cuda")
    assert (x * 3).cpu().tolist() == [3.0] * 4



def test_deepcopy_of_a_model_on_the_gpu_stays_there_with_its_own_weights():
    import copy

    model = ls.nn.Sequential(ls.nn.Embedding(11, 8), ls.nn.LayerNorm(8), ls.nn.Linear(8, 11)).to(device="cuda")
    twin = copy.deepcopy(model)
    assert str(twin[2].weight.device) == "cuda:0" and twin[2].weight.data_ptr() != model[2].weight.data_ptr()
    ids = ls.tensor(np.array([[3, 1, 10]])).cuda()
    before = to_np(model(ids).detach().cpu())
    np.testing.assert_array_equal(to_np(twin(ids).detach().cpu()), before)
    with ls.no_grad():
        twin[2].weight.fill_(0.0)  # the copy's forward reads its own weights, the model's stay
    np.testing.assert_array_equal(to_np(twin(ids).detach().cpu()), np.broadcast_to(to_np(twin[2].bias.detach().cpu()), (1, 3, 11)))
    np.testing.assert_array_equal(to_np(model(ids).detach().cpu()), before)


def test_boolean_mask_index_on_the_gpu():
    a = np.arange(12.0).reshape(3, 4)
    x = ls.tensor(a).cuda()
    np.testing.assert_array_equal(to_np(x[x > 5].cpu()), a[a > 5])
    x[x > 5] = -1.0  # a mask on the GPU, no host copy
    x[ls.tensor(np.array([True, False, False]))] = ls.tensor([9.0, 8.0, 7.0, 6.0]).cuda()  # a host mask
    b = a.copy()
    b[b > 5] = -1.0
    b[0] = [9.0, 8.0, 7.0, 6.0]
    np.testing.assert_array_equal(to_np(x.cpu()), b)


def test_integer_tensor_index_writes_on_the_gpu():
    a = np.zeros((4, 3))
    x = ls.tensor(a).cuda()
    x[ls.tensor([2, 0, 2]).cuda()] = ls.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).cuda()
    x[:, [1]] = -1.0
    b = a.copy()
    b[[2, 0, 2]] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]  # the last of repeated ids wins
    b[:, [1]] = -1.0
    np.testing.assert_array_equal(to_np(x.cpu()), b)


def test_deepcopy_of_a_bf16_model_and_adamw_keeps_the_float32_masters():
    import copy

    ls.manual_seed(0)
    lin = ls.nn.Linear(8, 4).to(device="cuda", dtype=ls.bfloat16)
    opt = ls.optim.AdamW(lin.parameters(), lr=1e-3)
    x = ls.randn(5, 8, device="cuda").to(dtype=ls.bfloat16)

    def step(m, o):
        o.zero_grad()
        m(x).float().sum().backward()
        o.step()
    for _ in range(3):
        step(lin, opt)
    twin, twin_opt = copy.deepcopy((lin, opt))
    step(lin, opt)
    step(twin, twin_opt)  # a master rebuilt from the bf16 weight would round differently
    for name in ("weight", "bias"):
        a, b = getattr(lin, name), getattr(twin, name)
        np.testing.assert_array_equal(to_np(a.float().cpu()), to_np(b.float().cpu()))
        sa, sb = opt.state[a._impl_id()], twin_opt.state[b._impl_id()]
        np.testing.assert_array_equal(to_np(sa["master"].cpu()), to_np(sb["master"].cpu()))


def test_embedding_padding_idx_on_the_gpu():
    emb = ls.nn.Embedding(5, 4, padding_idx=1).to(device="cuda")
    ids = ls.tensor(np.array([[1, 0, 1, 4]])).cuda()
    emb(ids).sum().backward()
    grad = to_np(emb.weight.grad.cpu())
    assert not grad[1].any() and grad[0].tolist() == [1.0] * 4 and grad[4].tolist() == [1.0] * 4
    assert not to_np(emb(ids).detach().cpu())[0, 0].any()  # the padding row is zeros


def test_predicates_and_autograd_grad_on_the_gpu():
    a = np.array([[1.0, np.nan], [np.inf, 0.0]], dtype=np.float32)
    x = ls.tensor(a).cuda()
    assert x.any().item() and not x.all().item()
    assert to_np(x.any(1).cpu()).tolist() == [True, True] and to_np(x.all(0).cpu()).tolist() == [True, False]
    assert to_np(x.isnan().cpu()).tolist() == np.isnan(a).tolist()
    assert to_np(x.isinf().cpu()).tolist() == np.isinf(a).tolist()
    assert ls.allclose(x, x, equal_nan=True) and 0.0 in x
    w = ls.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), requires_grad=True).cuda()
    (g,) = ls.autograd.grad((w * w).sum(), [w])
    np.testing.assert_array_equal(to_np(g.cpu()), 2 * np.arange(6.0).reshape(2, 3))
