"""Module containers."""
from collections import OrderedDict

from .module import Module


class _Numbered(Module):
    """Modules under the names 0, 1, ...: the appends and inserts of Sequential and ModuleList."""

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        """module at position index, the later ones moved up one (torch's renumbering)."""
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"insert: index {index} is out of range for {n} modules")
        if not isinstance(module, Module):
            raise TypeError(f"insert: a Module is expected, got {type(module).__name__}")
        index = index + n if index < 0 else index
        for i in range(n, index, -1):
            self._modules[str(i)] = self._modules[str(i - 1)]
        self._modules[str(index)] = module
        return self

    def _index(self, i):
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__}: index {i} is out of range for {n} modules")
        return i + n if i < 0 else i

    def __setitem__(self, i, module):
        setattr(self, list(self._modules)[self._index(i)], module)

    def __delitem__(self, i):
        """Deletes module i (or a slice), the rest renumbered 0, 1, ... as torch's."""
        keys = list(self._modules)
        for key in (keys[i] if isinstance(i, slice) else [keys[self._index(i)]]):
            del self._modules[key]
        modules = list(self._modules.values())
        self._modules.clear()
        for k, m in enumerate(modules):
            self._modules[str(k)] = m

    def pop(self, i=-1):
        module = self[i]
        del self[i]
        return module

    def __add__(self, other):
        out = type(self)()
        for m in list(self) + list(other):
            out.append(m)
        return out

    def __iadd__(self, modules):
        return self.extend(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(_Numbered):
    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        if isinstance(i, slice):  # a Sequential of the slice, keeping the names, as torch
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return list(self._modules.values())[i]


class ModuleList(_Numbered):
    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):  # the keys, as a dict's (Python's fallback indexed it with 0, 1, ...)
        return iter(self._modules)

    def __delitem__(self, key):
        del self._modules[key]

    def pop(self, key):
        return self._modules.pop(key)

    def clear(self):
        self._modules.clear()

    def update(self, modules):
        for name, m in (modules.items() if hasattr(modules, "items") else modules):
            self[name] = m

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()
