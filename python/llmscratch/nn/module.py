"""Module and Parameter: named parameters, buffers and submodules, state_dict round trips,
train/eval, device and dtype moves."""
from collections import OrderedDict

import llmscratch_core as _core

from .._dtype import as_device
from ..autograd import no_grad

Tensor = _core.Tensor


class Parameter(Tensor):
    """A tensor that a Module registers as trainable (requires_grad=True by default). It is a
    handle on the given tensor, not a copy."""

    def __init__(self, data: Tensor, requires_grad: bool = True):
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter: expected a Tensor, got {type(data).__name__}")
        super().__init__(data.detach())
        if requires_grad:
            self.requires_grad = True

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of every layer and model. Assigning a Parameter, a Module or (through
    register_buffer) a Tensor to an attribute registers it under that name."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ----
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
            # A module backed by a C++ layer (self._impl) keeps the layer's tensor in step.
            impl = self.__dict__.get("_impl")
            if impl is not None and hasattr(impl, name):
                setattr(impl, name, value)
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if key in d and name in d[key]:
                return d[key][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            if name in d:
                del d[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is None:
            self._parameters[name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is state but not trained (moved by to(), saved if persistent)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)

    def add_module(self, name, module):
        self._modules[name] = module

    # ---- traversal ----
    def named_modules(self, prefix=""):
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop(0)
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            for child_name, child in m._modules.items():
                if child is not None:
                    stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        for m in self._modules.values():
            if m is not None:
                yield m

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def named_parameters(self, prefix="", recurse=True):
        """(name, parameter) pairs; a parameter shared by several modules appears once."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, m in mods:
            for name, p in m._parameters.items():
                if p is None or p._impl_id() in seen:
                    continue
                seen.add(p._impl_id())
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- state ----
    def state_dict(self):
        """name -> tensor (detached handles on the live parameters and persistent buffers; tied
        parameters appear under every name, as in torch)."""
        out = OrderedDict()
        for mod_name, m in self.named_modules():
            skip = m.__dict__.get("_non_persistent", set())
            for name, p in list(m._parameters.items()) + [
                    (n, b) for n, b in m._buffers.items() if n not in skip]:
                if p is not None:
                    out[f"{mod_name}.{name}" if mod_name else name] = p.detach()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values in place into the existing parameters and buffers (so optimizers and
        tied weights keep pointing at them). Returns (missing_keys, unexpected_keys)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        with no_grad():
            for k, target in own.items():
                if k not in state_dict:
                    continue
                src = state_dict[k]
                if not isinstance(src, Tensor):
                    from .._creation import tensor
                    src = tensor(src)
                if tuple(src.shape) != tuple(target.shape):
                    raise ValueError(f"load_state_dict: '{k}' has shape {tuple(src.shape)} in the "
                                     f"state dict but {tuple(target.shape)} in the model")
                target.copy_(src)
        return missing, unexpected

    # ---- modes and moves ----
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    def _apply(self, fn):
        """Replace every parameter and buffer by fn(tensor) (a move or cast)."""
        moved = {}
        for m in self.modules():
            for name, p in list(m._parameters.items()):
                if p is None:
                    continue
                key = p._impl_id()
                if key not in moved:
                    moved[key] = Parameter(fn(p.detach()), requires_grad=p.requires_grad)
                setattr(m, name, moved[key])
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = fn(b)
        return self

    def to(self, device=None, dtype=None):
        """Move parameters/buffers to a device and/or cast floating ones to dtype."""
        if isinstance(device, _core.DType):
            device, dtype = None, device
        dev = as_device(device) if device is not None else None

        def convert(t):
            if dev is not None:
                t = t.to(device=dev)
            if dtype is not None and t.dtype.is_floating_point:
                t = t.to(dtype=dtype)
            return t
        return self._apply(convert)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=0):
        return self.to(f"cuda:{device}")

    def float(self):
        return self.to(dtype=_core.DType.float32)

    def double(self):
        return self.to(dtype=_core.DType.float64)

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- calling ----
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self._modules.items())
        if not children:
            return lines[0] + ")"
        for name, m in children:
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"
