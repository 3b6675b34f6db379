"""Autograd semantics: accumulation, no_grad, shared subexpressions, diamonds, hooks, detach,
the Python Function API and the gradcheck helper."""
import numpy as np
import pytest

import llmscratch as ls
from conftest import assert_close, randn, to_np, torch


def test_gradient_accumulates_across_backward_calls():
    x = ls.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(to_np(x.grad), 2 * np.array([1, 2, 3]) + 3)
    x.grad = None
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3, 3, 3]


def test_no_grad_records_nothing():
    x = ls.ones(3, requires_grad=True)
    with ls.no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert ls.is_grad_enabled()

    @ls.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad
    with ls.no_grad():
        with ls.enable_grad():
            assert (x * 2).requires_grad


def test_inference_mode_records_nothing_as_a_context_or_decorator():
    x = ls.ones(3, requires_grad=True)
    with ls.inference_mode():
        assert not (x * 2).requires_grad
        with ls.inference_mode(False):  # recording on again, as torch's
            assert (x * 2).requires_grad
        assert not ls.is_grad_enabled()
    assert ls.is_grad_enabled()
    with ls.no_grad(), ls.inference_mode(False):
        assert (x * 2).requires_grad

    @ls.inference_mode
    def bare():
        return ls.is_grad_enabled()

    @ls.inference_mode()
    def called():
        return ls.is_grad_enabled()
    assert bare() is False and called() is False and ls.is_grad_enabled()
    with pytest.raises(TypeError, match="mode must be a bool"):
        ls.inference_mode(1)


def test_shared_subexpression_and_diamond_match_torch():
    a = randn(4, 5)
    x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)

    def f(m, t):
        h = m.tanh(t) if False else t.tanh()  # shared: h feeds both branches
        left = h * h
        right = h.exp() * t
        return (left + right).sum() + h.sum()
    f(ls, x).backward()
    f(torch, tx).backward()
    assert_close(x.grad, tx.grad)


def test_deep_chain_and_reuse():
    a = randn(3, 3)
    x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    y, ty = x, tx
    for _ in range(20):
        y = y * 0.9 + x.sigmoid() * 0.1
        ty = ty * 0.9 + tx.sigmoid() * 0.1
    y.sum().backward()
    ty.sum().backward()
    assert_close(x.grad, tx.grad)


def test_backward_with_explicit_gradient_and_errors():
    x = ls.tensor(randn(2, 3), requires_grad=True)
    y = x * 2
    g = ls.tensor(randn(2, 3))
    y.backward(g)
    assert_close(x.grad, to_np(g) * 2)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        ls.ones(2).sum().backward()
    with pytest.raises(ValueError, match="gradient has shape"):
        (x * 2).backward(ls.ones(3))


def test_detach_stops_gradients_and_shares_memory():
    x = ls.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.data_ptr() == x.data_ptr()
    (x * d).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0]


def test_leaf_gradients_never_alias_other_tensors():
    # A leaf's first gradient is taken without a copy only when nothing else holds it: add's
    # backward hands the same tensor to both leaves, a user's gradient stays the user's, a
    # retained intermediate gradient is its own tensor, and a view keeps its base's memory.
    a, b = (ls.tensor(randn(3, 4), requires_grad=True) for _ in range(2))
    (a + b).backward(ls.ones(3, 4))
    assert a.grad.data_ptr() != b.grad.data_ptr()
    a.grad.add_(ls.ones(3, 4))
    assert b.grad.tolist() == [[1.0] * 4] * 3
    x = ls.tensor(randn(3, 4), requires_grad=True)
    g = ls.tensor(randn(3, 4))
    x.backward(g)
    assert x.grad.data_ptr() != g.data_ptr()
    x2 = ls.tensor(randn(3, 4), requires_grad=True)
    h = x2 * 3
    h.retain_grad()
    y = h.reshape(12)
    y.backward(ls.tensor(randn(12)))
    assert x2.grad.data_ptr() != h.grad.data_ptr()
    assert_close(x2.grad, to_np(h.grad) * 3)


def test_hooks_and_retain_grad():
    x = ls.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()) or g * 10)
    h = x * 3
    h.retain_grad()
    h.register_hook(lambda g: g * 2)
    (h * h).sum().backward()
    # dL/dh = 2h = [6, 12], doubled by the hook before flowing on; retain_grad sees it after.
    assert h.grad.tolist() == [12.0, 24.0]
    assert seen == [[36.0, 72.0]]
    assert x.grad.tolist() == [360.0, 720.0]


def test_a_hook_handle_removes_its_hook():
    x = ls.tensor([1.0, 2.0], requires_grad=True)
    handle = x.register_hook(lambda g: g * 10)  # torch's RemovableHandle
    h = x * 3
    h_handle = h.register_hook(lambda g: g * 2)
    h.sum().backward(retain_graph=True)
    assert x.grad.tolist() == [60.0, 60.0]
    handle.remove()
    h_handle.remove()
    x.grad = None
    h.sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_a_leaf_hook_sees_the_leafs_whole_gradient_once():
    w = ls.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    w.register_hook(lambda g: seen.append(g.tolist()) or g * 0.5)
    (w * 3 + w.exp() + w).sum().backward()  # three edges into w, one call of its hook
    expected = (4 + np.exp([1.0, 2.0])).tolist()
    assert len(seen) == 1 and np.allclose(seen[0], expected)
    assert np.allclose(w.grad.tolist(), np.array(expected) * 0.5)
    y = (w * w).sum()
    ls.autograd.backward([y, w], [None, ls.tensor([1.0, 1.0])])  # w is a root and reached
    assert len(seen) == 2 and np.allclose(seen[1], [3.0, 5.0])

    seen.clear()
    ls.autograd.backward([w, w], [ls.tensor([1.0, 1.0]), ls.tensor([2.0, 2.0])])  # one sum, one call
    assert seen == [[3.0, 3.0]]
    w.grad = None
    with pytest.raises(ValueError, match="gradient has shape"):
        ls.autograd.backward([w, w * 2], [ls.tensor([1.0, 1.0]), ls.tensor([1.0])])
    assert w.grad is None  # checked before anything was accumulated

    class Wide(ls.autograd.Function):  # hands on a float64 gradient for a float32 input
        @staticmethod
        def forward(ctx, t):
            return t * 1.0

        @staticmethod
        def backward(ctx, g):
            return g.double()

    f = ls.tensor([1.0, 2.0], dtype=ls.float32, requires_grad=True)
    hf = f * 1.0
    dtypes = []
    hf.register_hook(lambda g: dtypes.append(g.dtype) or g * 1.0)
    f.register_hook(lambda g: dtypes.append(g.dtype) or g * 1.0)
    Wide.apply(hf).sum().backward()
    assert dtypes == [ls.float32, ls.float32] and f.grad.dtype == ls.float32

    x = ls.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.register_hook(lambda g: g.sum())
    with pytest.raises(RuntimeError, match=r"hook returned a float32 tensor of shape \(\) .* for a "
                                           r"gradient that is float32 of shape \(2,\)"):
        (h * h).sum().backward()
    x.register_hook(lambda g: g.double())
    with pytest.raises(RuntimeError, match="hook returned a float64 tensor"):
        (x * 2).sum().backward()


def test_views_and_slices_carry_gradients():
    a = randn(4, 6)
    x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    for m, t in ((ls, x), (torch, tx)):
        y = t[1:3].transpose(0, 1).reshape(-1) * 2 + t[:, 2].sum() + t.unsqueeze(0).expand(3, 4, 6).sum()
        y.sum().backward()
    assert_close(x.grad, tx.grad)


def test_int_outputs_do_not_require_grad():
    x = ls.tensor(randn(3, 4), requires_grad=True)
    values, idx = x.max(1)
    assert values.requires_grad and not idx.requires_grad
    assert not (x > 0).requires_grad


class Cube(ls.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x * x * x * k

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x * x * ctx.k, None


def test_python_function_records_on_the_tape():
    a = randn(5)
    x = ls.tensor(a, requires_grad=True)
    y = Cube.apply(x, 2.0)
    assert y.grad_fn == "Cube"
    (y.sin()).sum().backward()
    assert_close(x.grad, np.cos(2 * a ** 3) * 6 * a ** 2)
    assert ls.autograd.gradcheck(lambda t: Cube.apply(t, 0.5), [ls.tensor(randn(3), requires_grad=True)])


def test_gradcheck_catches_a_wrong_backward():
    class Wrong(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, g):
            return g  # should be 2 x g

    with pytest.raises(AssertionError, match="gradcheck failed"):
        ls.autograd.gradcheck(Wrong.apply, [ls.tensor(randn(3), requires_grad=True)])


def test_graph_is_freed():
    import gc
    import weakref
    x = ls.tensor(randn(100), requires_grad=True)
    y = Cube.apply(x, 1.0) * 2
    r = weakref.ref(y)
    y.sum().backward()
    del y
    gc.collect()
    assert r() is None


def test_backward_releases_saved_state_unless_retain_graph():
    """As torch: what a graph saved for its backward is freed as the backward runs, so a kept
    output (a logged loss) does not keep a step's activations alive; retain_graph keeps it."""
    import weakref

    class Probe:
        pass

    probes = []

    class Square(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.probe = Probe()  # anything the backward's context holds
            probes.append(weakref.ref(ctx.probe))
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    x = ls.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (Square.apply(x) * 2).sum()
    y.backward(retain_graph=True)
    assert probes[0]() is not None
    y.backward()  # the retained graph runs again: the gradients add
    np.testing.assert_allclose(to_np(x.grad), 2 * 4 * np.array([1.0, 2.0, 3.0]))
    assert probes[0]() is None and y.grad_fn is not None  # released, though y is alive
    with pytest.raises(RuntimeError, match="already run backward.*retain_graph=True"):
        y.backward()


def test_checkpoint_recomputes_with_the_same_gradients_and_random_numbers():
    import llmscratch.nn as nn
    from llmscratch.autograd import checkpoint
    block = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 6))
    block.to(dtype=ls.float64)
    a = randn(5, 6)
    grads = []
    for recompute in (False, True):
        ls.manual_seed(3)
        x = ls.tensor(a, requires_grad=True)
        y = checkpoint(block, x) if recompute else block(x)
        if recompute:
            assert y.grad_fn == "_Checkpoint"
        (y * y).sum().backward()
        grads.append([x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in block.parameters()])
        block.zero_grad()
        after = ls.get_rng_state()
    for g0, g1 in zip(*grads):
        assert np.array_equal(g0, g1)
    assert ls.get_rng_state() == after  # the replay does not disturb the generator

    h = ls.tensor(a, requires_grad=True) * 1.0
    y = checkpoint(block, h)
    with ls.no_grad():
        h.fill_(100.0)  # the replay would run on these values
    with pytest.raises(RuntimeError, match="backward of '_Checkpoint' needs was modified"):
        y.sum().backward()


def test_grad_mode_decorators_restore_the_mode_they_found():
    @ls.no_grad()
    def recurse(k):
        assert not ls.is_grad_enabled()
        if k:
            recurse(k - 1)

    recurse(3)
    assert ls.is_grad_enabled()

    @ls.set_grad_enabled(False)
    def off():
        return ls.is_grad_enabled()

    assert ls.is_grad_enabled()  # defining it changed nothing
    assert off() is False and ls.is_grad_enabled()
    with ls.no_grad():
        off()
        assert not ls.is_grad_enabled()
    with ls.set_grad_enabled(False):
        assert not ls.is_grad_enabled()
    assert ls.is_grad_enabled()


def test_grad_mode_classes_decorate_bare_like_torch():
    x = ls.ones(2, requires_grad=True)

    @ls.no_grad  # no call: torch.no_grad takes this form too
    def doubled(t):
        """doc"""
        return t * 2

    @ls.enable_grad
    def tripled(t):
        return t * 3

    assert not doubled(x).requires_grad and ls.is_grad_enabled()
    assert doubled.__name__ == "doubled" and doubled.__doc__ == "doc"
    with ls.no_grad():
        assert tripled(x).requires_grad and not ls.is_grad_enabled()

    @ls.no_grad
    def gen():
        yield ls.is_grad_enabled()

    assert list(gen()) == [False] and ls.is_grad_enabled()
    with pytest.raises(TypeError, match="no_grad"):
        ls.no_grad(3)


def test_grad_mode_decorators_on_generators_hold_at_every_resumption():
    x = ls.tensor([1.0, 2.0], requires_grad=True)

    @ls.no_grad()
    def steps(n):
        for _ in range(n):
            got = yield (x * 2).requires_grad
            assert not ls.is_grad_enabled() and got == "go"
        return "done"

    gen = steps(2)
    assert next(gen) is False and ls.is_grad_enabled()  # the caller's mode between resumptions
    assert gen.send("go") is False and ls.is_grad_enabled()
    with pytest.raises(StopIteration) as stop:
        gen.send("go")
    assert stop.value.value == "done" and ls.is_grad_enabled()

    @ls.set_grad_enabled(False)
    def catches():
        try:
            yield 1
        except KeyError:
            yield ls.is_grad_enabled()

    gen = catches()
    next(gen)
    assert gen.throw(KeyError("k")) is False and ls.is_grad_enabled()
    gen.close()
    with ls.no_grad():
        assert list(ls.enable_grad()(lambda: (yield ls.is_grad_enabled()))()) == [True]
        assert not ls.is_grad_enabled()


def test_in_place_writes_that_would_lose_a_gradient_or_truncate_are_refused():
    y = ls.tensor([1.0, 2.0]).requires_grad_()
    acc = ls.zeros(2)
    with pytest.raises(RuntimeError, match="would lose its gradient"):
        acc += y
    buf = ls.zeros(3)
    with pytest.raises(RuntimeError, match="would lose its gradient"):
        buf[0:2] = y
    with pytest.raises(RuntimeError, match="would lose its gradient"):
        buf[0:2].copy_(y)
    with ls.no_grad():  # no gradient is recorded there: the value is wanted
        acc += y
        buf[0:2] = y
    assert acc.tolist() == [1.0, 2.0] and buf.tolist() == [1.0, 2.0, 0.0]
    i = ls.tensor([1, 2, 3])
    with pytest.raises(TypeError, match="float32 cannot be written into a llmscratch.int64 tensor"):
        i += 1.5
    i += 2
    assert i.tolist() == [3, 4, 5]


def test_a_backward_refuses_saved_tensors_written_in_place_after_its_forward():
    a = randn(3)
    w = ls.tensor(randn(3), requires_grad=True)
    x = ls.tensor(a)
    y = x * w  # mul saves both inputs; w's gradient reads x only
    with ls.no_grad():
        w.add_(1.0)  # an optimizer step between forward and backward: w is not read
    y.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), a)
    w.grad = None
    y = x * w
    x.mul_(2.0)  # what w's gradient reads
    with pytest.raises(RuntimeError, match=r"backward of 'mul' .* input 0 \(float64, shape \(3,\), "
                                           r"cpu\) is at version 1; expected version 0"):
        y.sum().backward()
    assert w.grad is None

    e = w.exp()  # exp saves its output
    with ls.no_grad():
        e[1:].fill_(0.0)  # a write through a view moves the version every view shares
    with pytest.raises(RuntimeError, match="backward of 'exp' .* output 0"):
        e.sum().backward()

    z = x + w  # add saves nothing: a write into its input changes no gradient
    x.mul_(2.0)
    z.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]
    ids, table = ls.tensor([2, 0]), ls.tensor(randn(3, 2), requires_grad=True)
    out = ls.functional.embedding(ids, table)  # the table's gradient reads the ids only
    with ls.no_grad():
        table.mul_(2.0)
    out.sum().backward()
    assert table.grad.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]

    c = ls.tensor(randn(4), requires_grad=True)
    y = Cube.apply(c, 1.0)
    with ls.no_grad():
        c.zero_()
    with pytest.raises(RuntimeError, match="backward of 'Cube' .* saved tensor 0 .* version 1; "
                                           "expected version 0"):
        y.sum().backward()
    a = randn(4)
    c = ls.tensor(a, requires_grad=True)
    y = Cube.apply(c, 1.0)
    with ls.no_grad():
        c.zero_()
        c.add_(ls.tensor(a))  # the same values again are still a write: the version tells
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()


def test_a_root_gradient_takes_the_roots_dtype():
    x = ls.tensor([0.5, -1.0, 2.0], dtype=ls.float32).requires_grad_()
    y = ls.functional.softmax(x * 2.0, -1)
    y.backward(ls.tensor([1.0, 0.0, 0.0], dtype=ls.float64))
    assert x.grad.dtype == ls.float32
    with pytest.raises(TypeError, match="gradient must be a Tensor"):
        (x * 1.0).sum().backward(2.0)


def test_function_gradients_are_summed_to_their_inputs_shape():
    class AddBias(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            return x + b

        @staticmethod
        def backward(ctx, g):
            return g, g  # b's gradient broadcast like the output: summed down as torch does

    def identity_whose_backward_returns(name, gradient):
        return type(name, (ls.autograd.Function,), {"forward": staticmethod(lambda ctx, x: x * 1.0),
                                                    "backward": staticmethod(lambda ctx, g: gradient(g))})

    Wrong = identity_whose_backward_returns("Wrong", lambda g: g.sum())
    NotATensor = identity_whose_backward_returns("NotATensor", lambda g: 1.0)

    x = ls.ones(2, 3).requires_grad_()
    b = ls.ones(3).requires_grad_()
    AddBias.apply(x, b).sum().backward()
    assert tuple(b.grad.shape) == (3,) and b.grad.tolist() == [2.0, 2.0, 2.0]
    x.grad = None
    AddBias.apply(x, ls.ones(5, 1, 3)).sum().backward()  # b needs no gradient: its gradient is not fitted
    assert tuple(x.grad.shape) == (2, 3)
    with pytest.raises(TypeError, match="NotATensor.backward returned a float for argument 0"):
        NotATensor.apply(x).sum().backward()
    with pytest.raises(RuntimeError, match=r"Wrong.backward returned a gradient of shape \(\) for argument 0 of shape \(2, 3\)"):
        Wrong.apply(x).sum().backward()


def test_function_gets_zeros_for_an_output_without_gradient_like_torch():
    got = []

    class WithArgmax(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2, x.argmax()  # an integer output has no gradient

        @staticmethod
        def backward(ctx, g, g_index):
            got.append(g_index)
            return g * 2

    x = ls.ones(3).requires_grad_()
    a, i = WithArgmax.apply(x)
    a.sum().backward()
    assert len(got) == 1 and got[0].dtype == ls.int64 and got[0].shape == () and got[0].item() == 0
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


def test_function_gradients_take_their_inputs_dtype_like_torch():
    seen = []

    class Twice(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * 2 + y

        @staticmethod
        def backward(ctx, g):
            return g.double() * 2, g.to(ls.float16)  # other dtypes than the inputs'

    class Spy(ls.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            seen.append(g.dtype)
            return g

    x = ls.ones(3).requires_grad_()
    y = ls.ones(2, 3, dtype=ls.float64).requires_grad_()
    h = Spy.apply(x)  # not a leaf: the gradient had reached it in float64
    h.retain_grad()
    Twice.apply(h, y).sum().backward()
    assert seen == [ls.float32] and h.grad.dtype == ls.float32
    assert x.grad.dtype == ls.float32 and x.grad.tolist() == [4.0, 4.0, 4.0]  # summed and cast
    assert y.grad.dtype == ls.float64 and y.grad.tolist() == [[1.0] * 3] * 2


def test_a_leaf_turned_off_after_the_forward_gets_no_gradient_like_torch():
    # a parameter frozen between forward and backward: an optimizer would have stepped it
    x = ls.tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()))
    y = (x * x).sum()
    x.requires_grad_(False)
    y.backward()
    assert x.grad is None and seen == [[2.0, 4.0]]  # its hooks still run, as torch's


def test_function_passes_non_tensor_outputs_through_like_torch():
    class TwiceAndCount(ls.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2, 5

        @staticmethod
        def backward(ctx, g, g_count):
            assert g_count is None  # the non-tensor output's gradient
            return g * 2
    a = ls.tensor(np.array([1.0, 3.0]), requires_grad=True)
    out, count = TwiceAndCount.apply(a)
    assert count == 5
    out.sum().backward()
    assert a.grad.tolist() == [2.0, 2.0]


def test_retain_grad_of_an_output_no_gradient_reached_stays_none_like_torch():
    for lib in (ls, torch):
        x = lib.ones(3, requires_grad=True)
        a, b = (x * 2).split(2)
        a.retain_grad()
        b.retain_grad()
        a.sum().backward()
        assert b.grad is None and a.grad is not None
        assert x.grad.tolist() == [2.0, 2.0, 0.0]  # the split's backward still gets zeros for b


def test_autograd_grad_as_torch_without_touching_any_grad():
    a, b = randn(3, 4), randn(4, 2)
    x, w = ls.tensor(a, requires_grad=True), ls.tensor(b, requires_grad=True)
    tx, tw = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    h, th = (x @ w).tanh(), (tx @ tw).tanh()
    y, ty = (h * h).sum(), (th * th).sum()
    got = ls.autograd.grad(y, [x, h], retain_graph=True)  # a leaf and an intermediate tensor
    ref = torch.autograd.grad(ty, [tx, th], retain_graph=True)
    for g, r in zip(got, ref):
        assert_close(g, r, tol=1e-12)
    assert x.grad is None and w.grad is None  # nothing accumulated anywhere
    go = randn(3, 2)
    (gw,) = ls.autograd.grad(h, w, grad_outputs=ls.tensor(go), retain_graph=True)
    assert_close(gw, torch.autograd.grad(th, tw, grad_outputs=torch.tensor(go), retain_graph=True)[0], tol=1e-12)
    unused = ls.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="not used in the graph"):
        ls.autograd.grad(y, [x, unused], retain_graph=True)
    assert ls.autograd.grad(y, [x, unused], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        ls.autograd.grad((x * 2).sum(), [ls.ones(2)])
    with pytest.raises(NotImplementedError, match="create_graph"):
        ls.autograd.grad((x * 2).sum(), [x], create_graph=True)


def test_autograd_grad_runs_only_between_the_outputs_and_the_inputs_as_torch():
    G = ls.autograd.grad
    x = ls.tensor([1.0, 2.0], requires_grad=True)
    assert [to_np(g).tolist() for g in G((x * x).sum(), [x, x])] == [[2.0, 4.0]] * 2  # a repeated input
    h = x * 3
    (g,) = G((h * h).sum(), h)  # stops at h: the graph behind it is left for a later backward
    h.backward(g)
    assert to_np(x.grad).tolist() == [18.0, 36.0]
    x.grad = None
    a = x * 2
    seen = []
    a.register_hook(seen.append)
    a.retain_grad()
    h = a * 3
    G((h * h).sum(), h)
    assert seen == [] and a.grad is None  # nothing behind the input runs
    hooked = ls.tensor([1.0, 2.0], requires_grad=True)
    hooked.register_hook(lambda g: g * 10)  # a leaf input's hooks run, as torch's
    assert to_np(G((hooked * hooked).sum(), hooked)[0]).tolist() == [20.0, 40.0]
    with pytest.raises(RuntimeError, match="got 2 outputs and 1 gradients"):
        G([x.sum(), (x * 2).sum()], x, grad_outputs=[ls.tensor(1.0)])
    with pytest.raises(RuntimeError, match="at least one tensor"):
        G(x.sum(), [])
