"""cross_entropy: fused log-softmax + NLL with ignore_index and label smoothing
(cpp/ops/cross_entropy.cpp; log_softmax is never materialised)."""
import numbers

import llmscratch_core as _core

__all__ = ["cross_entropy"]

_INT = (_core.DType.int32, _core.DType.int64)


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """logits (N, V) float, targets (N,) int32/int64 -> loss; torch semantics for ignore_index,
    reduction ('mean' over non-ignored targets, 'sum', 'none') and label_smoothing. A single
    sample, logits (V,) with a 0-d target, is accepted too."""
    if not isinstance(logits, _core.Tensor) or not isinstance(targets, _core.Tensor):
        raise TypeError("cross_entropy: logits and targets must be Tensors, got "
                        f"{type(logits).__name__} and {type(targets).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"cross_entropy: logits must be floating-point, got {logits.dtype}")
    if targets.dtype not in _INT:
        raise TypeError(f"cross_entropy: targets must be int32 or int64, got {targets.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"cross_entropy: ignore_index must be an integer, got {ignore_index!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    single = logits.dim() == 1 and targets.dim() == 0
    if single:
        logits, targets = logits.reshape(1, -1), targets.reshape(1)
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError("cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)} "
                         "(flatten (B, T, V) logits with .view(-1, V))")
    loss = _core.call("cross_entropy", [logits, targets],
                      {"ignore_index": int(ignore_index), "reduction": reduction,
                       "label_smoothing": float(label_smoothing)})[0]
    return loss.reshape([]) if single and reduction == "none" else loss
