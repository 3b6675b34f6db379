"""Triton kernels for llmscratch, installed as ``llmscratch.triton_kernels``.

Registration convention (every kernel module follows it)
--------------------------------------------------------
* One module per op stem, the same stems as ``cpp/ops`` and ``cuda/`` (``layer_norm.py``,
  ``matmul.py``, ...), forward and backward side by side, a module docstring with the math, the
  shapes (B, T, C, V, NH, HS, E) and references.
* A kernel module defines a module-level dict ``KERNELS = {"op_name": fn, ...}``. ``fn(inputs,
  attrs) -> list`` takes the op's inputs as **torch tensors** (zero-copy views of the llmscratch
  tensors; ``None`` where an optional input is absent) and the attrs dict, and returns the outputs
  as torch tensors (allocated by torch; they go back zero-copy). Inputs, attrs and outputs match
  the op's registry signature in ``cpp/ops/<stem>.cpp`` exactly, backward ops included.
* Optional ``DTYPES = {"op_name": ("float32", ...)}`` narrows or widens the dtypes an op serves
  (keyed on the dtype of its first tensor input); the default is ``FLOAT_DTYPES``. A dtype not
  served falls through to the device's native backend.
* Optional ``SERVES = {"op_name": predicate}``: ``predicate(inputs, attrs) -> bool`` sees the
  llmscratch tensors; a call it rejects (a case the kernel does not cover) runs on the device's
  native backend instead, visibly in ``backend_report()``.
* Optional ``CHECKS = {"op_name": check}``: ``check(inputs, attrs)`` sees the llmscratch tensors
  of a call the kernel serves and raises for bad input, with the errors the CPU and CUDA kernels
  raise (their shared checks, bound as ``llmscratch_core.ops.check_*``): a kernel reading past a
  weight of the wrong size returns garbage instead.
* Optional ``ONE_BUFFER_OUTPUTS = {"op_name", ...}``: ops whose outputs may be views of one
  buffer that a consumer should see as one (gradients that the split's backward takes whole
  instead of concatenating them). The wrapper hands such outputs back as views of one llmscratch
  tensor. Other ops' outputs go back one by one, each on a storage of its own: a gradient that
  shares its storage with another is copied before it becomes a leaf's ``.grad`` (the layer
  norm's weight and bias gradients are two rows of one buffer).
* Modules whose names start with ``_`` hold shared helpers and are not scanned. Nothing else has
  to be edited to add a module: ``register_all`` finds every public module of this package.

How it runs
-----------
``register_all()`` is called by ``llmscratch.set_backend("triton")`` (and ``with
llmscratch.backend("triton")``, and at import when LLMSCRATCH_BACKEND=triton); it imports torch
and triton only then, so both stay optional. Each ``fn`` is wrapped and registered with
``llmscratch_core.register_kernel(op, "triton", wrapper, dtypes)``. The wrapper

* serves CUDA tensors; CPU tensors only when the Triton interpreter is on (``TRITON_INTERPRET=1``,
  how the kernels are tested without a GPU). The registry's implementations are not per device,
  so for a tensor the wrapper cannot serve it re-dispatches the op to the device's native backend
  (``llmscratch_core.call_native``, for the calling thread only); ``llmscratch.backend_report()``
  then shows that backend (``cpu``), not ``triton``;
* exchanges memory through DLPack both ways without copies: the output capsule keeps the torch
  tensor alive for as long as the llmscratch tensor lives (see ``ONE_BUFFER_OUTPUTS`` for outputs
  that view one torch storage);
* launches on llmscratch's current stream (``llmscratch.cuda.current_stream``), so Triton and
  native kernels of one stream stay in order: torch is told to use it for the call
  (``torch.cuda.ExternalStream``), which also makes torch allocate the outputs for that stream;
  when both libraries are on the default stream nothing is wrapped (a user who switched torch's
  stream alone still gets llmscratch's).
"""
import importlib
import os
import pkgutil

import llmscratch_core as _core

FLOAT_DTYPES = ("float32", "float16", "bfloat16")

_registered = False


# Read once, at import: triton.jit decides between compiling and interpreting when each kernel
# module is imported (after this package), so the setting cannot change under the kernels; and
# the launches ask for every call, where an environment lookup costs microseconds.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreted() -> bool:
    """True when triton runs kernels in its numpy interpreter."""
    return _INTERPRETED


def _wrap(op, fn, served_device, serves=None, one_buffer=False, check=None):
    import torch

    def run(inputs, attrs):
        dev = next((t.device for t in inputs if t is not None), None)
        if dev is None or dev.type != served_device or (serves and not serves(inputs, attrs)):
            # Not ours to serve (a CPU tensor without the interpreter, or a case the kernel does
            # not cover): the native backend runs it, on this thread only (switching the
            # process's backend for the call had let other threads' ops see it).
            return _core.call_native(op, inputs, attrs)
        attrs = _Attrs(op, attrs)
        if check:
            check(inputs, attrs)
        tin = [None if t is None else torch.from_dlpack(_core.to_dlpack(t, False)) for t in inputs]
        if dev.type == "cpu":
            tin = _one_storage_per_allocation(tin)
        if dev.type == "cuda":
            stream = _core.cuda_current_stream(dev.index)
            with torch.cuda.device(dev.index):
                if stream != 0:
                    with torch.cuda.stream(torch.cuda.ExternalStream(stream, device=dev.index)):
                        outs = fn(tin, attrs)
                # (torch's current stream as a handle, without making a Stream object)
                elif torch._C._cuda_getCurrentRawStream(dev.index) == 0:
                    outs = fn(tin, attrs)  # both on the default stream: nothing to switch
                else:  # torch's own default stream (an ExternalStream of 0 did not switch)
                    with torch.cuda.stream(torch.cuda.default_stream(dev.index)):
                        outs = fn(tin, attrs)
        else:
            outs = fn(tin, attrs)
        if one_buffer:
            return _views_of_one_buffer(outs)
        return [None if o is None else _export(o) for o in outs]

    run.__name__ = f"triton_{op}"
    return run


class _Attrs(dict):
    """An op's attrs: a required one that is missing raises a TypeError naming the op and the
    attr (the native kernels raise TypeError too: Attrs::i's "missing integer argument"),
    instead of a KeyError."""

    def __init__(self, op, attrs):
        super().__init__(attrs)
        self.op = op

    def __missing__(self, key):
        raise TypeError(f"{self.op}: missing argument '{key}'")


def _export(t):
    """The torch tensor t as an llmscratch tensor on the same memory (DLPack)."""
    import torch

    return _core.from_dlpack_capsule(torch.utils.dlpack.to_dlpack(t))


def _by_allocation(tensors):
    """{storage address: (the longest torch storage seen there, [the tensors on it])} for the
    tensors that are not None. Views of one llmscratch allocation, each imported through DLPack,
    get torch storages of their own that all start at the allocation, each as long as its view
    needs."""
    groups = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            longest, views = groups.get(storage.data_ptr(), (storage, []))
            groups[storage.data_ptr()] = (max(longest, storage, key=lambda s: s.nbytes()), views + [t])
    return groups


def _views_of_one_buffer(outs):
    """The torch outputs as llmscratch tensors, those that view one torch storage (and have one
    dtype) as views of one llmscratch tensor over all of it, so that the split's backward sees
    the gradients tile one buffer; they share its version counter. Others are exported one by
    one."""
    import torch

    wholes = {}
    for ptr, (storage, views) in _by_allocation([o for o in outs if o is not None and o.numel()]).items():
        if len(views) > 1 and all(v.dtype == views[0].dtype for v in views):
            # (_as_strided below does not check bounds: each view lies inside its own storage,
            # and `storage` is the longest of theirs, so inside it too)
            whole = torch.empty(0, dtype=views[0].dtype, device=views[0].device).set_(
                storage, 0, (storage.nbytes() // views[0].element_size(),), (1,))
            wholes[ptr] = _export(whole)
    result = []
    for o in outs:
        base = None if o is None or not o.numel() else wholes.get(o.untyped_storage().data_ptr())
        result.append(None if o is None else _export(o) if base is None else
                      base._as_strided(list(o.shape), list(o.stride()), o.storage_offset()))
    return result


def _one_storage_per_allocation(tensors):
    """The tensors with those that view one allocation remade as views of one torch storage.

    Triton's interpreter copies every kernel argument's storage to the host keyed by its address
    and reuses the first copy for the next view of the allocation, which may reach further (a
    resize error; see _by_allocation). On the GPU the kernels take pointers, and nothing needs
    this."""
    import torch

    shared = {ptr: storage for ptr, (storage, views) in _by_allocation(tensors).items() if len(views) > 1}
    return [t if t is None or t.untyped_storage().data_ptr() not in shared else
            torch.empty(0, dtype=t.dtype).set_(shared[t.untyped_storage().data_ptr()], t.storage_offset(),
                                               t.shape, t.stride())
            for t in tensors]


def kernel_modules():
    """The public kernel modules of this package, imported."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods


def register_all() -> None:
    """Register every module's KERNELS as backend "triton" (idempotent)."""
    global _registered
    if _registered:
        return
    served = "cpu" if interpreted() else "cuda"
    for mod in kernel_modules():
        dtypes, serves = getattr(mod, "DTYPES", {}), getattr(mod, "SERVES", {})
        checks, one_buffer = getattr(mod, "CHECKS", {}), getattr(mod, "ONE_BUFFER_OUTPUTS", ())
        for op, fn in getattr(mod, "KERNELS", {}).items():
            names = dtypes.get(op, FLOAT_DTYPES)
            wrapper = _wrap(op, fn, served, serves.get(op), op in one_buffer, checks.get(op))
            _core.register_kernel(op, "triton", wrapper, [getattr(_core.DType, n) for n in names])
    _registered = True
