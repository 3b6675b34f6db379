"""CUDA runtime: device tensors, copies both ways, the Philox stream reproduced on the GPU,
zero-copy DLPack with torch CUDA tensors. Skipped without a GPU."""
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
