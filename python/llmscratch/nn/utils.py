"""Gradient utilities."""
import llmscratch_core as _core

from ..autograd import no_grad


def clip_grad_norm_(parameters, max_norm: float, eps: float = 1e-6):
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before
    clipping as a 0-d tensor. Nothing is read back to the host: the coefficient
    min(1, max_norm / (norm + eps)) stays a tensor."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be positive, got {max_norm}")
    with no_grad():
        norm = _core.ops.global_norm(grads)
        coef = (max_norm / (norm + eps)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(dtype=g.dtype))
    return norm
