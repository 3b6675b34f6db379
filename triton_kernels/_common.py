"""Helpers shared by the kernel modules: launch sizes and the float32 statistics dtype."""
import torch
import triton

from . import interpreted


def row_block(n: int, cap: int = 4096) -> int:
    """Power-of-two block for a row of n elements: the whole row up to `cap`, else `cap`-wide
    chunks that a loop walks (cap keeps register pressure bounded for long rows)."""
    return min(triton.next_power_of_2(max(n, 1)), cap)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics (mean, rstd, lse) of 16-bit inputs are kept in float32: a bfloat16 lse of
    about 10 would carry an error of 0.06, i.e. 6% in every probability of the backward."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def num_programs(device: torch.device, rows: int, per_sm: int = 4) -> int:
    """Programs for the kernels that stride over rows and keep per-program partial sums (norm
    weight gradients): `per_sm` per SM on a GPU, a handful in the interpreter."""
    if interpreted() or device.type != "cuda":
        return max(1, min(rows, 4))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(rows, per_sm * sms))


def row_warps(block: int) -> int:
    """Warps for a program that holds `block` elements of one row in registers."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


MAX_ROW = 65536  # longest row the one-block row kernels (norms) hold in registers


def check_row(op: str, C: int) -> None:
    if C > MAX_ROW:
        raise ValueError(f"{op} (triton): rows of {C} elements exceed the {MAX_ROW} this kernel "
                         "holds in registers; use the cuda or cpu backend")


ELEMENTWISE_BLOCK = 1024  # elements per program of the elementwise kernels (4 warps, 8 per thread)


def flat_grid(n: int):
    return (triton.cdiv(n, ELEMENTWISE_BLOCK),)


POINTWISE_WARPS = 8


def pointwise_block(dtype: torch.dtype) -> int:
    """Elements per program of the streaming pointwise kernels (swiglu, dropout) at
    POINTWISE_WARPS: four 16-byte vectors per thread and tensor (8192 elements for 16-bit types,
    4096 for float32), for more loads in flight than the earlier 1024 elements of 4 warps (one
    vector per thread for 16-bit types; bench/notes_triton_tuning.md)."""
    return POINTWISE_WARPS * 32 * 4 * 16 // dtype.itemsize
