"""Shared checks of the triton backend: run a registry op under `with ls.backend("triton")` on
the device and dtype under test, and the CPU op in float64 on the same (rounded) inputs.

Cases: CPU tensors in fp32/fp16 when triton runs in its interpreter (no GPU: bf16 is not
supported there), CUDA tensors in fp32/bf16/fp16 (marked cuda, skipped without a GPU)."""
import importlib
import os

import numpy as np
import pytest

import llmscratch as ls
import llmscratch_core as _core
from llmscratch import _backend
from conftest import raises_at_sync

pytest.importorskip("torch")
pytest.importorskip("triton")


# Whether triton runs kernels in its interpreter (tests/python/conftest.py turns it on when no GPU
# is visible): then the cases are CPU tensors, and the GPU-only tests are skipped.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
compiled_only = pytest.mark.skipif(INTERPRET, reason="the interpreter runs CPU tensors only")

TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


def _cases():
    cases = []
    if INTERPRET:
        cases += [("cpu", "float32"), ("cpu", "float16")]
    cases += [pytest.param("cuda", d, marks=pytest.mark.cuda)
              for d in ("float32", "bfloat16", "float16")]
    return cases


CASES = _cases()


def kernel_module(name):
    """The kernel module llmscratch.triton_kernels.<name>, for tests of its helpers and kernels."""
    _backend._triton_kernels()
    return importlib.import_module(f"llmscratch.triton_kernels.{name}")


def rng():
    return np.random.default_rng()


def rounded(arr, dtype):
    """arr rounded to dtype and back to float64: the exact inputs both sides see."""
    t = ls.tensor(np.asarray(arr, dtype=np.float64)).to(getattr(ls, dtype))
    return np.asarray(t.to(ls.float64))


def to_ls(arr, device, dtype):
    """A float numpy array becomes a tensor of `dtype` on `device`; integer arrays keep theirs."""
    if arr is None:
        return None
    t = ls.tensor(np.ascontiguousarray(arr))
    if arr.dtype.kind == "f":
        t = t.to(getattr(ls, dtype))
    return t.to(device)


def to_np(t):
    return None if t is None else np.asarray(t.detach().to("cpu").to(ls.float64))


def raises_index_error(device, match):
    """A bad index found by the native range check: the IndexError matching `match` comes at once
    on the CPU (the interpreter), at the next synchronisation after the body on a GPU."""
    return pytest.raises(IndexError, match=match) if device == "cpu" else raises_at_sync(match)


def triton_call(op, inputs, attrs):
    """The op on llmscratch tensors through the triton backend; asserts triton served it."""
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        outs = _core.call(op, inputs, attrs)
        served = ls.backend_report()[op]
    assert served == "triton", f"{op} was served by {served}"
    return outs


def cpu_call(op, inputs, attrs):
    with ls.backend("cpu"):
        return _core.call(op, inputs, attrs)


def as64(arrays):
    """CPU float64 tensors of the arrays (integer arrays keep their dtype): reference inputs."""
    return [None if a is None else
            ls.tensor(np.ascontiguousarray(a.astype(np.float64) if a.dtype.kind == "f" else a))
            for a in arrays]


def rel_err(a, b, floor=0.0):
    """||a - b|| / max(||b||, floor): `floor` keeps a gradient that cancels to almost 0 (the
    input gradient of a norm over one channel) from turning rounding into a huge relative error."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any() or np.isnan(b).any(), "result contains NaN"
    denom = max(np.linalg.norm(b), floor)
    return np.linalg.norm(a - b) / (denom if denom > 0 else 1.0)


def compare(op, got, ref, dtype, tol_scale=1.0, outputs=None, floor=0.0):
    """Relative Frobenius error of every output (or those listed) against the reference."""
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        if outputs is not None and i not in outputs:
            continue
        g, r = to_np(g), to_np(r)
        assert g.shape == r.shape, f"{op} output {i}: shape {g.shape} != {r.shape}"
        err = rel_err(g, r, floor * np.sqrt(r.size))
        assert err < TOL[dtype] * tol_scale, f"{op} output {i}: relative error {err:.2e}"


def check(op, arrays, attrs, device, dtype, tol_scale=1.0, outputs=None, floor=0.0):
    """Triton on `device`/`dtype` vs the float64 CPU op, both on the inputs rounded to dtype.
    Returns (triton outputs, reference outputs) as llmscratch tensors."""
    arrays = [rounded(a, dtype) if a is not None and a.dtype.kind == "f" else a for a in arrays]
    got = triton_call(op, [to_ls(a, device, dtype) for a in arrays], attrs)
    ref = cpu_call(op, as64(arrays), attrs)
    compare(op, got, ref, dtype, tol_scale, outputs, floor)
    return got, ref
