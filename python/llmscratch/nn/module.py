"""Module and Parameter: named parameters, buffers and submodules, state_dict round trips,
train/eval, device and dtype moves."""
import copy
from collections import OrderedDict, namedtuple

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

    def __deepcopy__(self, memo):
        """A Parameter of its own copy of the data, as torch's (the gradient is not copied)."""
        out = Parameter(self.detach().clone(), self.requires_grad)
        memo[id(self)] = out
        return out


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class RemovableHandle:
    """What register_forward_hook returns: remove() takes the hook off (also as a context manager)."""
    _next_id = 0

    def __init__(self, hooks):
        self.hooks, self.id = hooks, RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self):
        self.hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _same_data(a, b):
    return a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.device == b.device


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
        if "_parameters" not in self.__dict__:  # a plain attribute may come first, as torch's
            if isinstance(value, (Parameter, Module)):
                raise AttributeError("call Module.__init__() before assigning parameters or submodules")
            object.__setattr__(self, name, value)
            return
        # As torch: a registered parameter takes a Parameter or None, a buffer a Tensor or None
        # (a plain tensor there would drop out of state_dict and the optimizer unseen).
        if name in self._parameters and not isinstance(value, Parameter):
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as parameter '{name}' "
                                f"(a Parameter or None is expected)")
            self._parameters[name] = None
            self._sync_impl(name, None)
            return
        if name in self._buffers and not isinstance(value, (Module, Parameter)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign a {type(value).__name__} as buffer '{name}' "
                                f"(a Tensor or None is expected)")
            self._buffers[name] = value
            return
        # a submodule the same: anything else would drop it from state_dict and parameters() unseen
        if name in self._modules and not isinstance(value, (Module, Parameter)):
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as child module '{name}' "
                                f"(a Module or None is expected)")
            self._modules[name] = None
            return
        # from the other registries only: a module or parameter replaced under its name keeps its
        # place in the order (torch's; ModuleList's seq[0] = m had moved it last)
        target = self._parameters if isinstance(value, Parameter) else self._modules if isinstance(value, Module) else None
        for d in (self._parameters, self._buffers, self._modules):
            if d is not target:
                d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
            self._sync_impl(name, value)
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __deepcopy__(self, memo):
        """copy.deepcopy: a module of its own parameters, buffers and children; a tensor shared
        inside the module (a tied weight) stays one tensor in the copy. A layer backed by C++ gets
        its own copy of the layer, pointed at the copied parameters. A plain attribute holding a
        result of the last forward (an MoE layer's aux_loss, in its graph) is copied detached."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_impl":
                value = copy.copy(value)
            else:
                if isinstance(value, Tensor) and not value.is_leaf:
                    value = value.detach()
                value = copy.deepcopy(value, memo)
            object.__setattr__(new, key, value)
        for name, p in new._parameters.items():
            new._sync_impl(name, p)
        return new

    def _sync_impl(self, name, value):
        """A module backed by a C++ layer (self._impl) keeps the layer's tensor in step."""
        impl = self.__dict__.get("_impl")
        if impl is not None and hasattr(impl, name):
            setattr(impl, name, value)

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
                if d is self._parameters:
                    self._sync_impl(name, None)
                return
        object.__delattr__(self, name)

    def _check_new_name(self, what, name, own):
        """As torch: a name a state_dict key can hold (a '.' would make two entries one key, and
        one of them vanish from checkpoints), not already another kind of attribute."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{what}: the name must be a non-empty string without '.', got {name!r}")
        if name not in own and (name in self.__dict__ or name in self._parameters or name in self._buffers
                                or name in self._modules):
            raise KeyError(f"{what}: attribute '{name}' already exists")

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: '{name}' must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self._check_new_name("register_parameter", name, self._parameters)
        if param is None:
            self.__dict__.pop(name, None)
            self._parameters[name] = None
            self._sync_impl(name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is state but not trained (moved by to(), saved if persistent)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: '{name}' must be a Tensor or None, got "
                            f"{type(tensor).__name__}")
        self._check_new_name("register_buffer", name, self._buffers)
        self._buffers[name] = tensor
        non_persistent = self.__dict__.setdefault("_non_persistent", set())
        if persistent:
            non_persistent.discard(name)
        else:
            non_persistent.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: '{name}' must be a Module or None, got "
                            f"{type(module).__name__}")
        self._check_new_name("add_module", name, self._modules)
        self._modules[name] = module

    # ---- traversal ----
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(name, module) pairs depth first, a module before its children, as torch's (and as
        state_dict's keys); each module once unless remove_duplicate=False."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_children(self):
        """Each child once (a module set under two names: its first), as torch: apply, train
        and casts then reach it once."""
        seen = set()
        for n, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield n, m

    def named_parameters(self, prefix="", recurse=True):
        """(name, parameter) pairs; a parameter shared by several modules appears once."""
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_name, m in mods:
            for name, p in m._parameters.items():
                if p is None or p._impl_id() in seen:
                    continue
                seen.add(p._impl_id())
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        """(name, buffer) pairs; a buffer shared by several modules appears once."""
        seen = set()
        for mod_name, m in self.named_modules(prefix=prefix) if recurse else [(prefix, self)]:
            for name, b in m._buffers.items():
                if b is not None and b._impl_id() not in seen:
                    seen.add(b._impl_id())
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- state ----
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """name -> tensor (detached handles on the live parameters and persistent buffers, or the
        Parameters themselves with keep_vars; tied parameters and a submodule used twice appear
        under every name, as in torch). destination: a dict to fill, returned."""
        out = OrderedDict() if destination is None else destination
        skip = self.__dict__.get("_non_persistent", set())
        for name, p in list(self._parameters.items()) + [
                (n, b) for n, b in self._buffers.items() if n not in skip]:
            if p is not None:
                out[prefix + name] = p if keep_vars else p.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(out, f"{prefix}{name}.", keep_vars)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values in place into the existing parameters and buffers (so optimizers and
        tied weights keep pointing at them). Returns (missing_keys, unexpected_keys), a named
        tuple as torch's; a strict mismatch or a shape mismatch raises RuntimeError, as torch's,
        before anything is copied."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
        sources = {}
        for k, target in own.items():
            if k in state_dict:
                src = state_dict[k]
                if not isinstance(src, Tensor):
                    from .._creation import tensor
                    src = tensor(src)
                if tuple(src.shape) != tuple(target.shape):
                    raise RuntimeError(f"load_state_dict: size mismatch for '{k}': {tuple(src.shape)} in the "
                                       f"state dict, {tuple(target.shape)} in the model")
                sources[k] = src
        with no_grad():
            for k, src in sources.items():
                own[k].copy_(src)
        return IncompatibleKeys(missing, unexpected)

    # ---- modes and moves ----
    def train(self, mode=True):
        """Training mode for this module and, through their own train(), its children."""
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be a bool, got {mode!r}")
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
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
        """Move or cast every parameter (and its gradient) and buffer by fn, the children's
        through their own _apply (a module may keep a buffer's dtype). A parameter keeps its
        object, which optimizers hold, and only its data changes (torch's param.data = ...); a
        C++ layer behind the module is pointed at it again. A tied parameter, met again, is
        already where fn puts it."""
        for m in self.children():
            m._apply(fn)
        for name, p in list(self._parameters.items()):
            if p is None:
                continue
            new = fn(p.detach())
            if not _same_data(new, p):
                grad = p.grad
                p.grad = None  # set again in the new dtype and device below
                p._set_data(new)
                if grad is not None:
                    p.grad = fn(grad)
            self._sync_impl(name, p)
        for name, b in list(self._buffers.items()):
            if b is not None:
                self._buffers[name] = fn(b)
        return self

    def to(self, device=None, dtype=None, non_blocking=False):
        """Move parameters/buffers to a device and/or cast floating ones to dtype; a tensor as
        the argument gives both, as torch's (non_blocking is accepted: copies are ordered on
        the stream)."""
        if isinstance(device, _core.DType):
            device, dtype = None, device
        elif isinstance(device, Tensor):
            device, dtype = device.device, device.dtype if device.dtype.is_floating_point else dtype
        dev = as_device(device) if device is not None else None
        if dtype is not None and not dtype.is_floating_point:  # it would truncate every weight
            raise TypeError(f"Module.to: dtype must be floating, got {dtype}")

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

    def half(self):
        return self.to(dtype=_core.DType.float16)

    def bfloat16(self):
        return self.to(dtype=_core.DType.bfloat16)

    def get_submodule(self, target: str):
        """The submodule at a dotted path ("blocks.0.attn"; "" is self), as torch's."""
        m = self
        for part in target.split(".") if target else ():
            if part not in m._modules or m._modules[part] is None:
                raise AttributeError(f"{type(m).__name__} has no submodule '{part}' (in '{target}')")
            m = m._modules[part]
        return m

    def get_parameter(self, target: str):
        """The parameter at a dotted path ("blocks.0.attn.qkv.weight"), as torch's."""
        path, _, name = target.rpartition(".")
        m = self.get_submodule(path)
        if m._parameters.get(name) is None:
            raise AttributeError(f"{type(m).__name__} has no parameter '{name}' (in '{target}')")
        return m._parameters[name]

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- calling ----
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def __call__(self, *args, **kwargs):
        hooks = self.__dict__.get("_forward_hooks")
        if not hooks:
            return self.forward(*args, **kwargs)
        for hook in list(hooks["pre"].values()):  # hook(module, args) -> None or new args
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        out = self.forward(*args, **kwargs)
        for hook in list(hooks["post"].values()):  # hook(module, args, output) -> None or new output
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_pre_hook(self, hook):
        """hook(module, args) runs before forward and may return new args, as torch's; returns a
        handle whose remove() takes it off."""
        return self._add_forward_hook("pre", hook)

    def register_forward_hook(self, hook):
        """hook(module, args, output) runs after forward and may return a new output, as torch's;
        returns a handle whose remove() takes it off."""
        return self._add_forward_hook("post", hook)

    def _add_forward_hook(self, kind, hook):
        if not callable(hook):
            raise TypeError(f"a forward hook must be callable, got {type(hook).__name__}")
        hooks = self.__dict__.setdefault("_forward_hooks", {"pre": OrderedDict(), "post": OrderedDict()})
        handle = RemovableHandle(hooks[kind])
        hooks[kind][handle.id] = hook
        return handle

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
