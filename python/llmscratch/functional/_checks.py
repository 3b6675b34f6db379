"""Argument checks shared by the functional wrappers: a wrong type is a TypeError naming the op
and the argument."""
import builtins
import numbers

import llmscratch_core as _core


def require_int(value, name, op):
    if not isinstance(value, numbers.Integral) or isinstance(value, builtins.bool):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    return int(value)


def require_tensor(value, name, op):
    if not isinstance(value, _core.Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(value).__name__}")
    return value
