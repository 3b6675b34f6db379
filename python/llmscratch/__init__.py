"""llmscratch: a large language model stack built from scratch.

The compiled core ``llmscratch_core`` holds tensors, the op registry, the autograd tape and the
CPU/CUDA kernels; this package gives it a torch-like face: ``Tensor``, factories, autograd,
``functional``, ``nn`` and ``optim``.
"""
import builtins

import llmscratch_core as _core

from . import _tensor  # noqa: F401  (attaches operators and methods to Tensor)
from ._backend import backend, backend_report, get_backend, set_backend
from ._creation import (arange, empty, empty_like, from_dlpack, from_numpy, full, full_like,
                        linspace, ones, ones_like, rand, rand_like, randint, randn, randn_like,
                        tensor, zeros, zeros_like)
from ._dtype import (bfloat16, bool_, device, dtype, float16, float32, float64, int32, int64,
                     uint8)
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from . import functional, cuda, autograd  # noqa: E402

Tensor = _core.Tensor
bool = bool_  # noqa: A001  (llmscratch.bool, as torch.bool)
half, double, long = float16, float64, int64

from ._tensor import (allclose, cat, equal, floor_divide, is_tensor, isclose, isfinite, isinf,  # noqa: E402
                      isnan, matmul, remainder, stack, where)
from . import nn, optim  # noqa: E402


def manual_seed(seed: int) -> None:
    """Seed the Philox generator used by every random op (CPU and CUDA draw the same numbers)."""
    if not isinstance(seed, int) or isinstance(seed, builtins.bool) or not 0 <= seed < 2**64:
        raise ValueError(f"manual_seed: seed must be an integer in [0, 2**64), got {seed!r}")
    _core.manual_seed(seed)


def get_rng_state():
    """(seed, offset) of the generator; pass it to set_rng_state to replay the same draws."""
    return _core.get_rng_state()


def set_rng_state(state) -> None:
    seed, offset = state
    _core.set_rng_state(int(seed), int(offset))


get_num_threads = _core.get_num_threads
set_num_threads = _core.set_num_threads

__version__ = "0.1.0"
