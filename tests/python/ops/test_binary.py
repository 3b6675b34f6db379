import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch
from op_check import check

SHAPES = [((3, 5), (3, 5)), ((127, 1), (1, 33)), ((2, 1, 7), (7,)), ((1,), (4, 3, 1)), ((), (5,))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_forward_and_grads(op, shapes, dtype):
    check(getattr(ls.functional, op), getattr(torch, op), shapes, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pow(dtype):
    check(lambda a, b: a ** b, lambda a, b: a ** b, [(4, 7), (7,)], dtype, positive=True)


@pytest.mark.parametrize("how", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons(how):
    a = np.round(randn(5, 6))
    b = np.round(randn(6))
    out = getattr(ls.tensor(a), f"__{how}__")(ls.tensor(b))
    assert out.dtype == ls.bool
    np.testing.assert_array_equal(to_np(out), getattr(np, {"eq": "equal", "ne": "not_equal", "lt": "less",
                                                            "le": "less_equal", "gt": "greater",
                                                            "ge": "greater_equal"}[how])(a, b))


def test_integer_arithmetic_and_promotion():
    a = ls.tensor([1, 2, 3])
    assert (a + a).tolist() == [2, 4, 6] and (a + a).dtype == ls.int64
    assert (a * 2).dtype == ls.int64
    assert (a + ls.tensor([0.5, 0.5, 0.5], dtype=ls.float64)).dtype == ls.float64
    assert (ls.tensor([1], dtype=ls.int32) + ls.tensor([1])).dtype == ls.int64


# ---- floor_divide (//) and remainder (%): torch's values bit for bit --------------------------

def same_values(ours, ref):
    """Equal bit for bit (so -0.0 != 0.0), NaN anywhere NaN is (its payload aside)."""
    a, b = np.asarray(ours), np.asarray(ref)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind == "f":
        nan = np.isnan(b)
        np.testing.assert_array_equal(np.isnan(a), nan)
        a, b = a[~nan], b[~nan]
        a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    np.testing.assert_array_equal(a, b)


FLOOR_OPS = [("floor_divide", lambda a, b: a // b), ("remainder", lambda a, b: a % b)]
SPECIAL = [0.0, -0.0, 1.0, -1.0, 5.0, -5.0, 3.0, -3.0, 0.5, 0.1, -7.5, 1e-30, 1e30, np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("name,op", FLOOR_OPS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("shapes", SHAPES)
def test_floor_ops_on_integers_match_torch_and_python(name, op, dtype, shapes):
    rng = np.random.default_rng()
    lo = 0 if dtype == np.uint8 else -60
    a = rng.integers(lo, 60, shapes[0]).astype(dtype)
    b = rng.integers(1, 9, shapes[1]).astype(dtype)
    if dtype != np.uint8:
        b = b * rng.choice(np.array([-1, 1], dtype), shapes[1])  # divisors of both signs, never 0
    ours = op(ls.tensor(a), ls.tensor(b))
    same_values(to_np(ours), op(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    same_values(to_np(ours), op(a, b))  # numpy's // and % are Python's: floor, divisor's sign
    same_values(to_np(getattr(ls, name)(ls.tensor(a), ls.tensor(b))), op(a, b))
    same_values(to_np(getattr(ls.tensor(a), name)(ls.tensor(b))), op(a, b))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_floor_ops_at_the_ends_of_integer_ranges(dtype):
    info = np.iinfo(dtype)
    a = np.array([info.min, info.min, info.max, info.min + 1, info.max, -1], dtype)
    b = np.array([-1, 1, -1, -1, info.min, info.max], dtype)
    for _, op in FLOOR_OPS:  # min // -1 wraps to min (torch), min % -1 is 0
        same_values(to_np(op(ls.tensor(a), ls.tensor(b))), op(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    assert (ls.tensor(a) // ls.tensor(b)).tolist()[0] == info.min


@pytest.mark.parametrize("name,op", FLOOR_OPS)
@pytest.mark.parametrize("dtype,tdtype", [(np.float32, torch.float32), (np.float64, torch.float64)])
def test_floor_ops_on_floats_match_torch_bitwise(name, op, dtype, tdtype):
    # every pair of special values (signed zeros, infinities, NaN, tiny and huge), then random
    # values of both signs and magnitudes, broadcast, and a strided operand. The pairs against
    # torch one element at a time: its vectorised float32 fmod (Sleef) gives NaN where a / b
    # overflows (fmod(1e30, 1e-30)); its scalar path, like ours, the exact value.
    s = np.array(SPECIAL, dtype)
    a, b = s[:, None], s[None, :]
    ours = op(ls.tensor(a), ls.tensor(b))
    assert ours.dtype == ls.tensor(a).dtype
    ref = np.array([[op(torch.tensor(x, dtype=tdtype), torch.tensor(y, dtype=tdtype)).item() for y in s]
                    for x in s])
    same_values(to_np(ours), ref.astype(dtype))
    rng = np.random.default_rng()
    a = (randn(64, 33) * 10.0 ** rng.integers(-3, 4, (64, 33))).astype(dtype)
    b = (randn(33) * 10.0 ** rng.integers(-3, 4, 33)).astype(dtype)
    same_values(to_np(op(ls.tensor(a), ls.tensor(b))), op(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    same_values(to_np(op(ls.tensor(a).T[:, ::2], ls.tensor(a)[:32].T)),
                op(torch.from_numpy(a).T[:, ::2], torch.from_numpy(a)[:32].T).numpy())
    same_values(to_np(getattr(ls, name)(ls.tensor(a), ls.tensor(b))),
                op(torch.from_numpy(a), torch.from_numpy(b)).numpy())


def test_floor_ops_with_python_scalars_promote_like_torch():
    ti, tf = torch.tensor([7, -7, 3]), torch.tensor([7.5, -7.5, 0.25])
    li, lf = ls.tensor([7, -7, 3]), ls.tensor([7.5, -7.5, 0.25])
    cases = [lambda x: x // 2, lambda x: x % -2, lambda x: x // 2.5, lambda x: x % 2.5,
             lambda x: 7 // x, lambda x: -7 % x, lambda x: 7.5 // x, lambda x: 7.5 % x]
    for f in cases:
        for ours, ref in ((f(li), f(ti)), (f(lf), f(tf))):
            assert str(ours.dtype).split(".")[-1] == str(ref.dtype).split(".")[-1]
            same_values(to_np(ours), ref.numpy())
    same_values(to_np(ls.remainder(7, li)), torch.remainder(7, ti).numpy())
    same_values(to_np(ls.floor_divide(lf, -2)), torch.floor_divide(tf, -2).numpy())
    assert (ls.tensor([1], dtype=ls.int32) // ls.tensor([2])).dtype == ls.int64


def test_floor_ops_by_zero():
    # integers: RuntimeError("ZeroDivisionError...") as torch on the CPU; floats: IEEE inf / NaN
    for f in (lambda x, new: x // 0, lambda x, new: x % 0, lambda x, new: 5 // x,
              lambda x, new: x % new([1, 0, 2]), lambda x, new: x[1:] // x[:2]):
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            f(ls.tensor([0, 3, 4]), ls.tensor)
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            f(torch.tensor([0, 3, 4]), torch.tensor)
    for dtype in (ls.int32, ls.uint8):
        x = ls.tensor([0, 3, 4], dtype=dtype)
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            x //= 0
    a = np.array([1.0, -1.0, 0.0, -0.0, np.inf], np.float32)
    for _, op in FLOOR_OPS:
        for zero in (0.0, -0.0):
            same_values(to_np(op(ls.tensor(a), zero)), op(torch.from_numpy(a), zero).numpy())


def test_floor_ops_refuse_bool_like_torch():
    t = ls.tensor([True, False])
    for _, op in FLOOR_OPS:
        with pytest.raises(NotImplementedError, match="bool"):
            op(t, t)
        with pytest.raises(NotImplementedError):
            op(torch.tensor([True, False]), torch.tensor([True, False]))
    assert (t // 2).tolist() == [0, 0] and (t % 2).tolist() == [1, 0]  # a bool with an int: int64


def test_floor_ops_in_place():
    x = ls.tensor([7, -7, 9])
    ptr = x.data_ptr()
    x //= 2
    assert x.tolist() == [3, -4, 4] and x.data_ptr() == ptr
    x %= 3
    assert x.tolist() == [0, 2, 1] and x.data_ptr() == ptr
    y = ls.tensor([[7.5, -7.5]])
    view = y[0]
    view.floor_divide_(2.0)
    assert y.tolist() == [[3.0, -4.0]]
    y.remainder_(ls.tensor([-2.5]))
    assert y.tolist() == [[-2.0, -1.5]]
    with pytest.raises(TypeError, match="in-place"):
        x //= 2.5  # a float result into an int tensor (torch: RuntimeError, same refusal)


@pytest.mark.parametrize("shapes", SHAPES)
def test_remainder_grads_match_torch(shapes):
    # d a = g, d b = -g floor(a / b) (torch's formula), reduced over broadcast dims
    check(ls.remainder, torch.remainder, shapes, np.float64)
    check(lambda a, b: a % b, lambda a, b: a % b, shapes, np.float64)


def test_floor_divide_has_no_derivative_like_torch():
    a = ls.tensor([5.0, -3.5], requires_grad=True)
    out = a // 2.0
    assert out.requires_grad  # as torch's, whose backward then raises
    with pytest.raises(RuntimeError, match="derivative for 'floor_divide' is not implemented"):
        out.sum().backward()
    ta = torch.tensor([5.0, -3.5], requires_grad=True)
    with pytest.raises(RuntimeError, match="derivative for aten::floor_divide is not implemented"):
        (ta // 2.0).sum().backward()
    with ls.no_grad():
        assert not (a // 2.0).requires_grad


# ---- integer pow: exact, wrapping, torch's values for negative exponents ------------------------

@pytest.mark.parametrize("np_dtype,tdtype", [(np.int64, "int64"), (np.int32, "int32"), (np.uint8, "uint8")])
def test_integer_pow_is_exact_and_wraps_like_torch(np_dtype, tdtype):
    # pow in double rounded 3 ** 39 (62 bits) and sent everything past 2^63, and 0 ** -2 = inf,
    # to INT64_MIN; torch multiplies exactly, modulo 2^bits.
    lo = 0 if np_dtype == np.uint8 else -3
    base = np.array([b for b in range(lo, 4) for _ in range(42)], np_dtype)
    exp = np.array([e for _ in range(lo, 4) for e in range(42)], np_dtype)
    if np_dtype != np.uint8:
        exp[::7] = -exp[::7] - 1  # negative exponents: 1, (-1)^e or 0
    ours = ls.tensor(base) ** ls.tensor(exp)
    ref = torch.tensor(base) ** torch.tensor(exp)
    assert str(ours.dtype).split(".")[-1] == tdtype
    assert ours.tolist() == ref.tolist()


def test_integer_pow_known_values():
    assert (ls.tensor([3]) ** 39).tolist() == [4052555153018976267]
    assert (ls.tensor([3]) ** 40).tolist() == [-6289078614652622815]  # 3^40 mod 2^64, signed
    assert (ls.tensor([0, 1, -1, 2, -2]) ** ls.tensor([-2])).tolist() == [0, 1, 1, 0, 0]
    assert (ls.tensor([0, 1, -1, 2, -2]) ** ls.tensor([-3])).tolist() == [0, 1, -1, 0, 0]
    big = ls.tensor([-(2 ** 63), 2 ** 63 - 1])  # the most negative exponent: its parity, no -e
    assert (ls.tensor([-1, -1]) ** big).tolist() == [1, -1]
    assert (ls.tensor([True, True, False, False]) ** ls.tensor([True, False, True, False])).tolist() == \
        [True, True, False, True]


def test_pow_grads_at_zero_match_torch():
    # d(x ** 0)/dx is 0 even at x = 0 (0 * 0^-1 = 0 * inf), d(0 ** e)/de is 0 for e >= 0
    # (0^e ln 0 = 0 * -inf): torch masks both; for e < 0 it is inf * -inf = -inf, unmasked.
    cases = [([0.0, 1.0, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0]),
             ([0.0, 0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 0.0, 1.0])]
    for x, e in cases:
        xs, es = ls.tensor(x, dtype=ls.float64, requires_grad=True), ls.tensor(e, dtype=ls.float64, requires_grad=True)
        xt, et = torch.tensor(x, dtype=torch.float64, requires_grad=True), torch.tensor(e, dtype=torch.float64, requires_grad=True)
        (xs ** es).sum().backward()
        (xt ** et).sum().backward()
        same_values(to_np(xs.grad), xt.grad.numpy())
        same_values(to_np(es.grad), et.grad.numpy())
    # the scalar exponent (x ** 0.0) and a broadcast exponent take the same masks
    xs, xt = ls.tensor([0.0, 3.0], requires_grad=True), torch.tensor([0.0, 3.0], requires_grad=True)
    (xs ** 0.0).sum().backward()
    (xt ** 0.0).sum().backward()
    assert xs.grad.tolist() == xt.grad.tolist() == [0.0, 0.0]
