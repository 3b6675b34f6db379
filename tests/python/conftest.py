"""Shared test helpers: torch as the float64 reference, conversions, error measures."""
import contextlib
import os

import numpy as np
import pytest

import llmscratch as ls

# Without a GPU the Triton kernels (tests/python/triton_backend) run in triton's CPU interpreter.
# It is chosen when triton.jit runs, so the variable is set here, before anything imports triton
# (a conftest.py in that folder would shadow this one for the `from conftest import` of others).
if not ls.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch = pytest.importorskip("torch")
torch.set_num_threads(2)


def pytest_configure(config):
    # The interpreter also evaluates masked-off lanes (exp(-inf - -inf), discarded by tl.where);
    # numpy's warnings about them say nothing about the results.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")


def pytest_collection_modifyitems(config, items):
    if not ls.cuda.is_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


_np_rng = np.random.default_rng()  # fresh inputs on every run


@contextlib.contextmanager
def raises_at_sync(match):
    """A CUDA index check (cuda/index_fault.cuh): the body queues its ops without raising, and
    the IndexError matching `match` comes at the next host synchronisation."""
    yield
    with pytest.raises(IndexError, match=match):
        ls.cuda.synchronize()


def randn(*shape, dtype=np.float64, scale=1.0):
    return (_np_rng.standard_normal(shape) * scale).astype(dtype)


def ls_tensor(arr, requires_grad=False):
    return ls.tensor(np.ascontiguousarray(arr), requires_grad=requires_grad)


def torch_tensor(arr, requires_grad=False):
    return torch.tensor(np.ascontiguousarray(arr), requires_grad=requires_grad)


def to_np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    if isinstance(t, np.ndarray):
        return t
    return np.asarray(t.detach())


def rel_err(a, b):
    a, b = to_np(a).astype(np.float64), to_np(b).astype(np.float64)
    assert not np.isnan(a).any(), "result contains NaN"
    denom = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (denom if denom > 0 else 1.0)


TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(a, b, dtype=np.float64, tol=None):
    err = rel_err(a, b)
    assert err < (tol or TOL[dtype]), f"relative error {err:.3e}"


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    yield
    assert ls.is_grad_enabled(), "a test left grad mode off"
