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
