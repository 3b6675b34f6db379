"""Choosing which backend serves ops: ``set_backend``, ``with backend(...)`` or the
LLMSCRATCH_BACKEND environment variable. Fallback order for a tensor on device D with backend B:
B, then D's native backend (cpu or cuda), then device-independent implementations.

The "triton" backend lives in Python (``llmscratch.triton_kernels``): choosing it imports torch
and triton and registers the kernels, so neither is needed unless it is chosen."""
import contextlib
import importlib
import importlib.util
import os
import pathlib
import sys

import llmscratch_core as _core


def _triton_kernels():
    """The llmscratch.triton_kernels package: installed next to this package, or in a source
    checkout the top-level triton_kernels/ folder (loaded under the same name)."""
    name = __package__ + ".triton_kernels"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    src = pathlib.Path(__file__).resolve().parents[2] / "triton_kernels" / "__init__.py"
    if not src.is_file():
        raise ImportError("backend 'triton': llmscratch.triton_kernels is not installed; "
                          "reinstall llmscratch with `pip install .[triton]`")
    spec = importlib.util.spec_from_file_location(name, src,
                                                  submodule_search_locations=[str(src.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def enable_triton() -> None:
    """Import torch and triton and register the Triton kernels (once)."""
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as e:
        raise ImportError(f"backend 'triton' needs torch and triton ({e}); install them with "
                          "`pip install .[triton]` (or `pip install llmscratch[triton]`)") from e
    _triton_kernels().register_all()


def set_backend(name: str) -> None:
    """'cpu', 'cuda', 'triton', or 'default' (each device's native backend)."""
    if name == "triton":
        enable_triton()
    _core.set_backend(name)


def get_backend() -> str:
    return _core.current_backend() or "default"


@contextlib.contextmanager
def backend(name: str):
    prev = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(prev)


def backend_report(reset: bool = False) -> dict:
    """Which backend served each op since the last reset: {op: backend}."""
    return dict(_core.backend_report(reset))


# LLMSCRATCH_BACKEND=triton selects the backend in the core before any Python runs; register the
# kernels now so the first op finds them. An unknown name (which the core ignored) is refused.
_ENV_BACKEND = os.environ.get("LLMSCRATCH_BACKEND")
if _ENV_BACKEND is not None and not _core.known_backend(_ENV_BACKEND):
    raise ValueError(f"LLMSCRATCH_BACKEND={_ENV_BACKEND!r} is not a backend: expected cpu, cuda, "
                     "triton or default")
if _ENV_BACKEND == "triton":
    enable_triton()
