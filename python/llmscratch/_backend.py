"""Choosing which backend serves ops: ``set_backend``, ``with backend(...)`` or the
LLMSCRATCH_BACKEND environment variable. Fallback order for a tensor on device D with backend B:
B, then D's native backend (cpu or cuda), then device-independent implementations."""
import contextlib

import llmscratch_core as _core


def set_backend(name: str) -> None:
    """'cpu', 'cuda', 'triton', or 'default' (each device's native backend)."""
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
