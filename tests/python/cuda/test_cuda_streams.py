"""CUDA streams, events and pinned memory (cuda/runtime.cu, llmscratch.cuda): the current stream
and its context manager, work on a side stream ordered with events and wait_stream, the caching
allocator keeping blocks per stream, event timing, pinned non_blocking copies (and a pinned
block not reused while a copy from it is queued), the loader's pinned staging, and DLPack
export to torch from a side stream."""
import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, rel_err, to_np, torch
from llmscratch.cuda import Event, Stream, current_stream, default_stream, set_stream, stream
from llmscratch.data import DataLoader, write_shard

pytestmark = pytest.mark.cuda

N = 1024


def long_chain(a, steps=12):
    """Queues `steps` matmuls of a (N, N): milliseconds of GPU work. Each product is scaled by
    1/sqrt(N) so that values stay O(1)."""
    acc = a
    for _ in range(steps):
        acc = (acc @ a) * (1.0 / np.sqrt(N))
    return acc


def test_current_stream_and_context_manager():
    assert current_stream() == default_stream() and current_stream().cuda_stream == 0
    s1, s2 = Stream(), Stream(priority=-1)
    assert s1.cuda_stream != 0 and s1 != s2 and str(s1.device) == "cuda:0"
    with stream(s1):
        assert current_stream() is s1
        with stream(s2):
            assert current_stream() is s2
        assert current_stream() is s1
    assert current_stream() == default_stream()
    with stream(None):
        assert current_stream() == default_stream()
    set_stream(s2)
    try:
        assert current_stream() is s2
    finally:
        set_stream(default_stream())
    least, greatest = Stream.priority_range()
    assert greatest <= least


def test_the_current_stream_is_per_thread():
    import threading
    s, seen = Stream(), []
    with stream(s):
        t = threading.Thread(target=lambda: seen.append(current_stream().cuda_stream))
        t.start()
        t.join()
    assert seen == [0]


def test_side_stream_work_ordered_with_events():
    x_np = randn(N, N) / np.sqrt(N)
    x = ls.tensor(x_np, dtype=ls.float32, device="cuda")  # queued on the default stream
    s = Stream()
    s.wait_event(default_stream().record_event())
    with stream(s):
        y = long_chain(x, 4)
        done = s.record_event()
    default_stream().wait_event(done)
    ref = x_np.astype(np.float32).astype(np.float64)
    acc = ref
    for _ in range(4):
        acc = (acc @ ref) / np.sqrt(N)
    assert rel_err(to_np(y.cpu()), acc) < 1e-4
    done.synchronize()
    assert done.query() and s.query()
    s.synchronize()


def test_wait_stream_orders_a_long_kernel_before_a_dependent_one():
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    expected = to_np(long_chain(a).cpu())  # the same chain on the default stream
    out = ls.zeros(N, N, device="cuda")
    s = Stream()
    s.wait_stream(default_stream())  # a and out are ready before s uses them
    with stream(s):
        out.copy_(long_chain(a))  # written late: the side stream is busy for a while
    default_stream().wait_stream(s)
    total = out.sum()  # the dependent kernel, on the default stream
    assert rel_err(to_np(out.cpu()), expected) < 1e-4  # an unordered read sees zeros: error 1
    assert abs(total.item() - expected.astype(np.float64).sum()) <= 1e-3 * np.abs(expected).sum()


def test_allocator_keeps_blocks_per_stream():
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    ls.cuda.synchronize()
    ls.cuda.empty_cache()  # no cached block of another test can answer the requests below
    s = Stream()
    n = 3 << 20  # 12 MiB of float32: no block of the 4 MiB matmul temporaries can serve it
    s.wait_stream(default_stream())
    with stream(s):
        busy = long_chain(a)  # s stays busy for a while
        x = ls.empty(n, device="cuda")  # its fill is queued behind that work
        x_ptr = x.data_ptr()
        del x  # back to s's pool while s's work on it may still be pending
    # Another stream may not receive that block: its kernels could overtake s's.
    y = ls.empty(n, device="cuda")
    y_ptr = y.data_ptr()
    assert y_ptr != x_ptr
    del y
    with stream(s):  # the same stream reuses its block without a synchronisation
        before = ls.cuda.memory_stats()["num_cuda_malloc"]
        z = ls.empty(n, device="cuda")
        assert z.data_ptr() == x_ptr
        assert ls.cuda.memory_stats()["num_cuda_malloc"] == before
        del z
    again = ls.empty(n, device="cuda")  # and the default stream its own
    assert again.data_ptr() == y_ptr
    s.synchronize()
    assert to_np(busy.cpu()).shape == (N, N)


def test_event_elapsed_time_and_errors():
    start, end = Event(enable_timing=True), Event(enable_timing=True)
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    start.record()
    long_chain(a, 4)
    end.record()
    end.synchronize()
    assert end.query() and start.elapsed_time(end) > 0
    plain = Event()
    plain.record()
    with pytest.raises(ValueError, match="enable_timing"):
        start.elapsed_time(plain)
    with pytest.raises(ValueError, match="recorded"):
        Event(enable_timing=True).elapsed_time(end)
    assert Event().query()  # never recorded: nothing to wait for
    with pytest.raises(TypeError, match="wait_event"):
        current_stream().wait_event("not an event")


@pytest.mark.parametrize("dtype", [ls.float32, ls.bfloat16, ls.int64, ls.uint8])
@pytest.mark.parametrize("shape", [(1,), (3, 1001), (127, 65)])
def test_pinned_non_blocking_round_trip(dtype, shape):
    x = ls.tensor(randn(*shape) * 50).to(dtype=dtype)
    p = x.pin_memory()
    assert p.is_pinned() and not x.is_pinned() and not p.is_cuda
    assert p.pin_memory().data_ptr() == p.data_ptr()  # already pinned: no copy
    assert to_np(p.float()).tolist() == to_np(x.float()).tolist()
    g = p.to("cuda", non_blocking=True)
    assert not g.is_pinned()
    back = g.cpu()
    np.testing.assert_array_equal(to_np(back.float()), to_np(x.float()))
    # a non-contiguous pinned view goes through a pageable copy: still correct
    if len(shape) == 2:
        t = p.transpose(0, 1).to("cuda", non_blocking=True)
        np.testing.assert_array_equal(to_np(t.cpu().float()), to_np(x.transpose(0, 1).float()))
    # non_blocking from pageable memory is an ordinary (blocking) copy
    np.testing.assert_array_equal(to_np(x.to("cuda", non_blocking=True).cpu().float()), to_np(x.float()))


def test_pinned_block_is_not_reused_while_a_copy_reads_it():
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    first, second = randn(1 << 18), randn(1 << 18)
    for _ in range(3):
        long_chain(a)  # the copy below waits behind this work
        src = ls.tensor(first, dtype=ls.float32).pin_memory()
        g = src.to("cuda", non_blocking=True)
        del src  # its block goes back to the pinned cache with the copy still queued
        other = ls.tensor(second, dtype=ls.float32).pin_memory()  # same size: must get another block
        np.testing.assert_array_equal(to_np(g.cpu()), first.astype(np.float32))
        del other


def test_side_stream_pinned_copy_then_compute():
    s = Stream()
    x_np = randn(257, 33)
    p = ls.tensor(x_np, dtype=ls.float32).pin_memory()
    with stream(s):
        g = p.to("cuda", non_blocking=True)
        y = g * 2
    s.synchronize()
    np.testing.assert_array_equal(to_np(y.cpu()), (x_np.astype(np.float32) * 2))


@pytest.fixture()
def shards(tmp_path):
    rng = np.random.default_rng()
    for i, n in enumerate([1000, 577, 1500]):
        write_shard(tmp_path / f"s_train_{i:06d}.bin", rng.integers(0, 5000, size=n))
    return tmp_path


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_pinned_staging_gives_the_same_batches(shards, prefetch):
    ref = DataLoader(shards, 4, 16, seed=3, as_numpy=True, prefetch=prefetch)
    gpu = DataLoader(shards, 4, 16, seed=3, device="cuda", prefetch=prefetch)
    batches = [gpu.next_batch() for _ in range(25)]  # many copies in flight, blocks recycled
    for b in batches:
        assert str(b.device) == "cuda:0" and b.dtype == ls.int64
        np.testing.assert_array_equal(b.cpu().numpy(), ref.next_batch())
    ref.close()
    gpu.close()


def test_dlpack_to_torch_from_a_side_stream():
    s = Stream()
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    s.wait_stream(default_stream())
    with stream(s):
        y = long_chain(a)
        expected = to_np(y.cpu())  # y's values, read on s
        x = torch.from_dlpack(long_chain(a))  # torch's default stream is ordered after s's work
        # DLPack: stream None is the legacy default stream, which must wait for s's work too
        x_none = torch.utils.dlpack.from_dlpack(long_chain(a).__dlpack__(stream=None))
        # copy=True: the consumer waits for the clone too, not only for the work before it
        x_copy = torch.utils.dlpack.from_dlpack(long_chain(a).__dlpack__(stream=1, copy=True))
    for got in (x, x_none, x_copy):
        assert rel_err(got.cpu().numpy(), expected) < 1e-4
    s.synchronize()


def test_from_dlpack_on_a_side_stream_waits_for_torch():
    s = Stream()
    ta = torch.randn(N, N, device="cuda")
    tb = ta
    for _ in range(12):  # queued on torch's default stream, still running below
        tb = (tb @ ta) / np.sqrt(N)
    with stream(s):
        ours = ls.from_dlpack(tb)  # s is ordered after torch's pending work
        got = to_np((ours * 2).cpu())
    assert rel_err(got, (tb * 2).cpu().numpy()) < 1e-6


def test_triton_kernels_run_on_the_current_stream():
    pytest.importorskip("triton")
    import llmscratch.functional as F
    a = ls.tensor(randn(N, N), dtype=ls.float32, device="cuda")
    expected = to_np(F.gelu(long_chain(a)).cpu())  # native kernels, default stream
    s = Stream()
    s.wait_stream(default_stream())
    with stream(s):
        h = long_chain(a)  # native kernels on s, still running when gelu is queued
        with ls.backend("triton"):
            ls.backend_report(reset=True)
            y = F.gelu(h)  # launched by torch: must go on s, after h
            assert ls.backend_report()["gelu"] == "triton"
        got = to_np(y.cpu())
    assert rel_err(got, expected) < 1e-4
