"""Autograd from Python: grad-mode switches, ``backward``, the ``Function`` API for
differentiable functions written in Python (recorded on the same C++ tape as built-in ops, and
used by the Triton backend), and ``gradcheck`` by finite differences in float64."""
import contextlib
import functools
import inspect

import numpy as np

import llmscratch_core as _core

Tensor = _core.Tensor
is_grad_enabled = _core.is_grad_enabled


def _generator_in_mode(make_cm, fn):
    """A decorated generator function: its body runs in the mode at every resumption, and the
    caller's mode is back between them (a plain decorator would set the mode only while the
    generator object is created, before any of its body runs)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gen = fn(*args, **kwargs)
        resume = functools.partial(gen.send, None)
        while True:
            try:
                with make_cm():
                    value = resume()
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield value
            except GeneratorExit:
                with make_cm():
                    gen.close()
                raise
            except BaseException as exc:  # thrown in by the caller: on into the body
                resume = functools.partial(gen.throw, exc)
            else:
                resume = functools.partial(gen.send, sent)
    return wrapper


class _GradMode(contextlib.ContextDecorator):
    """A context manager and decorator that sets grad mode and restores the previous one. The
    previous modes are a stack, so one instance may be entered again before it exits; a
    decorated function gets a fresh instance per call (recursion, threads). Grad mode is per
    thread: one instance shared by threads as a context manager restores their modes crossed,
    as torch's does. Subclasses set `mode`."""

    def __new__(cls, orig_func=None):
        """no_grad() is a context manager or decorator; a bare @no_grad (never called) decorates
        too, as torch's."""
        if orig_func is None:
            return super().__new__(cls)
        if not callable(orig_func):
            raise TypeError(f"{cls.__name__}() takes no arguments, or a function to decorate; "
                            f"got {type(orig_func).__name__}")
        return cls()(orig_func)

    def __init__(self):
        self._prev = []

    def _recreate_cm(self):  # a decorated call gets its own instance, as torch's do
        return type(self)()

    def __call__(self, fn):
        if inspect.isgeneratorfunction(fn):
            return _generator_in_mode(self._recreate_cm, fn)
        return super().__call__(fn)

    def __enter__(self):
        self._prev.append(_core.is_grad_enabled())
        _core.set_grad_enabled(self.mode)
        return self

    def __exit__(self, *exc):
        _core.set_grad_enabled(self._prev.pop())
        return False


class no_grad(_GradMode):
    """Ops inside record nothing on the tape (inference, optimizer updates)."""

    mode = False


class enable_grad(_GradMode):
    mode = True


class inference_mode(_GradMode):
    """torch.inference_mode, as a context manager or decorator: ops record nothing, as under
    no_grad. torch's mode also stops version counting and marks its results as inference
    tensors; llmscratch's does neither. inference_mode(False) turns recording on, as torch's."""

    def __new__(cls, mode=True):
        if callable(mode):  # a bare @inference_mode
            return cls()(mode)
        if not isinstance(mode, bool):
            raise TypeError(f"inference_mode: mode must be a bool, got {type(mode).__name__}")
        return object.__new__(cls)

    def __init__(self, mode=True):
        super().__init__()
        self.enabled = mode

    def _recreate_cm(self):
        return type(self)(self.enabled)

    def __enter__(self):
        self._prev.append(_core.is_grad_enabled())
        _core.set_grad_enabled(not self.enabled)
        return self


class set_grad_enabled(contextlib.ContextDecorator):
    """Turn recording on or off. As a call (``set_grad_enabled(False)``) it sets the mode at
    once; as a context manager it restores on exit the mode it replaced; as a decorator it sets
    the mode only while the function runs (each call restores the mode it found)."""

    def __init__(self, mode: bool):
        self.prev = _core.is_grad_enabled()
        self.mode = bool(mode)
        _core.set_grad_enabled(self.mode)

    def __call__(self, fn):
        _core.set_grad_enabled(self.prev)  # as a decorator, the call above leaves nothing behind
        if inspect.isgeneratorfunction(fn):
            return _generator_in_mode(self._recreate_cm, fn)
        return super().__call__(fn)

    def _recreate_cm(self):
        return type(self)(self.mode)

    def __enter__(self):
        _core.set_grad_enabled(self.mode)
        return self

    def __exit__(self, *exc):
        _core.set_grad_enabled(self.prev)
        return False


def backward(tensors, grad_tensors=None, retain_graph=None):
    """Accumulate d(tensors)/d(leaf) into every leaf's .grad (grad_tensors default to ones for
    scalar outputs); the graph's saved tensors are freed as it runs unless retain_graph."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    if grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    elif isinstance(grad_tensors, Tensor):
        grad_tensors = [grad_tensors]
    for g in grad_tensors:  # (the C++ pass converts a gradient's dtype to its tensor's)
        if g is not None and not isinstance(g, Tensor):
            raise TypeError(f"backward: a gradient must be a Tensor or None, got {type(g).__name__}")
    _core.backward(tensors, list(grad_tensors), bool(retain_graph))


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """d(outputs)/d(inputs) as a tuple, as torch.autograd.grad: the same backward pass, but no
    tensor's .grad changes (leaf or not, an input may be any tensor of the graph).
    grad_outputs as backward's grad_tensors; an input the outputs do not depend on gets None with
    allow_unused, else raises. create_graph (gradients that are themselves differentiable) is
    not supported: the backward formulas run unrecorded."""
    if create_graph:
        raise NotImplementedError("grad: create_graph=True (higher-order gradients) is not supported")
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for t in outputs + inputs:
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: outputs and inputs must be Tensors, got {type(t).__name__}")
    if not inputs:
        raise RuntimeError("grad: inputs must hold at least one tensor")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise RuntimeError(f"grad: got {len(outputs)} outputs and {len(grad_outputs)} gradients")
    grads = _core.grad(outputs, list(grad_outputs), inputs, bool(retain_graph))
    if not allow_unused and any(g is None for g in grads):
        raise RuntimeError("grad: one of the differentiated tensors was not used in the graph; pass "
                           "allow_unused=True to get None for it")
    return tuple(grads)


class FunctionCtx:
    """What forward leaves for backward. Saved tensors are stored detached, so the saved state
    never holds the graph alive in a reference cycle, with their versions: reading them back
    after an in-place write into one raises, as the registry's ops do, instead of handing the
    backward changed values."""

    def __init__(self, name="Function"):
        self._name = name
        self._saved = ()
        self.needs_input_grad = ()

    def save_for_backward(self, *tensors):
        self._saved = tuple((t.detach(), t._version) if isinstance(t, Tensor) else (t, None)
                            for t in tensors)

    @property
    def saved_tensors(self):
        for i, (t, version) in enumerate(self._saved):
            if version is not None and t._version != version:
                raise RuntimeError(f"a tensor the backward of '{self._name}' needs was modified by "
                                   f"an in-place operation: saved tensor {i} (shape "
                                   f"{tuple(t.shape)}) is at version {t._version}; expected "
                                   f"version {version}. Compute out of place, or write into a "
                                   f"clone()")
        return tuple(t for t, _ in self._saved)


class Function:
    """Subclass with ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)`` static
    methods; call ``MyFunction.apply(*args)``. backward returns one gradient (or None) per
    forward argument."""

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args):
        ctx = FunctionCtx(cls.__name__)
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        with no_grad():
            result = cls.forward(ctx, *args)
        single = not isinstance(result, tuple)
        outputs = [result] if single else list(result)
        inputs = [a for a in args if isinstance(a, Tensor)]
        # An output that is an input object would have its history rewritten: hand out a view.
        # Non-tensor outputs pass through, their gradient None in backward (as torch).
        outputs = [o.detach() if isinstance(o, Tensor) and any(o._same(i) for i in inputs) else o
                   for o in outputs]
        tensor_out = [k for k, o in enumerate(outputs) if isinstance(o, Tensor)]
        if is_grad_enabled() and any(ctx.needs_input_grad) and tensor_out:
            is_tensor = [isinstance(a, Tensor) for a in args]

            def run_backward(grads):
                full = [None] * len(outputs)
                for k, g in zip(tensor_out, grads):
                    full[k] = g
                res = cls.backward(ctx, *full)
                res = res if isinstance(res, tuple) else (res,)
                if len(res) != len(args):
                    raise RuntimeError(f"{cls.__name__}.backward returned {len(res)} gradients "
                                       f"for {len(args)} forward arguments")
                # a gradient for an input that needs none is dropped unseen, as torch does
                return [_fit_gradient(cls.__name__, i, g, a) if ctx.needs_input_grad[i] else None
                        for i, (g, a, t) in enumerate(zip(res, args, is_tensor)) if t]

            _core.record_function(cls.__name__, inputs, [outputs[k] for k in tensor_out], run_backward)
        return outputs[0] if single else tuple(outputs)


def _fit_gradient(name: str, index: int, g, arg: Tensor):
    """A Function's gradient for its argument `index`, summed down to the argument's shape where
    it broadcasts to it and cast to the argument's dtype (as torch does); any other shape is an
    error."""
    if g is None:
        return None
    if not isinstance(g, Tensor):
        raise TypeError(f"{name}.backward returned a {type(g).__name__} for argument {index}; "
                        f"expected a Tensor or None")
    shape, gshape = tuple(arg.shape), tuple(g.shape)
    lead = len(gshape) - len(shape)
    if lead < 0 or any(s != 1 and s != gs for s, gs in zip(shape, gshape[lead:])):
        raise RuntimeError(f"{name}.backward returned a gradient of shape {gshape} for argument "
                           f"{index} of shape {shape}")
    if gshape != shape:
        g = _core.ops.sum_to(g, list(shape))
    return g if g.dtype == arg.dtype else _core.ops.to_dtype(g, arg.dtype)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True):
    """Compare the gradients of ``sum(fn(*inputs) * w)`` (w a fixed random weighting) with
    central finite differences. Inputs that require grad must be float64 CPU tensors."""
    from ._creation import from_numpy
    inputs = list(inputs)
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for t in checked:
        if t.dtype != _core.DType.float64 or str(t.device) != "cpu":
            raise TypeError("gradcheck: inputs that require grad must be float64 CPU tensors")

    def outputs_of(vals):
        out = fn(*vals)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    rng = np.random.default_rng(0)
    outs = outputs_of(inputs)
    weights = [from_numpy(rng.standard_normal(o.shape)) for o in outs]

    def weighted(vals):
        return functools.reduce(lambda a, b: a + b, [(o * w).sum() for o, w in zip(outputs_of(vals), weights)])

    for t in checked:
        t.grad = None
    weighted(inputs).backward()
    for t in checked:
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy().copy()
        base = t.detach().numpy().copy()
        numeric = np.zeros_like(base)
        with no_grad():
            for i in np.ndindex(base.shape):
                vals = []
                for sign in (1, -1):
                    pert = base.copy()
                    pert[i] += sign * eps
                    probe = from_numpy(pert)
                    vals.append(weighted([probe if x is t else x for x in inputs]).item())
                numeric[i] = (vals[0] - vals[1]) / (2 * eps)
        if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
            if raise_exception:
                err = np.abs(analytic - numeric).max()
                raise AssertionError(f"gradcheck failed for input of shape {tuple(t.shape)}: "
                                     f"max abs error {err:.3e}\nanalytic={analytic}\nnumeric={numeric}")
            return False
    return True


class _Checkpoint(Function):
    @staticmethod
    def forward(ctx, fn, *args):
        ctx.fn = fn
        ctx.save_for_backward(*args)  # a write into one before the backward is refused there
        ctx.rng = _core.get_rng_state()  # dropout inside fn must draw the same numbers again
        return fn(*args)

    @staticmethod
    def backward(ctx, grad):
        resume = _core.get_rng_state()
        _core.set_rng_state(*ctx.rng)
        needs = ctx.needs_input_grad[1:]
        inputs = [a.detach().requires_grad_() if need else a
                  for a, need in zip(ctx.saved_tensors, needs)]
        try:
            with enable_grad():
                backward([ctx.fn(*inputs)], [grad])  # parameters inside fn accumulate here
        finally:
            _core.set_rng_state(*resume)
        return (None,) + tuple(a.grad if need else None for a, need in zip(inputs, needs))


def checkpoint(fn, *args):
    """fn(*args) without keeping its intermediate activations (activation recomputation): the
    forward runs unrecorded, and the backward runs fn again, with the same random numbers, to
    backpropagate through it. Trades one extra forward of fn for the memory of its activations.
    fn returns one tensor; gradients reach tensor arguments and the parameters fn uses."""
    if not is_grad_enabled() or not any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return fn(*args)
    return _Checkpoint.apply(fn, *args)
