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


def reset_peak_memory_stats(device: int = 0) -> None:
    """Restart peak_allocated_bytes from the bytes allocated now."""
    _core.cuda_reset_peak_memory_stats(device)


def get_device_name(device: int = 0) -> str:
    return _core.cuda_device_name(device)


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
