"""DLPack exchange both ways shares memory: a write on one side is seen on the other. Also:
torch imports after llmscratch in one process."""
import subprocess
import sys

import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch


@pytest.mark.parametrize("dtype", [ls.float32, ls.float64, ls.int64, ls.int32, ls.bfloat16, ls.float16, ls.uint8, ls.bool])
def test_torch_from_our_tensor_shares_memory(dtype):
    t = ls.tensor(np.arange(12).reshape(3, 4) % 2).to(dtype=dtype)
    x = torch.from_dlpack(t)
    assert x.data_ptr() == t.data_ptr()
    assert tuple(x.shape) == t.shape
    assert x.float().tolist() == t.float().tolist()


def test_strided_views_cross_without_copy():
    t = ls.tensor(randn(4, 6))[1:, ::2].transpose(0, 1)
    x = torch.from_dlpack(t)
    assert x.data_ptr() == t.data_ptr() and x.stride() == t.stride()
    np.testing.assert_array_equal(x.numpy(), to_np(t))
    y = ls.from_dlpack(torch.arange(20.0).reshape(4, 5)[:, 1::2])
    assert y.stride() == (5, 2)
    assert y.tolist() == [[1, 3], [6, 8], [11, 13], [16, 18]]


def test_writes_are_visible_both_ways():
    t = ls.zeros(5)
    x = torch.from_dlpack(t)
    x[2] = 7
    assert t.tolist()[2] == 7
    src = torch.zeros(3)
    ours = ls.from_dlpack(src)
    ours[0] = 4.0
    assert src[0].item() == 4.0


def test_numpy_both_ways():
    t = ls.tensor(randn(3, 3))
    a = np.from_dlpack(t)
    a[0, 0] = 42
    assert t[0, 0].item() == 42
    arr = randn(2, 5)
    u = ls.from_numpy(arr)
    arr[1, 1] = -3
    assert u[1, 1].item() == -3
    assert t.numpy().ctypes.data == t.data_ptr()


def test_read_only_memory_is_copied_never_written():
    a = np.arange(4, dtype=np.float32)
    a.setflags(write=False)
    t = ls.from_numpy(a)
    t.fill_(0.0)
    assert a.tolist() == [0.0, 1.0, 2.0, 3.0] and t.tolist() == [0.0] * 4
    frozen = b"\x00" * 16
    ls.from_numpy(np.frombuffer(frozen, np.float32)).fill_(1.0)
    assert frozen == b"\x00" * 16
    with pytest.raises(BufferError, match="read-only"):
        ls.from_dlpack(a)


def test_lifetime_outlives_the_producer():
    x = torch.randn(1000)
    expected = x.numpy().copy()
    y = ls.from_dlpack(x)
    del x
    np.testing.assert_array_equal(to_np(y), expected)
    t = ls.randn(100)
    keep = to_np(t).copy()
    z = torch.from_dlpack(t)
    del t
    np.testing.assert_array_equal(z.numpy(), keep)


def test_torch_imports_after_llmscratch():
    # In a fresh interpreter, llmscratch first: a module exporting the symbols of a statically
    # linked C++ runtime made `import torch` crash there (CMakeLists.txt, --exclude-libs).
    code = "import llmscratch, llmscratch_core, torch; print(torch.ones(2).sum().item())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "2.0"
