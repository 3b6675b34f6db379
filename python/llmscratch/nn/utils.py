"""Gradient utilities."""
import math

import llmscratch_core as _core

from .._creation import zeros
from .._tensor import stack
from ..autograd import no_grad

_EPS = 1e-6  # torch's: keeps max_norm / (norm + eps) finite when every gradient is zero


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None):
    """Scale all gradients so their global norm (L2, or max-abs for norm_type inf) is at most
    max_norm, as torch.nn.utils.clip_grad_norm_ does; returns the norm before clipping as a 0-d
    tensor, float64 when a gradient is float64, else float32 (0 when no parameter has a gradient). parameters: an iterable of tensors or
    one tensor. Unless error_if_nonfinite asks for a check, nothing is read back to the host: the
    coefficient min(1, max_norm / (norm + 1e-6)) stays a tensor. foreach is accepted for torch's
    signature only: the norm is one fused op and the scaling one op per gradient either way."""
    if isinstance(parameters, _core.Tensor):
        parameters = [parameters]  # iterating a tensor would yield its rows, which have no grads
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be non-negative, got {max_norm}")
    if norm_type not in (2.0, math.inf):
        raise ValueError(f"clip_grad_norm_: norm_type must be 2.0 or inf, got {norm_type}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return zeros(())
    with no_grad():
        norm = _core.ops.global_norm(grads) if norm_type == 2.0 else _max_abs(grads)
        if error_if_nonfinite and not math.isfinite(norm.item()):
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                               f"non-finite ({norm.item()}), so it cannot be clipped; pass "
                               f"error_if_nonfinite=False to scale the gradients by it anyway")
        coef = (max_norm / (norm + _EPS)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(dtype=g.dtype))
    return norm


def _max_abs(grads):
    """The largest |element| over all gradients, as a 0-d tensor of global_norm's dtype (NaN if
    any is NaN)."""
    # 16-bit gradients through float32: the CPU backend has no 16-bit abs or max
    wide = _core.ops.check_global_norm_inputs(grads)
    peaks = [g.to(dtype=wide).abs().max() for g in grads if g.numel()]
    return stack(peaks).max() if peaks else zeros((), device=grads[0].device)
