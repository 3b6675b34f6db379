"""Embedding lookup: rows of a weight table picked by integer ids (op "embedding",
cpp/ops/embedding.cpp). Only the weight gets a gradient; its backward is deterministic."""
import llmscratch_core as _core

__all__ = ["embedding"]


def embedding(ids, weight):
    """weight[ids]: ids int32/int64 of any shape, weight (V, C) -> ids.shape + (C,).

    Argument order as in torch.nn.functional.embedding. Ids outside [0, V) raise IndexError on
    the CPU; on a GPU checking them would cost a host round trip, so their rows come out NaN.
    """
    if not isinstance(ids, _core.Tensor) or not isinstance(weight, _core.Tensor):
        raise TypeError(f"embedding: ids and weight must be Tensors, got {type(ids).__name__} "
                        f"and {type(weight).__name__}")
    if ids.dtype not in (_core.DType.int32, _core.DType.int64):
        raise TypeError(f"embedding: ids must be int32 or int64, got {ids.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (V, C), got shape {tuple(weight.shape)}")
    return _core.call("embedding", [weight, ids], {})[0]
