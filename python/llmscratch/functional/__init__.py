"""Every op as a function, torch.nn.functional-style. Each submodule wraps one family of
registered ops; all of them dispatch through the op registry."""
import importlib
import pkgutil

from ._elementwise import *  # noqa: F401,F403
from ._elementwise import __all__ as _elementwise_all

__all__ = list(_elementwise_all)
for _m in pkgutil.iter_modules(__path__):
    if _m.name.startswith("_") and _m.name != "_elementwise":
        _mod = importlib.import_module(f"{__name__}.{_m.name}")
        for _name in getattr(_mod, "__all__", []):
            globals()[_name] = getattr(_mod, _name)
            __all__.append(_name)
