"""Dtypes and devices: thin names over the core's enum and Device type."""
import llmscratch_core as _core

dtype = _core.DType
float32 = _core.DType.float32
float64 = _core.DType.float64
bfloat16 = _core.DType.bfloat16
float16 = _core.DType.float16
int32 = _core.DType.int32
int64 = _core.DType.int64
bool_ = _core.DType.bool
uint8 = _core.DType.uint8

device = _core.Device


def as_device(d) -> "_core.Device":
    if d is None:
        return _core.Device("cpu")
    if isinstance(d, _core.Device):
        return d
    if isinstance(d, str):
        return _core.Device(d)
    raise TypeError(f"expected a device such as 'cpu' or 'cuda:0', got {d!r}")


def as_dtype(d, default=None) -> "_core.DType":
    if d is None:
        return default
    if isinstance(d, _core.DType):
        return d
    raise TypeError(f"expected an llmscratch dtype such as llmscratch.float32, got {d!r}")

# Print dtypes the way they are spelled in code: llmscratch.float32.
dtype.__repr__ = lambda self: f"llmscratch.{self.name}"
dtype.__str__ = dtype.__repr__
