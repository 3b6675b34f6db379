"""cross_entropy: fused log-softmax + NLL with ignore_index and label smoothing
(cpp/ops/cross_entropy.cpp; log_softmax is never materialised), optionally with the logits
gradient written over the logits in the forward (inplace_backward). nll_loss and mse_loss, as
torch's, composed of the differentiable ops."""
import numbers

import llmscratch_core as _core

from ..autograd import Function, is_grad_enabled
from ._checks import require_tensor
from ._elementwise import where

__all__ = ["cross_entropy", "nll_loss", "mse_loss"]

_INT = (_core.DType.int32, _core.DType.int64)


class _CrossEntropyInplace(Function):
    """The registry pair cross_entropy_inplace / cross_entropy_inplace_backward on the tape. The
    forward leaves d(loss)/d(logits) at an upstream gradient of 1 in the logits' memory; the
    backward scales it by the incoming gradient in place and hands that memory on as dlogits."""

    @staticmethod
    def forward(ctx, logits, targets, attrs):
        loss = _core.call("cross_entropy_inplace", [logits, targets], attrs)[0]
        # Held outside save_for_backward: the backward hands this memory on as dlogits and lets
        # go of it, so that a second backward through the loss finds it gone.
        ctx.buffer = logits.detach()
        ctx.version = logits._version  # any later write into the buffer is caught in backward
        ctx.reduction = attrs["reduction"]
        return loss

    @staticmethod
    def backward(ctx, g):
        if ctx.buffer is None:
            raise RuntimeError("cross_entropy(inplace_backward=True): the logits gradient was "
                               "already handed to an earlier backward through this loss; it "
                               "serves one")
        if ctx.buffer._version != ctx.version:
            raise RuntimeError("cross_entropy(inplace_backward=True): the logits, which hold their "
                               "gradient since the forward, were written before the backward")
        buf, ctx.buffer = ctx.buffer, None  # the buffer now belongs to the gradient flowing on
        dlogits = _core.call("cross_entropy_inplace_backward", [g, buf],
                             {"reduction": ctx.reduction})[0]
        return dlogits, None, None


def cross_entropy(logits, targets, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  inplace_backward=False):
    """logits (N, V) float, targets (N,) int32/int64 -> loss; torch semantics for ignore_index,
    reduction ('mean' over non-ignored targets, 'sum', 'none') and label_smoothing. A single
    sample, logits (V,) with a 0-d target, is accepted too. weight (torch's third argument) must
    be None: per-class weights are not implemented.

    inplace_backward=True (Liger-Kernel's name) saves the (N, V) gradient tensor of training: the
    forward writes d(loss)/d(logits) over the logits while it has each row, and the backward
    scales that memory by the incoming gradient and returns it as the logits' gradient. After the
    call the logits tensor holds that gradient, not the logits, so use it only where nothing else
    reads the logits afterwards (the loss of a model's own output). Every reduction, ignore_index
    and label smoothing work as in the plain path ('none' scales each row by its own incoming
    gradient); the lse is not exposed. The logits' rows must each be contiguous, at any row
    stride (the row-padded logits of a matmul on the GPU; other views raise ValueError rather
    than being copied, which would bring back the second tensor) and the logits must not
    be a leaf (a parameter or the caller's input is never overwritten); the gradient serves one
    backward, and a write into the logits before it raises. Where no gradient is recorded
    (no_grad, or logits not requiring grad) the plain path runs and the logits are left intact."""
    logits, targets, single = _class_loss_inputs("cross_entropy", logits, targets, weight, ignore_index,
                                                 reduction, ("logits", "targets", "V"))
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    in_place = bool(inplace_backward) and is_grad_enabled() and logits.requires_grad
    if in_place and (logits.is_leaf or _core.is_view_of_leaf(logits)):
        raise ValueError("cross_entropy: inplace_backward=True would overwrite a leaf tensor (a "
                         "parameter or the caller's input, or a view of one) with its gradient; "
                         "pass logits computed from it (e.g. the model's output)")
    attrs = {"ignore_index": int(ignore_index), "reduction": reduction,
             "label_smoothing": float(label_smoothing)}
    if in_place:
        loss = _CrossEntropyInplace.apply(logits, targets, attrs)
    else:
        loss = _core.call("cross_entropy", [logits, targets], attrs)[0]
    return loss.reshape([]) if single and reduction == "none" else loss


def refuse_class_weight(op, weight):
    """torch's per-class weight argument, taken at its default only."""
    if weight is not None:
        raise NotImplementedError(f"{op}: per-class weight is not implemented (pass weight=None)")


def _check_reduction(op, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_loss_inputs(op, scores, targets, weight, ignore_index, reduction, names):
    """The checks cross_entropy and nll_loss share, for scores (N, C) float and targets (N,)
    int32/int64 (names: how the op calls them and C). Returns them with a single sample, scores
    (C,) and a 0-d target, as one row, and whether it was one."""
    s_name, t_name, c = names
    require_tensor(scores, s_name, op)
    require_tensor(targets, t_name, op)
    if not scores.dtype.is_floating_point:
        raise TypeError(f"{op}: {s_name} must be floating-point, got {scores.dtype}")
    if targets.dtype not in _INT:
        raise TypeError(f"{op}: {t_name} must be int32 or int64, got {targets.dtype}")
    refuse_class_weight(op, weight)
    _check_reduction(op, reduction)
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    single = scores.dim() == 1 and targets.dim() == 0
    if single:
        scores, targets = scores.reshape(1, -1), targets.reshape(1)
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(f"{op}: expected {s_name} (N, {c}) and {t_name} (N,), got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)} (flatten (B, T, {c}) {s_name} with .view(-1, {c}))")
    return scores, targets, single


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):  # noqa: A002
    """-input[n, target[n]] for log-probabilities input (N, C) and targets (N,) int32/int64 (or
    input (C,) with a 0-d target), as torch's: 'mean' over the targets that are not ignore_index
    (NaN when all are), 'sum', or 'none' (0 at ignored targets). weight must be None."""
    input, target, single = _class_loss_inputs("nll_loss", input, target, weight, ignore_index, reduction,
                                               ("input", "target", "C"))
    kept = target != int(ignore_index)
    # ignored targets read class 0 (any index in range) and are zeroed after; the others are
    # range-checked by gather, which raises IndexError naming the bad one
    picked = input.gather(1, where(kept, target, 0).long().unsqueeze(1)).squeeze(1)
    losses = where(kept, -picked, 0.0)
    if reduction == "none":
        return losses.reshape([]) if single else losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / kept.sum().to(dtype=losses.dtype)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """(input - target)^2, averaged ('mean'), summed ('sum') or elementwise ('none'), as torch's;
    the two broadcast against each other."""
    op = "mse_loss"
    require_tensor(input, "input", op)
    require_tensor(target, "target", op)
    if not input.dtype.is_floating_point or not target.dtype.is_floating_point:
        raise TypeError(f"{op}: input and target must be floating-point, got {input.dtype} and {target.dtype}")
    _check_reduction(op, reduction)
    d = input - target
    sq = d * d
    return sq if reduction == "none" else sq.sum() if reduction == "sum" else sq.mean()

