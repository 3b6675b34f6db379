"""CUDA device queries, streams, events and synchronisation. The module imports on machines
without a GPU; is_available() says so, and everything that needs a device raises a RuntimeError
naming the call.

Streams work as in PyTorch: each thread has a current stream per device, the default stream
until changed with ``set_stream`` or a ``with llmscratch.cuda.stream(s):`` block. Every kernel
and copy of an op on that device is queued on it. Work on different streams may run
concurrently; order it with events (``Event.record`` then ``Stream.wait_event``, or
``Stream.wait_stream``). Streams created here do not synchronise implicitly with the default
stream. The caching allocator keeps blocks per stream: memory freed by work on one stream goes
only to later allocations on that stream. A tensor allocated on one stream and used on another
must stay alive (or be ordered back with wait_stream) until that use has finished; there is no
``Tensor.record_stream``.

Index errors of the CUDA ops (cross-entropy targets, index_select, gather, scatter_add, one_hot)
are found on the device, so that no op waits for the GPU: the IndexError, naming the op that
found it, is raised at the next synchronisation (a copy to the host such as ``.item()``,
``synchronize()``, ``Stream``/``Event`` ``.synchronize()`` or a ``.query()`` that finds the work
done), as torch's device-side asserts are.
"""
import contextlib
import threading

import llmscratch_core as _core


def is_available() -> bool:
    return _core.cuda_available()


def is_compiled() -> bool:
    """Whether this build contains the CUDA kernels (nvcc was found at build time)."""
    return _core.cuda_compiled()


def device_count() -> int:
    return _core.cuda_device_count()


def synchronize(device: int = 0) -> None:
    """Wait for all work on every stream of the device; raises an IndexError a CUDA op found
    since the last synchronisation."""
    _core.cuda_synchronize(_device_index(device, "synchronize"))


_SYNC_DEBUG_MODES = {"default": 0, 0: 0, "error": 2, 2: 2}


def set_sync_debug_mode(debug_mode) -> None:
    """As torch.cuda.set_sync_debug_mode: "default" (or 0) lets the host wait for the GPU;
    "error" (or 2) makes every wait (a blocking copy such as ``.item()``, ``.cpu()`` or a copy to
    the GPU, ``synchronize()``, ``Stream``/``Event`` ``.synchronize()``, an op that must read a
    size back) raise a RuntimeError naming it instead, to find the waits in a training step.
    torch's "warn" (1) is not offered."""
    if isinstance(debug_mode, bool) or debug_mode not in _SYNC_DEBUG_MODES:
        raise ValueError(f'set_sync_debug_mode: mode must be "default" (0) or "error" (2), got {debug_mode!r}')
    _core.cuda_set_sync_debug_mode(_SYNC_DEBUG_MODES[debug_mode])


def get_sync_debug_mode() -> int:
    """0 ("default") or 2 ("error"), as torch.cuda.get_sync_debug_mode."""
    return _core.cuda_get_sync_debug_mode()


def memory_stats(device: int = 0) -> dict:
    """The caching allocator's counters: allocated_bytes, reserved_bytes, peak_allocated_bytes,
    num_cuda_malloc, num_cuda_free."""
    return dict(_core.cuda_memory_stats(_device_index(device, "memory_stats")))


def empty_cache() -> None:
    """Return every cached, unused block (device memory and pinned host memory) to the driver."""
    _core.cuda_empty_cache()


def reset_peak_memory_stats(device: int = 0) -> None:
    """Restart peak_allocated_bytes from the bytes allocated now."""
    _core.cuda_reset_peak_memory_stats(_device_index(device, "reset_peak_memory_stats"))


def get_device_name(device: int = 0) -> str:
    return _core.cuda_device_name(_device_index(device, "get_device_name"))


# Dense peak FLOP/s from the vendors' data sheets (no sparsity): (16-bit tensor core, fp32 SIMT).
_PEAK_FLOPS = [
    ("H200", 989.4e12, 66.9e12),
    ("H100 PCIe", 756.0e12, 51.2e12),
    ("H100", 989.4e12, 66.9e12),  # SXM (HBM3)
    ("A100", 312.0e12, 19.5e12),
    ("L40S", 362.0e12, 91.6e12),
    ("RTX 4090", 165.2e12, 82.6e12),
]


def peak_flops(dtype="bfloat16", device: int = 0):
    """The device's peak FLOP/s for matmuls in dtype (bf16/fp16 tensor cores, or fp32), used as the
    denominator of MFU; None for a GPU not in the table."""
    name = get_device_name(device)
    sixteen = str(dtype).split(".")[-1] in ("bfloat16", "float16")
    for key, tc, fp32 in _PEAK_FLOPS:
        if key in name:
            return tc if sixteen else fp32
    return None


# ---- streams and events ------------------------------------------------------------------------

def _require(what: str) -> None:
    if not _core.cuda_compiled():
        raise RuntimeError(f"{what}: llmscratch was built without CUDA, so it has no streams, "
                           "events or pinned memory")
    if _core.cuda_device_count() == 0:
        raise RuntimeError(f"{what}: no CUDA device is available (llmscratch.cuda.is_available() "
                           "is False)")


def _device_index(device, what: str) -> int:
    """The index N of 'cuda', 'cuda:N', a cuda Device or an int N (None means 0)."""
    if device is None:
        return 0
    if isinstance(device, bool) or not isinstance(device, (int, str, _core.Device)):
        raise TypeError(f"{what}: expected a CUDA device such as 0 or 'cuda:0', got {device!r}")
    if isinstance(device, int):
        index = device
    else:
        d = _core.Device(device) if isinstance(device, str) else device
        if d.type != "cuda":
            raise ValueError(f"{what}: expected a CUDA device, got {d}")
        index = d.index
    if index < 0:
        raise ValueError(f"{what}: device index must be >= 0, got {index}")
    return index


# The Stream objects this thread made current, by device: they keep their CUDA streams alive while
# the C++ side holds the raw handle, and current_stream() gives back the same object.
_local = threading.local()


def _current_objects() -> dict:
    if not hasattr(_local, "streams"):
        _local.streams = {}
    return _local.streams


class Stream:
    """A CUDA stream: a queue of work on one device that runs in order.

    ``Stream(device=None, priority=0)`` creates a new stream (device 0 by default); a lower
    priority number is a higher priority, clamped by CUDA to the device's range
    (``Stream.priority_range()``). The stream is destroyed, after its queued work has finished,
    when the object is garbage collected.
    """

    def __init__(self, device=None, priority: int = 0):
        _require("Stream")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"Stream: priority must be an int, got {priority!r}")
        self.device_index = _device_index(device, "Stream")
        self.priority = priority
        self._handle = 0
        self._owned = False
        self._handle = _core.cuda_stream_create(self.device_index, priority)
        self._owned = True

    @classmethod
    def _existing(cls, handle: int, device_index: int) -> "Stream":
        """A Stream object for a stream it does not own (the default stream, or one set elsewhere)."""
        s = cls.__new__(cls)
        s.device_index, s.priority, s._handle, s._owned = device_index, 0, handle, False
        return s

    @staticmethod
    def priority_range() -> tuple:
        """(least, greatest) priority numbers of the device; greatest is the lowest number."""
        _require("Stream.priority_range")
        return tuple(_core.cuda_stream_priority_range())

    @property
    def cuda_stream(self) -> int:
        """The cudaStream_t as an int (0 for the legacy default stream)."""
        return self._handle

    @property
    def device(self):
        return _core.Device(f"cuda:{self.device_index}")

    def synchronize(self) -> None:
        """Wait until all work queued on this stream has finished."""
        _core.cuda_stream_synchronize(self.device_index, self._handle)

    def query(self) -> bool:
        """True when all work queued on this stream has finished."""
        return _core.cuda_stream_query(self.device_index, self._handle)

    def record_event(self, event: "Event | None" = None) -> "Event":
        """Record an event (a new one unless given) after the work queued so far; return it."""
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event: "Event") -> None:
        """Work queued on this stream from now on starts after `event` has completed. An event
        never recorded has nothing to wait for."""
        if not isinstance(event, Event):
            raise TypeError(f"Stream.wait_event: expected an llmscratch.cuda.Event, got {event!r}")
        if event._handle is None:
            return
        _core.cuda_stream_wait_event(self.device_index, self._handle, event._handle)

    def wait_stream(self, other: "Stream") -> None:
        """Work queued on this stream from now on starts after the work queued on `other` so far."""
        if not isinstance(other, Stream):
            raise TypeError(f"Stream.wait_stream: expected an llmscratch.cuda.Stream, got {other!r}")
        if other == self:
            return
        self.wait_event(other.record_event())

    def __eq__(self, other):
        return (isinstance(other, Stream) and self._handle == other._handle
                and self.device_index == other.device_index)

    def __hash__(self):
        return hash((self._handle, self.device_index))

    def __repr__(self):
        return f"<llmscratch.cuda.Stream device=cuda:{self.device_index} cuda_stream={self._handle:#x}>"

    def __del__(self):
        if getattr(self, "_owned", False) and self._handle:
            try:
                _core.cuda_stream_destroy(self.device_index, self._handle)
            except Exception:  # interpreter shutdown: the driver reclaims it
                pass


class Event:
    """A marker in a stream's work: ``record`` places it, ``synchronize``/``query`` wait for or
    test the work before it, ``Stream.wait_event`` orders another stream after it.
    ``enable_timing=True`` allows ``start.elapsed_time(end)`` in milliseconds. The CUDA event is
    created on the first record, on the recording stream's device."""

    def __init__(self, enable_timing: bool = False):
        _require("Event")
        self.enable_timing = bool(enable_timing)
        self._handle = None
        self._device = None

    def record(self, stream: "Stream | None" = None) -> None:
        """Record after the work queued so far on `stream` (the current stream by default)."""
        if stream is None:
            stream = current_stream()
        if not isinstance(stream, Stream):
            raise TypeError(f"Event.record: expected an llmscratch.cuda.Stream, got {stream!r}")
        if self._handle is None:
            self._handle = _core.cuda_event_create(stream.device_index, self.enable_timing)
            self._device = stream.device_index
        elif stream.device_index != self._device:
            raise ValueError(f"Event.record: the event belongs to cuda:{self._device}, the stream "
                             f"to cuda:{stream.device_index}")
        _core.cuda_event_record(self._handle, stream.device_index, stream._handle)

    def wait(self, stream: "Stream | None" = None) -> None:
        """Make `stream` (the current stream by default) wait for this event."""
        (current_stream() if stream is None else stream).wait_event(self)

    def query(self) -> bool:
        """True when the recorded work has finished (or the event was never recorded)."""
        return True if self._handle is None else _core.cuda_event_query(self._handle)

    def synchronize(self) -> None:
        """Wait until the recorded work has finished."""
        if self._handle is not None:
            _core.cuda_event_synchronize(self._handle)

    def elapsed_time(self, end: "Event") -> float:
        """Milliseconds between this event and `end`, both recorded with enable_timing=True and
        both completed."""
        if not isinstance(end, Event):
            raise TypeError(f"Event.elapsed_time: expected an llmscratch.cuda.Event, got {end!r}")
        if not (self.enable_timing and end.enable_timing):
            raise ValueError("Event.elapsed_time: both events need enable_timing=True")
        if self._handle is None or end._handle is None:
            raise ValueError("Event.elapsed_time: both events must be recorded first")
        return _core.cuda_event_elapsed_time(self._handle, end._handle)

    def __repr__(self):
        state = "unrecorded" if self._handle is None else f"cuda:{self._device}"
        return f"<llmscratch.cuda.Event {state} enable_timing={self.enable_timing}>"

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            try:
                _core.cuda_event_destroy(self._handle)
            except Exception:
                pass


def current_stream(device=None) -> Stream:
    """This thread's current stream on `device` (cuda:0 by default)."""
    _require("current_stream")
    index = _device_index(device, "current_stream")
    handle = _core.cuda_current_stream(index)
    held = _current_objects().get(index)
    if held is not None and held._handle == handle:
        return held
    return Stream._existing(handle, index)


def default_stream(device=None) -> Stream:
    """The legacy default stream of `device` (cuda:0 by default)."""
    _require("default_stream")
    return Stream._existing(0, _device_index(device, "default_stream"))


def set_stream(stream: Stream) -> None:
    """Make `stream` this thread's current stream on its device."""
    _require("set_stream")
    if not isinstance(stream, Stream):
        raise TypeError(f"set_stream: expected an llmscratch.cuda.Stream, got {stream!r}")
    _core.cuda_set_stream(stream.device_index, stream._handle)
    _current_objects()[stream.device_index] = stream


@contextlib.contextmanager
def stream(s: "Stream | None"):
    """``with stream(s):`` makes s the current stream on its device and restores the previous
    one on exit; ``stream(None)`` changes nothing."""
    if s is None:
        yield None
        return
    _require("stream")
    if not isinstance(s, Stream):
        raise TypeError(f"stream: expected an llmscratch.cuda.Stream or None, got {s!r}")
    prev = current_stream(s.device_index)
    set_stream(s)
    try:
        yield s
    finally:
        set_stream(prev)
