"""CUDA device queries. The module imports on machines without a GPU; is_available() says so."""
import llmscratch_core as _core


def is_available() -> bool:
    return _core.cuda_available()


def is_compiled() -> bool:
    """Whether this build contains the CUDA kernels (nvcc was found at build time)."""
    return _core.cuda_compiled()


def device_count() -> int:
    return _core.cuda_device_count()


def synchronize(device: int = 0) -> None:
    _core.cuda_synchronize(device)


def memory_stats(device: int = 0) -> dict:
    """The caching allocator's counters: allocated_bytes, reserved_bytes, peak_allocated_bytes,
    num_cuda_malloc, num_cuda_free."""
    return dict(_core.cuda_memory_stats(device))


def empty_cache() -> None:
    """Return every cached, unused block to the driver."""
    _core.cuda_empty_cache()
