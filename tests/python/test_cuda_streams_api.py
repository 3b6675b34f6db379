"""llmscratch.cuda's stream, event and pinned-memory API on a machine without a GPU: everything
is present, and each call that needs a device raises a RuntimeError naming the call and what is
missing. The behaviour on a GPU is tested in cuda/test_cuda_streams.py."""
import numpy as np
import pytest

import llmscratch as ls
import llmscratch.cuda as cuda
from conftest import randn

no_gpu = pytest.mark.skipif(cuda.is_available(), reason="checks the errors raised without a GPU")
MISSING = r"(built without CUDA|no CUDA device is available)"


def test_api_is_present():
    for name in ("Stream", "Event", "current_stream", "default_stream", "set_stream", "stream",
                 "synchronize", "is_available"):
        assert callable(getattr(cuda, name)), name
    for name in ("synchronize", "query", "wait_stream", "wait_event", "record_event"):
        assert callable(getattr(cuda.Stream, name)), name
    for name in ("record", "synchronize", "query", "elapsed_time", "wait"):
        assert callable(getattr(cuda.Event, name)), name
    assert callable(ls.Tensor.pin_memory) and callable(ls.Tensor.is_pinned)


@no_gpu
@pytest.mark.parametrize("what,call", [
    ("Stream", lambda: cuda.Stream()),
    ("Stream", lambda: cuda.Stream(priority=-1)),
    ("Stream.priority_range", lambda: cuda.Stream.priority_range()),
    ("Event", lambda: cuda.Event(enable_timing=True)),
    ("current_stream", lambda: cuda.current_stream()),
    ("default_stream", lambda: cuda.default_stream(0)),
    ("set_stream", lambda: cuda.set_stream(None)),
    ("synchronize", lambda: cuda.synchronize()),
])
def test_clear_errors_without_a_gpu(what, call):
    with pytest.raises(RuntimeError, match=rf"^{what}: .*{MISSING}"):
        call()


@no_gpu
def test_stream_context_without_a_gpu():
    with pytest.raises(RuntimeError, match=rf"^stream: .*{MISSING}"):
        with cuda.stream(object.__new__(cuda.Stream)):
            pass
    with cuda.stream(None):  # no stream: nothing to change, nothing to check
        pass


@no_gpu
def test_pin_memory_without_a_gpu():
    x = ls.tensor(randn(3, 5), dtype=ls.float32)
    assert not x.is_pinned()
    with pytest.raises(RuntimeError, match=rf"^pin_memory: .*{MISSING}"):
        x.pin_memory()


def test_non_blocking_on_the_cpu_is_a_plain_copy():
    a = randn(4, 7)
    x = ls.tensor(a)
    y = x.to("cpu", non_blocking=True)
    np.testing.assert_array_equal(y.numpy(), a)
    z = x.to(dtype=ls.float32, non_blocking=True)
    np.testing.assert_array_equal(z.numpy(), a.astype(np.float32))
    assert not z.is_pinned()


def test_pin_memory_rejects_device_tensors_by_name():
    if not cuda.is_available():
        pytest.skip("needs a CUDA tensor")
    with pytest.raises(ValueError, match="pin_memory: only CPU tensors can be pinned"):
        ls.zeros(3, device="cuda").pin_memory()


def test_bad_stream_arguments_are_named():
    if not cuda.is_available():
        pytest.skip("argument checks follow the device check")
    with pytest.raises(TypeError, match="set_stream: expected an llmscratch.cuda.Stream"):
        cuda.set_stream("side")
    with pytest.raises(ValueError, match="Stream: expected a CUDA device, got cpu"):
        cuda.Stream("cpu")
    with pytest.raises(TypeError, match="Stream: priority must be an int"):
        cuda.Stream(priority=0.5)
    with pytest.raises(TypeError, match="stream: expected an llmscratch.cuda.Stream or None"):
        with cuda.stream(3):
            pass
