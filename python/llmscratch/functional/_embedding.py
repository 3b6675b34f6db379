"""Embedding lookup: rows of a weight table picked by integer ids (op "embedding",
cpp/ops/embedding.cpp). Only the weight gets a gradient; its backward is deterministic."""
import numbers

import llmscratch_core as _core

__all__ = ["embedding"]


def embedding(ids, weight, padding_idx=None):
    """weight[ids]: ids int32/int64 of any shape, weight (V, C) -> ids.shape + (C,).

    Argument order as in torch.nn.functional.embedding. Ids outside [0, V) raise IndexError on
    the CPU; on a GPU checking them would cost a host round trip, so their rows come out NaN.
    padding_idx (negative counts from the end): that row gets no gradient from this lookup, as
    torch's (the outputs at its positions are detached: one where over the output).
    """
    if not isinstance(ids, _core.Tensor) or not isinstance(weight, _core.Tensor):
        raise TypeError(f"embedding: ids and weight must be Tensors, got {type(ids).__name__} "
                        f"and {type(weight).__name__}")
    if ids.dtype not in (_core.DType.int32, _core.DType.int64):
        raise TypeError(f"embedding: ids must be int32 or int64, got {ids.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (V, C), got shape {tuple(weight.shape)}")
    out = _core.call("embedding", [weight, ids], {})[0]
    if padding_idx is None:
        return out
    pad = padding_row(padding_idx, weight.shape[0], "embedding")
    if not out.requires_grad:
        return out
    return _core.ops.where((ids == pad).unsqueeze(-1), out.detach(), out)


def padding_row(padding_idx, V, op):
    """padding_idx as a row of a table of V rows (negative counts from the end), checked."""
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral) or not -V <= padding_idx < V:
        raise ValueError(f"{op}: padding_idx must be in [-{V}, {V}), an integer, got {padding_idx!r}")
    return int(padding_idx) % V
