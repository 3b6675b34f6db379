"""CUDA kernels against the CPU implementation (the reference) on the same inputs: copies and
casts, elementwise binary and unary ops with broadcasting and strided views, where/clamp, sum,
and gradients of composite expressions. Also the caching allocator. Skipped without a GPU."""
import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, rel_err, to_np

pytestmark = pytest.mark.cuda

DTYPES = {ls.float32: 1e-6, ls.float64: 1e-13, ls.bfloat16: 1e-2, ls.float16: 2e-3}


def both(a, dtype):
    """The same values on the CPU (float32/float64 reference) and on the GPU in dtype."""
    cpu = ls.tensor(a).to(dtype=dtype)
    ref_dtype = ls.float64 if dtype == ls.float64 else ls.float32
    return cpu.to(dtype=ref_dtype), cpu.cuda()


def close(gpu, cpu, tol):
    g = to_np(gpu.cpu().float() if gpu.dtype in (ls.bfloat16, ls.float16) else gpu.cpu())
    err = rel_err(g, to_np(cpu))
    assert err <= tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_copy_cast_and_strided_views(dtype):
    a = randn(7, 33, 5)
    cpu, gpu = both(a, dtype)
    for view in (lambda t: t.transpose(0, 2), lambda t: t[1:, ::3], lambda t: t.permute(2, 0, 1)[:, 2]):
        close(view(gpu).contiguous(), view(cpu), 0)
    for to in (ls.float32, ls.float64, ls.int64, ls.bfloat16):
        assert np.array_equal(to_np(gpu.to(dtype=to).cpu().float()), to_np(cpu.to(dtype=dtype).to(dtype=to).float()))
    dst = ls.zeros(5, 33, device="cuda", dtype=dtype)
    dst[1:3] = gpu[0, :, 0]  # broadcast a row into a slice
    assert np.array_equal(to_np(dst[2].cpu().float()), to_np(cpu[0, :, 0].to(dtype=dtype).float()))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_broadcast(op, dtype):
    ca, ga = both(randn(3, 1, 129), dtype)
    cb, gb = both(randn(17, 1) + 3, dtype)
    f = getattr(ls.functional, op)
    close(f(ga, gb), f(ca.to(dtype=dtype).to(dtype=ca.dtype), cb.to(dtype=dtype).to(dtype=cb.dtype)), DTYPES[dtype] * 4)
    close(f(ga.transpose(0, 2), 2.0 if op != "maximum" else ga.transpose(0, 2)),
          f(ca.transpose(0, 2), 2.0 if op != "maximum" else ca.transpose(0, 2)), DTYPES[dtype] * 4)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("dense_shape,row_shape", [((37, 768), (768,)),      # a bias: 16-byte packs
                                                   ((5, 9, 263), (263,)),    # odd row: one element
                                                   ((3, 17, 64), (17, 64)),  # a position table
                                                   ((2, 40), (1, 40))])
def test_binary_row_broadcast(op, dense_shape, row_shape, dtype):
    # One operand dense, the other a row repeated over the leading dims, on either side (sub and
    # div tell the sides apart), and with the row one element off 16-byte alignment.
    dense = randn(*dense_shape)
    if op == "div":  # the dense operand is a divisor too: keep it away from 0 (fp16 overflows)
        dense = np.abs(dense) + 0.5
    cd, gd = both(dense, dtype)
    big_c, big_g = both(randn(int(np.prod(row_shape)) + 1) + 3, dtype)
    f = getattr(ls.functional, op)
    for start in (0, 1):  # 1: the row starts 2 or 4 bytes past 16-byte alignment
        n = int(np.prod(row_shape))
        row_c, row_g = big_c[start:start + n].reshape(*row_shape), big_g[start:start + n].reshape(*row_shape)
        close(f(gd, row_g), f(cd, row_c), DTYPES[dtype] * 4)
        close(f(row_g, gd), f(row_c, cd), DTYPES[dtype] * 4)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_copy_of_odd_length_rows(dtype):
    # Rows contiguous on both sides but of odd length (no 16-byte vectors): the copy walks rows.
    cpu, gpu = both(randn(6, 1001), dtype)
    close(gpu[:, 1:].contiguous(), cpu[:, 1:], 0)
    dst = ls.zeros(6, 1002, device="cuda", dtype=dtype)
    dst[:, 2:] = gpu[:, 1:].to(dtype=ls.float32)  # a cast through the same path
    close(dst[:, 2:], cpu[:, 1:].to(dtype=ls.float32).to(dtype=cpu.dtype), 0)  # float64: rounded
    assert float(dst[:, :2].abs().sum().cpu().float().item()) == 0.0
    # Into rows that start 16-byte aligned (a padded buffer), from rows at every misalignment,
    # with and without a partial last 16 bytes: chunks shifted into place, the tail by bytes.
    cpu, gpu = both(randn(9, 1004), dtype)
    for width in (1000, 1003):
        pad = ls.zeros(9, 1008, device="cuda", dtype=dtype)
        pad[:, :width] = gpu[:, 1:width + 1]
        close(pad[:, :width], cpu[:, 1:width + 1], 0)
        assert float(pad[:, width:].abs().sum().cpu().float().item()) == 0.0


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["neg", "exp", "tanh", "sigmoid", "abs", "relu", "sin", "cos", "log", "sqrt", "rsqrt"])
def test_unary(op, dtype):
    a = randn(5, 127)
    if op in ("log", "sqrt", "rsqrt"):
        a = np.abs(a) + 0.5
    cpu, gpu = both(a, dtype)
    f = getattr(ls.functional, op)
    close(f(gpu), f(cpu), DTYPES[dtype] * 4)
    close(f(gpu[:, ::2]), f(cpu[:, ::2]), DTYPES[dtype] * 4)


def test_compare_where_clamp_integers():
    a, b = randn(4, 9), randn(9)
    ca, ga = both(a, ls.float32)
    cb, gb = both(b, ls.float32)
    assert np.array_equal(to_np((ga > gb).cpu()), a.astype(np.float32) > b.astype(np.float32))
    close(ls.where(ga > 0, ga, gb), ls.where(ca > 0, ca, cb), 0)
    close(ga.clamp(-0.5, 0.5), ca.clamp(-0.5, 0.5), 0)
    i = ls.tensor([[1, -2, 3]]).cuda()
    assert (i + i).cpu().tolist() == [[2, -4, 6]] and (-i).abs().cpu().tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("dtype", list(DTYPES))
# (3, 70000) and (262144,): rows of several 32768-element chunks read as 16-byte packs, the last
# chunk of (3, 70000) partial.
@pytest.mark.parametrize("shape,dims", [((1000,), None), ((7, 300), [1]), ((7, 300), [0]), ((3, 4, 5), [0, 2]),
                                        ((4, 1), [1]), ((3, 100003), [1]), ((70000, 3), [1]), ((300001,), None),
                                        ((3, 70000), [1]), ((262144,), None)])
def test_sum(shape, dims, dtype):
    # Error bound relative to the sum of magnitudes: a sum that cancels to a small value is still
    # only as accurate as the accumulation of its terms.
    cpu, gpu = both(randn(*shape), dtype)
    x = to_np(cpu.to(dtype=dtype).to(dtype=ls.float64))
    axes = tuple(dims) if dims else None
    ref, scale = x.sum(axis=axes, keepdims=True), np.abs(x).sum(axis=axes, keepdims=True)
    ours = to_np(gpu.sum(dims, keepdim=True).cpu().to(dtype=ls.float64))
    unit = {ls.float64: 1e-15, ls.float32: 1e-6, ls.bfloat16: 1e-2, ls.float16: 2e-3}[dtype]
    assert np.all(np.abs(ours - ref) <= 4 * unit * scale + 1e-30)
    assert ls.tensor([[1, 2], [3, 4]]).cuda().sum(0).cpu().tolist() == [4, 6]


def test_gradients_of_a_composite_expression():
    a, b = randn(6, 1, 31), randn(5, 31)
    results = []
    for device in ("cpu", "cuda"):
        x = ls.tensor(a).to(device=device).requires_grad_()
        y = ls.tensor(b).to(device=device).requires_grad_()
        z = ((x * y).tanh() + x.exp() / (y * y + 1) - ls.functional.maximum(x, y)).sum()
        z.backward()
        results.append((z.item(), to_np(x.grad.cpu()), to_np(y.grad.cpu())))
    (zc, xc, yc), (zg, xg, yg) = results
    assert abs(zc - zg) < 1e-9 * abs(zc)
    assert rel_err(xg, xc) < 1e-12 and rel_err(yg, yc) < 1e-12


def test_caching_allocator_reuses_blocks():
    ls.cuda.empty_cache()
    x = ls.randn(1 << 20, device="cuda")
    for _ in range(3):  # warm up: every size the loop needs is now cached
        y = (x * 2 + 1).exp()
        del y
    before = ls.cuda.memory_stats()
    for _ in range(20):
        y = (x * 2 + 1).exp()
        del y
    after = ls.cuda.memory_stats()
    assert after["num_cuda_malloc"] == before["num_cuda_malloc"]
    assert after["allocated_bytes"] == before["allocated_bytes"]
    assert after["peak_allocated_bytes"] >= 3 * (4 << 20)
    ls.cuda.empty_cache()
    assert ls.cuda.memory_stats()["reserved_bytes"] == ls.cuda.memory_stats()["allocated_bytes"]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_permute_keeping_the_last_dim(dtype):
    """(B, T, NH, HS) -> (B, NH, T, HS) and slices: the 16-byte vector copy path (HS a multiple of
    the vector width) and the element path (odd HS) give the CPU's values."""
    for shape in ((2, 5, 3, 64), (3, 4, 2, 24), (2, 3, 4, 5)):
        cpu, gpu = both(randn(*shape), dtype)
        for view in (lambda t: t.permute(0, 2, 1, 3), lambda t: t[:, 1:, :, :].transpose(1, 2),
                     lambda t: t.permute(2, 0, 1, 3)[1:]):
            close(view(gpu).contiguous(), view(cpu.to(dtype=dtype)).contiguous().to(dtype=cpu.dtype), 0)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_row_sum_of_an_unaligned_view(dtype):
    """Row sums read 16-byte packs only where the rows start 16-byte aligned: a tensor one element
    into its storage takes the element path, over several chunks a row."""
    cpu, gpu = both(randn(3 * 70000 + 1), dtype)
    cpu, gpu = (t[1:].reshape(3, 70000) for t in (cpu, gpu))
    close(gpu.sum([1]), cpu.to(dtype=dtype).to(dtype=cpu.dtype).sum([1]), DTYPES[dtype])


@pytest.mark.parametrize("np_dtype", [np.int32, np.uint8, np.bool_])
def test_integer_row_sums(np_dtype):
    """Integer and bool rows (16-byte packs of 4 or 16 elements) sum exactly, into int64."""
    a = np.random.default_rng().integers(0, 3, (3, 70000)).astype(np_dtype)
    assert ls.tensor(a).cuda().sum([1]).cpu().tolist() == a.astype(np.int64).sum(axis=1).tolist()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,dims", [((5000, 77), (0,)), ((3, 700, 130), (0, 1)), ((9, 5), (0,)),
                                        ((2, 3, 4), (0,)), ((100000, 3), (0,)), ((4096, 768), (0,)),
                                        ((2, 333, 264), (0, 1)), ((1000, 24), (0,)), ((7, 2056), (0,))])
@pytest.mark.parametrize("offset", [0, 1])
def test_sum_over_leading_dims(shape, dims, dtype, offset):
    """The column-sum path (leading dims of a contiguous tensor, one or two launches): 16-byte
    packs of columns where the row length allows, one element a lane otherwise or when the tensor
    starts one element into its storage (offset 1: not 16-byte aligned)."""
    n = int(np.prod(shape))
    cpu, gpu = both(randn(n + offset), dtype)
    cpu, gpu = (t[offset:].reshape(*shape) for t in (cpu, gpu))
    ref = cpu.to(dtype=dtype).to(dtype=cpu.dtype).sum(list(dims))
    tol = {ls.float32: 1e-6, ls.float64: 1e-13, ls.bfloat16: 1e-2, ls.float16: 2e-3}[dtype]
    close(gpu.sum(list(dims)), ref, tol)


# ---- floor_divide (//) and remainder (%), linspace, negative tensor indices -------------------

FLOOR_OPS = {"floor_divide": lambda a, b: a // b, "remainder": lambda a, b: a % b}


def same_bits(gpu, ref):
    """gpu (any dtype) equal to ref bit for bit, NaN where ref is NaN (payload aside)."""
    g, r = gpu.cpu(), ref.cpu()
    assert g.dtype == r.dtype and tuple(g.shape) == tuple(r.shape)
    if g.dtype in (ls.bfloat16, ls.float16):  # exact in float32
        g, r = g.float(), r.float()
    g, r = to_np(g), to_np(r)
    if g.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
        g, r = g[~np.isnan(r)].view(f"u{g.itemsize}"), r[~np.isnan(r)].view(f"u{r.itemsize}")
    np.testing.assert_array_equal(g, r)


def floor_operands(*shape):
    """Values of both signs over six decades, a few signed zeros, infinities and NaNs."""
    rng = np.random.default_rng()
    a = randn(*shape) * 10.0 ** rng.integers(-3, 4, shape)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5])
    flat = a.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 16))] = rng.choice(special, max(1, flat.size // 16))
    return a


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", list(FLOOR_OPS))
def test_floor_ops_match_the_cpu_bitwise(op, dtype):
    # The GPU computes in float32 (float64 for float64) what the CPU computes, rounded once to
    # the dtype: every path of the binary kernel (dense packs, a broadcast row, strided,
    # general broadcast, a scalar), against the CPU on the same dtype-rounded values.
    f = FLOOR_OPS[op]
    ref = ls.float64 if dtype == ls.float64 else ls.float32

    def on_cpu(x, y):
        return f(x.to(dtype=ref), y.to(dtype=ref) if isinstance(y, ls.Tensor) else y).to(dtype=dtype)
    for sa, sb in [((1000, 33), (1000, 33)), ((37, 768), (768,)), ((768,), (37, 768)), ((3, 1, 129), (17, 1))]:
        a = ls.tensor(floor_operands(*sa)).to(dtype=dtype)
        b = ls.tensor(floor_operands(*sb)).to(dtype=dtype)
        same_bits(f(a.cuda(), b.cuda()), on_cpu(a, b))
    a = ls.tensor(floor_operands(64, 40)).to(dtype=dtype)
    same_bits(f(a.cuda().T[:, ::2], a.cuda()[:32].T), on_cpu(a.T[:, ::2], a[:32].T))
    same_bits(f(a.cuda(), -2.5), on_cpu(a, -2.5))
    same_bits(f(3.0, a.cuda()), on_cpu(ls.full([], 3.0, dtype=dtype).expand(64, 40), a))
    same_bits(getattr(ls, op)(a.cuda(), 0.75), on_cpu(a, 0.75))


@pytest.mark.parametrize("np_dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("op", list(FLOOR_OPS))
def test_floor_ops_on_integers_match_the_cpu(op, np_dtype):
    f = FLOOR_OPS[op]
    rng = np.random.default_rng()
    lo = 0 if np_dtype == np.uint8 else -1000
    a = rng.integers(lo, 1000, (5, 300)).astype(np_dtype)
    b = rng.integers(lo, 1000, (300,)).astype(np_dtype)
    b[b == 0] = 7
    cpu = f(ls.tensor(a), ls.tensor(b))
    same_bits(f(ls.tensor(a).cuda(), ls.tensor(b).cuda()), cpu)
    same_bits(f(ls.tensor(a).cuda()[:, ::3], 7), f(ls.tensor(a)[:, ::3], 7))
    if np_dtype != np.uint8:
        info = np.iinfo(np_dtype)
        x = ls.tensor(np.array([info.min, info.min, info.max, -7, 7], np_dtype))
        y = ls.tensor(np.array([-1, 1, -1, 2, -2], np_dtype))
        same_bits(f(x.cuda(), y.cuda()), f(x, y))
    # a zero divisor: no device-side error (it could only raise after a sync), 0 instead
    z = f(ls.tensor(a).cuda(), 0)
    ls.cuda.synchronize()
    assert not to_np(z.cpu()).any()


def test_floor_ops_grads_and_errors_on_the_gpu():
    a, b = randn(6, 1, 31) * 3, randn(5, 31)
    grads = []
    for device in ("cpu", "cuda"):
        x = ls.tensor(a).to(device=device).requires_grad_()
        y = ls.tensor(b).to(device=device).requires_grad_()
        (x % y * ls.tensor(np.arange(31.0)).to(device=device)).sum().backward()
        grads.append((to_np(x.grad.cpu()), to_np(y.grad.cpu())))
        with pytest.raises(RuntimeError, match="derivative for 'floor_divide'"):
            (x // y).sum().backward()
    for g_gpu, g_cpu in zip(grads[1], grads[0]):
        np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="bool"):
        ls.tensor([True]).cuda() // ls.tensor([True]).cuda()
    x = ls.tensor([7, -7, 9]).cuda()
    x //= 2
    x %= 3
    assert x.cpu().tolist() == [0, 2, 1]


@pytest.mark.parametrize("dtype", list(DTYPES) + [ls.int64, ls.int32])
def test_linspace_matches_the_cpu_bitwise(dtype):
    for start, end, steps in [(-3.3, 7.1, 101), (0.1, 1e6, 100001), (2, -5.5, 33), (3.5, 9, 1), (0, 1, 0)]:
        gpu = ls.linspace(start, end, steps, dtype=dtype, device="cuda")
        assert gpu.is_cuda
        same_bits(gpu, ls.linspace(start, end, steps, dtype=dtype))


def test_negative_tensor_ids_wrap_on_the_gpu():
    a = randn(6, 4)
    t = ls.tensor(a).cuda()
    for dtype in (ls.int64, ls.int32):
        idx = ls.tensor([-1, 0, -6, 5], dtype=dtype).cuda()
        np.testing.assert_array_equal(to_np(t[idx].cpu()), a[[-1, 0, -6, 5]])
        np.testing.assert_array_equal(to_np(t[:, idx[:2] - 3].cpu()), a[:, [-4, -3]])


def test_logical_operators_on_bool_masks_on_the_gpu():
    # &, |, ^ and ~ of masks go through where and compare: the CUDA kernels' bool paths
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 33)) > 0.5, rng.random((1, 33)) > 0.3
    ca, cb = ls.tensor(a), ls.tensor(b)
    ga, gb = ca.cuda(), cb.cuda()
    for f in (lambda x, y: x & y, lambda x, y: x | y, lambda x, y: x ^ y, lambda x, y: ~x & y,
              lambda x, y: x & True, lambda x, y: False | y):
        got = f(ga, gb)
        assert got.is_cuda and got.dtype == ls.bool
        assert got.cpu().tolist() == f(ca, cb).tolist()
    ints = ls.tensor([0, 5, -2**63, 2**63 - 1])
    assert (~ints.cuda()).cpu().tolist() == (~ints).tolist()


# ---- NaN and edge values of relu, clamp and pow: the CPU's values (shared functors) -------------

@pytest.mark.parametrize("dtype", list(DTYPES))
def test_relu_and_clamp_propagate_nan_like_the_cpu(dtype):
    # relu(NaN) = NaN with the gradient passing there; clamp(lo > hi) = hi; a NaN bound gives NaN
    # (cpp/ops/clamp_math.h): dense (vec_map) and strided paths; every value exact in 16 bits.
    a = np.tile([np.nan, -1.0, 0.0, 2.0, 1.5, 5.0, -np.inf, np.inf], (6, 16))
    fns = [lambda x: x.relu(), lambda x: x.clamp(2.0, 1.0), lambda x: x.clamp(float("nan"), None),
           lambda x: x.clamp(None, float("nan")), lambda x: x.clamp(1.0, 2.0)]
    for f in fns:
        for view in (lambda x: x, lambda x: x[:, ::3]):
            cpu, gpu = both(a, dtype)
            cpu.requires_grad_()
            gpu.requires_grad_()
            yc, yg = f(view(cpu)), f(view(gpu))
            same_bits(yg, yc.to(dtype=dtype))
            yc.sum().backward()
            yg.sum().backward()
            same_bits(gpu.grad, cpu.grad.to(dtype=dtype))


@pytest.mark.parametrize("np_dtype", [np.int32, np.int64, np.uint8])
def test_integer_pow_is_exact_like_the_cpu(np_dtype):
    # exact and wrapping (cpp/ops/int_pow.h), where pow in double rounded past 2^53; negative
    # exponents give 1, (-1)^e or 0
    lo = 0 if np_dtype == np.uint8 else -3
    base = np.repeat(np.arange(lo, 4), 70).astype(np_dtype)
    exp = np.tile(np.arange(70), 4 - lo).astype(np_dtype)
    if np_dtype != np.uint8:
        exp[::7] = -exp[::7] - 1
    x, e = ls.tensor(base), ls.tensor(exp)
    same_bits(x.cuda() ** e.cuda(), x ** e)
    same_bits(x.cuda()[::2] ** e.cuda()[1::2], x[::2] ** e[1::2])  # strided
    same_bits(x.cuda().reshape(-1, 1) ** e.cuda()[:9], x.reshape(-1, 1) ** e[:9])  # broadcast
    if np_dtype == np.int64:
        assert (ls.tensor([3, 3]).cuda() ** ls.tensor([39, 40]).cuda()).cpu().tolist() == \
            [4052555153018976267, -6289078614652622815]


def test_pow_grads_at_zero_like_the_cpu():
    # d(x ** 0)/dx = 0 at x = 0 and d(0 ** e)/de = 0 for e >= 0 (torch's masks), on the GPU too
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0])  # no log but log 1 and log 0: exact on both
    e = np.array([0.0, 2.0, -1.0, 0.5, 0.0, 0.0, 3.0])
    grads = []
    for device in ("cpu", "cuda"):
        xs = ls.tensor(x).to(device=device).requires_grad_()
        es = ls.tensor(e).to(device=device).requires_grad_()
        (xs ** es).sum().backward()
        grads.append((xs.grad, es.grad))
    for g_gpu, g_cpu in zip(grads[1], grads[0]):
        same_bits(g_gpu, g_cpu)
