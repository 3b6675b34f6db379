"""Tensor basics: factories, dtypes, views without copies, conversions, printing, indexing."""
import numpy as np
import pytest

import llmscratch as ls
from conftest import randn, to_np, torch


def test_tensor_infers_dtypes_like_torch():
    assert ls.tensor([1.0, 2.0]).dtype == ls.float32
    assert ls.tensor([1, 2]).dtype == ls.int64
    assert ls.tensor([True, False]).dtype == ls.bool
    assert ls.tensor(np.zeros(3)).dtype == ls.float64
    assert ls.tensor(np.zeros(3, np.int32)).dtype == ls.int32
    assert ls.tensor(3.5).shape == ()
    assert ls.tensor([[1, 2], [3, 4]], dtype=ls.float64).dtype == ls.float64
    assert ls.tensor([0.1], dtype=ls.float64).item() == 0.1  # never through float32
    assert ls.tensor([0.1]).item() == float(np.float32(0.1))
    assert ls.tensor([2**53 + 1]).item() == 2**53 + 1  # int64 exactly, not through a double
    with pytest.raises(OverflowError, match="does not fit in int64"):
        ls.tensor([2**63])
    # numpy scalars and 0-d tensors keep their dtype, in lists too (float64 losses had become float32)
    loss = ls.tensor(0.1, dtype=ls.float64)
    for data, want in (([loss, loss], ls.float64), ([np.float64(0.1)], ls.float64), ([np.int32(3)], ls.int32),
                       ([ls.tensor(3, dtype=ls.uint8)], ls.uint8)):
        assert ls.tensor(data).dtype == want == getattr(ls, str(torch.tensor(
            [torch.from_dlpack(d) if isinstance(d, ls.Tensor) else d for d in data]).dtype).split(".")[1])


@pytest.mark.parametrize("items", [
    lambda m: [m.tensor(1), m.tensor(2.5)],  # int64 and float32: float32 (numpy's rule gave float64)
    lambda m: [np.float32(1.5), 2.5],
    lambda m: [np.float16(1.5), 2],
    lambda m: [np.int32(1), 2],
    lambda m: [np.uint8(1), True],
    lambda m: [m.tensor(1.0, dtype=m.bfloat16), m.tensor(2.0, dtype=m.bfloat16)],  # stays bf16
    lambda m: [m.tensor(1.0, dtype=m.bfloat16), m.tensor(2.0, dtype=m.float16)],
    lambda m: [m.tensor(1.0, dtype=m.float64), 2.5],
    lambda m: [m.tensor(True), m.tensor(2)],
    lambda m: [[m.tensor(1.0)], [m.tensor(3)]],
])
def test_a_list_of_tensors_and_numpy_scalars_promotes_like_torch(items):
    ours, ref = ls.tensor(items(ls)), torch.tensor(items(torch))
    assert str(ours.dtype).split(".")[1] == str(ref.dtype).split(".")[1]
    assert ours.tolist() == ref.tolist()


def test_python_numbers_into_an_integer_dtype_must_fit_like_torch():
    # they had wrapped: 300 into uint8 gave 44, NaN into int64 gave INT64_MIN
    for data, dtype in (([300], ls.uint8), ([-2.5], ls.uint8), ([255.5], ls.uint8), ([-256], ls.uint8),
                        ([2**31], ls.int32), ([float("nan")], ls.int64), ([1e20], ls.int64),
                        ([[1, 2], [300, 4]], ls.uint8)):
        with pytest.raises(RuntimeError, match=f"cannot be converted to {dtype.name} without overflow"):
            ls.tensor(data, dtype=dtype)
        with pytest.raises(RuntimeError):
            torch.tensor(data, dtype=getattr(torch, dtype.name))
    assert ls.tensor([-1, -255, 255], dtype=ls.uint8).tolist() == [255, 1, 255]  # torch's wrap
    assert ls.tensor(np.array([300]), dtype=ls.uint8).tolist() == [44]  # numpy data converts as numpy's
    t = ls.zeros(3, dtype=ls.int32)
    for v in (1e20, float("nan")):  # a float scalar written into an int tensor, as torch
        with pytest.raises(RuntimeError, match="cannot be converted to int32"):
            t[0] = v
    t[0] = 2.7
    assert t.tolist() == [2, 0, 0]


def test_integer_arange_truncates_its_bounds_like_torchs_int64():
    for args in ((0, 3, 1.5), (1, 2.5), (-0.5, 2), (5.9, 0.2, -1.5)):
        assert ls.arange(*args, dtype=ls.int64).tolist() == torch.arange(*args, dtype=torch.int64).tolist()
    with pytest.raises(ValueError, match="step must be nonzero"):  # 0.25 truncates to 0
        ls.arange(0, 1, 0.25, dtype=ls.int64)


def test_factories():
    assert ls.zeros(2, 3).tolist() == [[0.0] * 3] * 2
    assert ls.ones((2,), dtype=ls.int32).tolist() == [1, 1]
    assert ls.full((2, 2), 7).dtype == ls.int64
    np.testing.assert_allclose(to_np(ls.arange(0, 1, 0.25)), [0, 0.25, 0.5, 0.75])
    assert ls.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert ls.arange(10, 0, -3).tolist() == [10, 7, 4, 1]
    x = ls.zeros(3, 4, requires_grad=True)
    assert x.requires_grad and x.is_leaf
    assert ls.zeros_like(x).shape == (3, 4)
    assert ls.full_like(x, 2.5).tolist()[0][0] == 2.5
    r = ls.randint(3, 9, (1000,))
    assert r.dtype == ls.int64 and r.min().item() >= 3 and r.max().item() <= 8
    r = ls.randint(5, (100,))  # randint(high, size), as torch (nanoGPT's get_batch)
    assert r.shape == (100,) and 0 <= r.min().item() and r.max().item() <= 4


LINSPACE_CASES = [(0, 1, 7), (-3.3, 7.1, 7), (-3.3, 7.1, 101), (2, -5.5, 33), (-1e30, 1e30, 7),
                  (0.1, 1e6, 100001), (5, 5, 4), (3.5, 9, 2), (3.5, 9, 1), (0, 1, 0)]


@pytest.mark.parametrize("start,end,steps,dtype", [
    case + (dtype,) for case in LINSPACE_CASES for dtype in ("float64", "float32", "int64", "int32")
    if dtype.startswith("float") or abs(case[0]) < 2**31])
def test_linspace_matches_torch_bitwise(start, end, steps, dtype):
    # start + i step below steps // 2, end - (steps - 1 - i) step above, each a fused
    # multiply-add as torch's kernels compute it ((-1e30, 1e30, 7) tells a rounded product from
    # a fused one in the middle element)
    ours = ls.linspace(start, end, steps, dtype=getattr(ls, dtype))
    ref = torch.linspace(start, end, steps, dtype=getattr(torch, dtype)).numpy()
    assert ours.dtype == getattr(ls, dtype) and tuple(ours.shape) == (steps,)
    np.testing.assert_array_equal(to_np(ours).view(np.uint8), ref.view(np.uint8))


def test_linspace_defaults_and_arguments():
    t = ls.linspace(-1, 1, 5)
    assert t.dtype == ls.float32 and t.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert ls.linspace(2, 3, 1).tolist() == [2.0] and ls.linspace(2, 3, 0).shape == (0,)
    assert ls.linspace(ls.tensor(0.0), ls.tensor(2.0), 3).tolist() == [0.0, 1.0, 2.0]
    g = ls.linspace(0, 1, 3, dtype=ls.float64, requires_grad=True)
    assert g.requires_grad and g.is_leaf and g.dtype == ls.float64
    # the 16-bit floats: the float32 values rounded once (torch rounds every step of its math to
    # the 16-bit type, which can put it a few units in the last place off)
    for dtype in (ls.bfloat16, ls.float16):
        np.testing.assert_array_equal(to_np(ls.linspace(-3.3, 7.1, 101, dtype=dtype).float()),
                                      to_np(ls.linspace(-3.3, 7.1, 101).to(dtype=dtype).float()))
    with pytest.raises(ValueError, match="non-negative"):
        ls.linspace(0, 1, -1)
    with pytest.raises(TypeError, match="integer"):
        ls.linspace(0, 1, 5.0)
    # integer end points go to the dtype first, as torch's: uint8 wraps a negative one, a value
    # past the dtype's range is refused (torch: "cannot be converted"), and bool is refused
    for start, end, dtype in ((-5, 5, "uint8"), (-255, 255, "uint8"), (-2**31, 2**31 - 1, "int32")):
        assert ls.linspace(start, end, 3, dtype=getattr(ls, dtype)).tolist() == \
            torch.linspace(start, end, 3, dtype=getattr(torch, dtype)).tolist()
    for start, end, dtype in ((0, 3e9, ls.int32), (-256, 0, ls.uint8), (0, 2.0**63, ls.int64)):
        with pytest.raises(ValueError, match="does not fit in"):
            ls.linspace(start, end, 5, dtype=dtype)
    with pytest.raises(TypeError, match="bool"):
        ls.linspace(0, 1, 3, dtype=ls.bool)


def test_random_is_reproducible_and_well_distributed():
    ls.manual_seed(123)
    a = ls.randn(10000)
    ls.manual_seed(123)
    b = ls.randn(10000)
    assert np.array_equal(to_np(a), to_np(b))
    c = ls.randn(10000)
    assert not np.array_equal(to_np(a), to_np(c))
    assert abs(to_np(a).mean()) < 0.05 and abs(to_np(a).std() - 1) < 0.05
    u = to_np(ls.rand(10000))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    state = ls.get_rng_state()
    d = ls.rand(5)
    ls.set_rng_state(state)
    assert np.array_equal(to_np(ls.rand(5)), to_np(d))


def test_philox_known_answer():
    # Random123's published known-answer vector for Philox4x32-10, counter 0 and key 0.
    import llmscratch_core as core
    assert core.philox4x32_10(0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def philox_words(seed, offset, n, c2=0):
    """w(i) (c2 = 0) or w'(i) (c2 = 1) of core/philox.h for i < n, as uint64."""
    import llmscratch_core as core
    blocks = [core.philox4x32_10(offset + b, seed, c2) for b in range((n + 3) // 4)]
    return np.array(blocks, dtype=np.uint64).reshape(-1)[:n]


def philox_words64(seed, offset, n):
    """W(i) = w(i) 2^32 + w'(i): the 64 bits of an element that needs more than 32."""
    return (philox_words(seed, offset, n) << np.uint64(32)) | philox_words(seed, offset, n, 1)


@pytest.mark.parametrize("dtype,digits", [(ls.bfloat16, 8), (ls.float16, 11)])
def test_half_precision_rand_is_the_dtype_grid_below_one(dtype, digits):
    # torch.rand is [0, 1): a float32 uniform rounded to 16 bits reached 1.0. The uniform is
    # k 2^-d, d the dtype's significand bits, from the top d bits of the stream's word.
    ls.manual_seed(11)
    u = to_np(ls.rand(1 << 20, dtype=dtype).float()).astype(np.float64)
    assert u.max() < 1
    assert u.min() == 0 and u.max() == 1 - 2.0**-digits
    k = u * 2**digits
    assert np.array_equal(k, np.floor(k))  # on the grid of step 2^-d, not the dtype's finer one
    assert len(np.unique(k)) == 2**digits  # every grid point occurs
    assert abs(u.mean() - (1 - 2.0**-digits) / 2) < 2e-3
    ls.manual_seed(11)
    f32 = to_np(ls.rand(1 << 20)).astype(np.float64)
    assert np.array_equal(u, np.floor(f32 * 2**digits) / 2**digits)  # the float32 one, truncated
    ls.manual_seed(11)
    words = philox_words(11, 0, 1001)
    np.testing.assert_array_equal(to_np(ls.rand(1001, dtype=dtype).float()),
                                  (words >> np.uint64(32 - digits)) * 2.0**-digits)


def test_float64_rand_has_53_random_bits():
    ls.manual_seed(5)
    u = to_np(ls.rand(1 << 16, dtype=ls.float64))
    assert u.dtype == np.float64 and u.min() >= 0 and u.max() < 1
    assert np.mean(u != u.astype(np.float32).astype(np.float64)) > 0.99  # 24 bits would be 0
    assert abs(u.mean() - 0.5) < 0.01
    ls.manual_seed(5)
    f32 = to_np(ls.rand(1 << 16)).astype(np.float64)
    np.testing.assert_array_equal(np.floor(u * 2**24) / 2**24, f32)  # the same stream on top
    ls.manual_seed(5)
    d = ls.rand(1001, dtype=ls.float64)
    np.testing.assert_array_equal(to_np(d), (philox_words64(5, 0, 1001) >> np.uint64(11)) * 2.0**-53)
    assert ls.get_rng_state() == (5, 251)  # ceil(1001 / 4) blocks, whatever the dtype


def test_float64_randn_is_float64_box_muller():
    ls.manual_seed(9)
    z = to_np(ls.randn(1 << 16, dtype=ls.float64))
    assert np.mean(z != z.astype(np.float32).astype(np.float64)) > 0.99
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    ls.manual_seed(9)
    # the same stream: float32's 24-bit uniforms and float32 math differ from it by ~1e-6, more
    # only where 1 - u1 is a few 2^-24 (where the 24-bit uniform saturated the tail)
    assert np.mean(np.abs(z - to_np(ls.randn(1 << 16))) < 1e-5) > 0.999
    ls.manual_seed(9)
    n = 1001
    u = (philox_words64(9, 0, n + 3) >> np.uint64(11)) * 2.0**-53
    i = np.arange(n)
    pair = i - i % 2
    r, ang = np.sqrt(-2 * np.log(1 - u[pair])), 2 * np.pi * u[pair + 1]
    want = np.where(i % 2 == 1, r * np.sin(ang), r * np.cos(ang))
    np.testing.assert_allclose(to_np(ls.randn(n, dtype=ls.float64)), want, rtol=1e-14, atol=1e-14)


def test_randint_uses_64_bits_for_ranges_over_2_to_the_32():
    ls.manual_seed(2)
    r = to_np(ls.randint(0, 1 << 48, (1 << 16,)))
    assert r.min() >= 0 and r.max() < 1 << 48
    assert np.mean(r >= 1 << 40) > 0.99  # 32 bits never leave [0, 2^32)
    assert abs(r.mean() / 2.0**47 - 1) < 0.02
    ls.manual_seed(2)
    np.testing.assert_array_equal(to_np(ls.randint(-(1 << 47), 1 << 47, (1001,))),
                                  (philox_words64(2, 0, 1001) % np.uint64(1 << 48)).astype(np.int64)
                                  - (1 << 47))
    # exact in int64 beyond 2^53 (no double on the way): the low bits are random too
    r = to_np(ls.randint(1 << 60, (1 << 60) + (1 << 40), (1 << 16,)))
    assert r.min() >= 1 << 60 and r.max() < (1 << 60) + (1 << 40)
    assert 0.45 < np.mean(r & 1) < 0.55
    # the whole int64 range, where high - low overflows int64
    lo, hi = -(1 << 63), (1 << 63) - 1
    r = to_np(ls.randint(lo, hi, (1 << 16,)))
    assert r.min() < -(1 << 62) and r.max() > 1 << 62 and 0.45 < np.mean(r < 0) < 0.55
    # ranges up to 2^32 keep the 32-bit words (the numbers of earlier versions)
    for low, high in [(0, 50257), (-7, 3), (0, 1 << 32), (-(1 << 31), 1 << 31)]:
        ls.manual_seed(4)
        want = (philox_words(4, 0, 1001) % np.uint64(high - low)).astype(np.int64) + low
        np.testing.assert_array_equal(to_np(ls.randint(low, high, (1001,))), want)


def test_randint_range_must_fit_the_dtype():
    assert to_np(ls.randint(-(1 << 31), 1 << 31, (1000,), dtype=ls.int32)).dtype == np.int32
    assert to_np(ls.randint(0, 256, (1000,), dtype=ls.uint8)).max() > 200
    with pytest.raises(ValueError, match="does not fit in int32"):
        ls.randint(0, (1 << 31) + 1, (3,), dtype=ls.int32)
    with pytest.raises(ValueError, match="does not fit in uint8"):
        ls.randint(-1, 10, (3,), dtype=ls.uint8)
    with pytest.raises(ValueError, match="does not fit in bool"):
        ls.randint(0, 3, (3,), dtype=ls.bool)


@pytest.mark.parametrize("shape,perm", [((3, 5, 7), (2, 0, 1)), ((1, 4), (1, 0)), ((2, 3, 4, 5), (0, 2, 1, 3))])
def test_views_share_memory_and_match_numpy(shape, perm):
    a = randn(*shape)
    t = ls.tensor(a)
    p = t.permute(*perm)
    np.testing.assert_array_equal(to_np(p), a.transpose(perm))
    base = t.data_ptr()
    assert p.data_ptr() == base
    assert t.reshape(-1).data_ptr() == base
    assert t.transpose(0, -1).data_ptr() == base
    assert t.unsqueeze(1).squeeze(1).data_ptr() == base
    np.testing.assert_array_equal(to_np(t.reshape(-1)), a.reshape(-1))
    np.testing.assert_array_equal(to_np(t.transpose(0, -1)), np.swapaxes(a, 0, -1))


def test_t_transposes_up_to_two_dims_like_torch():
    a = randn(3, 5)
    t = ls.tensor(a)
    np.testing.assert_array_equal(to_np(t.t()), a.T)
    assert t.t().data_ptr() == t.data_ptr()  # a view
    v = ls.tensor([1.0, 2.0])
    assert v.t().tolist() == [1.0, 2.0] and ls.tensor(3.0).t().tolist() == 3.0  # 0-d and 1-d as they are
    with pytest.raises(ValueError, match="at most 2 dims, got 3"):
        ls.zeros(2, 3, 4).t()


def test_slicing_matches_numpy_and_is_a_view():
    a = randn(5, 6, 7)
    t = ls.tensor(a)
    for key in [(1,), (slice(1, 4),), (slice(None), 2), (Ellipsis, 3), (slice(0, 5, 2), slice(1, None, 3), -1),
                (None, 2), (1, None, slice(2, 5)), (-1, -2, -3), (slice(-3, None),), (slice(10, 20),)]:
        np.testing.assert_array_equal(to_np(t[key]), a[key], err_msg=str(key))
    v = t[1:3, ::2]
    assert v.data_ptr() == t.data_ptr() + (1 * 6 * 7) * 8
    assert not v.is_contiguous()
    c = v.contiguous()
    assert c.is_contiguous() and c.data_ptr() != t.data_ptr()
    np.testing.assert_array_equal(to_np(c), a[1:3, ::2])


def test_integer_tensor_index():
    a = randn(6, 4)
    t = ls.tensor(a)
    np.testing.assert_array_equal(to_np(t[[4, 0, 4]]), a[[4, 0, 4]])
    np.testing.assert_array_equal(to_np(t[:, ls.tensor([3, 1])]), a[:, [3, 1]])
    np.testing.assert_array_equal(to_np(t[[-1, 0]]), a[[-1, 0]])  # a list counts from the end
    np.testing.assert_array_equal(to_np(t[:, np.array([-3])]), a[:, [-3]])
    assert tuple(t[[]].shape) == (0, 4)
    for bad in ([-7], np.array([0, 6])):  # named as given, not wrapped (had said "index -1")
        with pytest.raises(IndexError, match=f"index {np.asarray(bad)[-1]} is out of bounds for "
                                             "dimension 0 with size 6"):
            t[bad]


@pytest.mark.parametrize("mask_shape", [(3,), (3, 4), (3, 4, 2), ()])
def test_boolean_mask_index_reads_and_writes_as_torch(mask_shape):
    rng = np.random.default_rng(len(mask_shape))
    a = randn(3, 4, 2)
    m = rng.random(mask_shape) > 0.4 if mask_shape else np.bool_(True)
    x, tx = ls.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    out, ref = x[ls.tensor(m)], tx[torch.tensor(m)]
    assert out.shape == tuple(ref.shape)
    np.testing.assert_array_equal(to_np(out), to_np(ref))
    (out * out).sum().backward()
    (ref * ref).sum().backward()
    np.testing.assert_array_equal(to_np(x.grad), to_np(tx.grad))
    picked = int(np.sum(m))
    rows = randn(picked, *a.shape[len(mask_shape):])
    for value, tvalue in ((7.5, 7.5), (ls.tensor(rows), torch.tensor(rows))):
        y, ty = ls.tensor(a), torch.tensor(a)
        y[ls.tensor(m)] = value
        ty[torch.tensor(m)] = tvalue
        np.testing.assert_array_equal(to_np(y), ty.numpy())


def test_boolean_mask_writes_broadcast_and_refuse_a_wrong_shape():
    a = randn(3, 2)
    y, ty = ls.tensor(a), torch.tensor(a)
    keep = np.array([True, False, True])
    y[ls.tensor(keep)] = ls.tensor([1.0, 2.0])  # one row for every selected row
    ty[torch.tensor(keep)] = torch.tensor([1.0, 2.0], dtype=torch.float64)
    np.testing.assert_array_equal(to_np(y), ty.numpy())
    ids = ls.tensor(np.arange(6).reshape(2, 3))
    ids[ids > 2] = -1
    assert to_np(ids).tolist() == [[0, 1, 2], [-1, -1, -1]]
    with pytest.raises(IndexError, match="mask of shape \\(2,\\) does not match"):
        y[ls.tensor([True, False])]
    with pytest.raises(ValueError, match="cannot be broadcast to the indexing result's shape \\(2, 2\\)"):
        y[ls.tensor(keep)] = ls.ones(3)


@pytest.mark.parametrize("where", ["rows", "columns", "after an int", "ellipsis, 2-d ids", "repeated", "negative"])
@pytest.mark.parametrize("value_kind", ["scalar", "full", "broadcast"])
def test_integer_tensor_index_writes_as_torch(where, value_kind):
    key, ids = {"rows": (lambda i: i, [4, 0, 2]), "columns": (lambda i: (slice(None), i), [3, 1]),
                "after an int": (lambda i: (1, slice(None), i), [2, 0]),
                "ellipsis, 2-d ids": (lambda i: (Ellipsis, i), [[0, 2], [1, 1]]),
                "repeated": (lambda i: i, [1, 3, 1]), "negative": (lambda i: (slice(1, 4), i), [-1, 0])}[where]
    a = randn(5, 4, 3)
    ref = torch.tensor(a)
    shape = tuple(ref[key(torch.tensor(ids))].shape)
    value = {"scalar": 3.5, "full": randn(*shape), "broadcast": randn(shape[-1])}[value_kind]
    ref[key(torch.tensor(ids))] = torch.tensor(value) if value_kind != "scalar" else value
    for index in (ls.tensor(ids), ids):  # a tensor or a list
        x = ls.tensor(a)
        x[key(index)] = ls.tensor(value) if value_kind != "scalar" else value
        np.testing.assert_array_equal(to_np(x), ref.numpy())


def test_index_writes_keep_the_tensors_dtype_and_drop_leading_ones():
    # a float value into an int64 tensor: the written elements are cast, the others untouched
    # (a where in float32 had rounded 2**40 + 1 to 2**40 everywhere)
    for key in ([2], ls.tensor([False, False, True])):
        x = ls.tensor([2**40 + 1, 2**40 + 3, 7])
        x[key] = ls.tensor([1.5])
        assert x.dtype == ls.int64 and to_np(x).tolist() == [2**40 + 1, 2**40 + 3, 1]
    x = ls.zeros(2, 3, 4)
    x[[1]] = ls.ones(1, 1, 3, 4)  # leading size-1 dims beyond the result's, as torch
    x[ls.tensor([True, False])] = ls.full((1, 1, 3, 4), 2.0)
    assert to_np(x)[0].tolist() == [[2.0] * 4] * 3 and to_np(x)[1].tolist() == [[1.0] * 4] * 3
    with pytest.raises(TypeError, match="must be int32, int64 or bool, got .*uint8"):
        x[ls.tensor(np.array([1, 0], np.uint8))] = -1.0
    with pytest.raises(TypeError, match="must be int32, int64 or bool"):
        x[ls.tensor(np.array([1, 0], np.uint8))]


def test_integer_tensor_index_writes_refuse_a_wrong_shape_or_id():
    x = ls.zeros(5, 4)
    with pytest.raises(ValueError, match="cannot be broadcast to the indexing result's shape \\(2, 4\\)"):
        x[ls.tensor([0, 1])] = ls.ones(3, 4)
    with pytest.raises(IndexError, match="index 9 is out of bounds for dimension 0 with size 5"):
        x[ls.tensor([0, 9])] = 1.0
    x[ls.tensor([], dtype=ls.int64)] = 1.0
    assert not to_np(x).any()


def test_negative_ids_in_a_tensor_index_count_from_the_end_like_torch():
    a = randn(6, 4)
    t, ta = ls.tensor(a), torch.from_numpy(a)
    for dtype, tdtype in ((ls.int64, torch.int64), (ls.int32, torch.int32)):
        for idx in ([-1, 0, -6, 5], [[-2], [3]]):
            np.testing.assert_array_equal(to_np(t[ls.tensor(idx, dtype=dtype)]),
                                          ta[torch.tensor(idx, dtype=tdtype)].numpy())
            np.testing.assert_array_equal(to_np(t[:, ls.tensor(idx, dtype=dtype)[..., :1] % 4 - 4]),
                                          ta[:, torch.tensor(idx, dtype=tdtype)[..., :1] % 4 - 4].numpy())
    np.testing.assert_array_equal(to_np(t[..., ls.tensor(-1)]), a[..., -1])
    for bad in (-7, 6):  # still out of range: IndexError naming the id as written
        with pytest.raises(IndexError, match=f"index {bad} is out of bounds for dimension 0 with size 6"):
            t[ls.tensor([0, bad])]
        with pytest.raises(IndexError):
            ta[torch.tensor([0, bad])]
    with pytest.raises(IndexError, match="index -5 is out of bounds for dimension 1 with size 4"):
        t[1:, ls.tensor([-1, -5, 7])]
    # the gradient goes to the wrapped rows
    x = ls.tensor(a, requires_grad=True)
    x[ls.tensor([-1, -1, 0])].sum().backward()
    assert to_np(x.grad)[:, 0].tolist() == [1, 0, 0, 0, 0, 2]
    # index_select and embedding keep refusing negative ids, as torch's
    with pytest.raises(IndexError):
        ls.functional.index_select(t, 0, ls.tensor([-1]))
    with pytest.raises(IndexError):
        ls.functional.embedding(ls.tensor([-1]), t)
    with pytest.raises(IndexError):
        torch.index_select(ta, 0, torch.tensor([-1]))


def test_numpy_of_a_tensor_that_requires_grad_raises_like_torch():
    msg = r"Can't call numpy\(\) on Tensor that requires grad. Use tensor.detach\(\).numpy\(\) instead."
    w = ls.ones(3, requires_grad=True)
    for t in (w, w * 2, w[1:]):
        with pytest.raises(RuntimeError, match=msg):
            t.numpy()
        with pytest.raises(RuntimeError, match=msg):
            np.asarray(t)  # __array__, as torch's
        np.testing.assert_array_equal(t.detach().numpy(), np.asarray(t.detach()))
        assert t.tolist() == t.detach().numpy().tolist()  # tolist() reads values, as torch's
    with pytest.raises(RuntimeError, match=msg):
        torch.ones(3, requires_grad=True).numpy()
    with ls.no_grad():
        assert (w * 2).numpy().tolist() == [2.0, 2.0, 2.0]
    assert "requires_grad=True" in repr(w) and w.grad is None
    # tensor() of a list of such tensors copies their values, as torch's
    a = ls.tensor(1.5, requires_grad=True)
    t = ls.tensor([a, a * 2, [a][0]])
    assert t.tolist() == [1.5, 3.0, 1.5] and not t.requires_grad
    assert ls.tensor([[w, w]]).shape == (1, 2, 3)


def test_setitem_writes_through_views():
    t = ls.zeros(3, 4)
    t[1] = 5.0
    t[:, 2] = ls.tensor([1.0, 2.0, 3.0])
    t[0, 0] = 9
    expected = np.zeros((3, 4), np.float32)
    expected[1] = 5
    expected[:, 2] = [1, 2, 3]
    expected[0, 0] = 9
    np.testing.assert_array_equal(to_np(t), expected)


def test_setitem_of_a_list_takes_the_tensors_dtype():
    x = ls.zeros(2, dtype=ls.float64)
    x[:] = [0.1, 0.2]
    assert x.tolist() == [0.1, 0.2]
    y = ls.zeros(2, dtype=ls.int64)
    y[:] = np.array([2**60 + 1, -3])
    assert y.tolist() == [2**60 + 1, -3]


def test_setitem_drops_the_values_leading_size_one_dims_like_torch():
    t, ref = ls.zeros(2, 3), torch.zeros(2, 3)
    for x in (t, ref):
        x[0, 0] = ls.ones(1, 1) if x is t else torch.ones(1, 1)
        x[1] = ls.full((1, 1, 3), 2.0) if x is t else torch.full((1, 1, 3), 2.0)
    assert t.tolist() == ref.tolist() == [[1, 0, 0], [2, 2, 2]]
    with pytest.raises(ValueError, match="broadcast"):
        t[0, 0] = ls.ones(2, 1)  # a size other than 1 is still refused


def test_reshape_copies_only_when_needed():
    t = ls.tensor(randn(4, 6))
    tt = t.transpose(0, 1)
    with pytest.raises(ValueError, match="view"):
        tt.view(24)
    r = tt.reshape(24)
    np.testing.assert_array_equal(to_np(r), to_np(tt).reshape(24))
    assert t.reshape(2, -1).shape == (2, 12)
    with pytest.raises(ValueError, match="invalid"):
        t.reshape(5, -1)


def test_flatten_like_torch():
    for shape, start, end in (((0, 2, 3), 1, -1), ((2, 0, 3), 0, 1), ((2, 3, 4), 0, 1), ((2, 3, 4), 1, 1),
                              ((2, 3), 0, -1), ((), 0, -1)):
        got = ls.zeros(shape).flatten(start, end).shape
        assert got == tuple(torch.zeros(shape).flatten(start, end).shape), (shape, start, end)
    assert ls.zeros(0, 2, 3).flatten(1).shape == (0, 6)  # had been (0, 0)
    with pytest.raises(ValueError, match="start_dim cannot come after end_dim"):
        ls.zeros(2, 3).flatten(1, 0)  # had returned the tensor unflattened
    with pytest.raises(RuntimeError, match="start_dim cannot come after end_dim"):
        torch.zeros(2, 3).flatten(1, 0)
    with pytest.raises(IndexError, match="dimension 5 is out of range"):
        ls.zeros(2, 3).flatten(5)


def test_expand_broadcasts_with_zero_strides():
    t = ls.tensor([[1.0], [2.0]])
    e = t.expand(2, 3)
    assert e.stride() == (1, 0)
    assert e.tolist() == [[1, 1, 1], [2, 2, 2]]
    assert t.expand(4, 2, 3).shape == (4, 2, 3)
    with pytest.raises(ValueError, match="expand"):
        t.expand(3, 3)


def test_expand_to_its_own_shape_is_a_new_view_like_torch():
    a = ls.zeros(2, 3)
    e = a.expand(2, 3).requires_grad_()
    assert e.requires_grad and not a.requires_grad  # the flag stays on the view
    e.detach().fill_(1.0)
    assert a.tolist() == [[1.0] * 3] * 2  # same memory


def test_size_and_stride_of_a_0d_tensor_name_the_missing_dimension():
    s = ls.tensor(1.0)
    assert s.size() == () and s.stride() == ()
    for call in (lambda: s.size(0), lambda: s.size(-1), lambda: s.stride(0), lambda: s.stride(-1)):
        with pytest.raises(IndexError, match="the tensor has no dimensions"):
            call()


def test_data_reads_without_history_and_assigns_like_torch():
    p = ls.ones(3).requires_grad_()
    d = p.data
    assert not d.requires_grad and d.data_ptr() == p.data_ptr()
    x = ls.ones(3, requires_grad=True)
    y = (x * x).sum()
    x.data.mul_(2)  # unseen by autograd, as torch's .data
    y.backward()
    assert x.grad.tolist() == [4.0, 4.0, 4.0]
    p.data = ls.zeros(2, 2, dtype=ls.float64)
    assert p.requires_grad and p.shape == (2, 2) and p.dtype == ls.float64 and p.sum().item() == 0.0
    with pytest.raises(TypeError, match="assigned grad must be a Tensor or None, got int"):
        p.grad = 3


def test_a_0d_operand_promotes_like_a_scalar_like_torch():
    cases = [(ls.float32, ls.float64), (ls.int32, ls.int64), (ls.int64, ls.float64), (ls.bool, ls.int64),
             (ls.int32, ls.float32), (ls.float64, ls.float32), (ls.uint8, ls.int32)]
    for dims, zero in cases:
        a, b = ls.ones(3, dtype=dims), ls.ones((), dtype=zero)
        ta, tb = torch.ones(3, dtype=getattr(torch, str(dims).split(".")[-1])), \
            torch.ones((), dtype=getattr(torch, str(zero).split(".")[-1]))
        for ours, theirs in ((a + b, ta + tb), (b * a, tb * ta), (ls.where(ls.ones(3, dtype=ls.bool), a, b),
                                                                 torch.where(torch.ones(3, dtype=torch.bool), ta, tb))):
            assert str(ours.dtype).split(".")[-1] == str(theirs.dtype).split(".")[-1], (dims, zero)
    assert (ls.ones(3) / ls.ones((), dtype=ls.int64)).dtype == ls.float32
    assert (ls.ones((), dtype=ls.float64) + ls.ones((), dtype=ls.float32)).dtype == ls.float64  # both 0-d
    # the gradient of the 0-d operand keeps its dtype
    w = ls.tensor(2.0, dtype=ls.float64, requires_grad=True)
    x = ls.tensor([1.0, 2.0], requires_grad=True)
    (x * w).sum().backward()
    assert w.grad.dtype == ls.float64 and w.grad.item() == 3.0 and x.grad.dtype == ls.float32


def test_int_scalars_wrap_to_a_narrower_integer_tensor_like_torch():
    for dtype, tdtype, ops in ((ls.int32, torch.int32, [2**40, 2**31, -(2**31) - 5, 2**33 + 3]),
                               (ls.uint8, torch.uint8, [300, 256, 511])):
        x, t = ls.tensor([1, 7], dtype=dtype), torch.tensor([1, 7], dtype=tdtype)
        for v in ops:
            for ours, theirs in ((x + v, t + v), (x * v, t * v), (v - x, v - t)):
                assert ours.dtype == dtype and ours.tolist() == theirs.tolist(), (dtype, v)
        assert (x == ops[0]).tolist() == (t == ops[0]).tolist()
        with pytest.raises(RuntimeError, match="cannot be converted"):
            x.masked_fill(ls.tensor([True, False]), ops[0])  # a fill value is refused, as torch's
    assert ls.tensor([5], dtype=ls.int32).masked_fill(ls.tensor([True]), -(2**31)).tolist() == [-(2**31)]


def test_integer_casts_wrap_like_torch():
    big = 2**40 + 5
    assert ls.tensor([big]).to(dtype=ls.int32).tolist() == torch.tensor([big]).to(torch.int32).tolist()
    assert ls.tensor([300, -1]).to(dtype=ls.uint8).tolist() == [44, 255]
    # int to int directly, not through a double (2^60 + 1 would round to 2^60, whose low 32 bits are 0)
    assert ls.tensor([2**60 + 1]).to(dtype=ls.int32).tolist() == torch.tensor([2**60 + 1]).to(torch.int32).tolist() == [1]
    assert ls.tensor([2**53 + 1]).to(dtype=ls.float64).to(dtype=ls.int64).tolist() == [2**53]
    assert ls.tensor([0.0, float("nan"), -2.0]).to(dtype=ls.bool).tolist() == [False, True, True]


@pytest.mark.parametrize("dtype,tdtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_casts_round_like_torch(dtype, tdtype):
    a = np.concatenate([randn(1000, dtype=np.float32) * 100, [0.0, -0.0, 65504.0, 1e-7, 3e-5, 1e5,
                                                               np.inf, -np.inf]]).astype(np.float32)
    ours = ls.tensor(a).to(dtype=getattr(ls, dtype)).to(dtype=ls.float32)
    ref = torch.tensor(a).to(tdtype).float().numpy()
    np.testing.assert_array_equal(to_np(ours), ref)


def test_reducing_a_0d_tensor_over_its_one_dim():
    s = ls.tensor(5.0)
    for reduce in (lambda: s.sum(0), lambda: s.sum(-1), lambda: s.mean(0), lambda: s.sum(0, keepdim=True)):
        out = reduce()
        assert out.shape == () and out.item() == 5.0
    with pytest.raises(IndexError, match="dimension 1 is out of range"):
        s.sum(1)


def test_min_and_argmin_hold_at_the_ends_of_integer_ranges():
    big = ls.tensor([5, -2**63, 7])
    assert big.min().item() == -2**63 and big.argmin().item() == 1  # -x wraps there; ~x does not
    assert ls.tensor([5, 200], dtype=ls.uint8).min().tolist() == 5
    assert ls.tensor([True, False]).min().item() is False
    with pytest.raises(ValueError, match="Integers to negative integer powers"):
        ls.tensor([1, 2]) ** -1  # torch refuses it too; [1, 0] would be silently wrong
    assert (ls.tensor([1, 2]) ** 2).tolist() == [1, 4]
    values, indices = ls.tensor([[3, 1, 2]], dtype=ls.int32).min(1)
    assert values.dtype == ls.int32 and values.tolist() == [1] and indices.tolist() == [1]


def test_conversions_and_item():
    t = ls.tensor([[1.5, 2.5]])
    assert t.to(ls.int64).tolist() == [[1, 2]]
    assert t.double().dtype == ls.float64
    assert t.sum().item() == 4.0
    assert isinstance(ls.tensor([3]).item(), int)
    assert float(ls.tensor(2.0)) == 2.0
    with pytest.raises(ValueError, match="one-element"):
        t.item()
    assert np.asarray(t).shape == (1, 2)


def test_repr_shows_values_and_autograd_state():
    t = ls.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert repr(t) == "tensor([[1., 2.],\n        [3., 4.]], requires_grad=True)"
    assert "grad_fn=<mul>" in repr(t * 2)
    assert repr(ls.tensor([1, 2], dtype=ls.int32)) == "tensor([1, 2], dtype=llmscratch.int32)"
    assert repr(ls.tensor(3.0)) == "tensor(3.)"


def test_operators_broadcast_like_numpy():
    a, b = randn(3, 1, 5), randn(4, 1)
    ta, tb = ls.tensor(a), ls.tensor(b)
    for op in ["__add__", "__sub__", "__mul__", "__truediv__"]:
        np.testing.assert_allclose(to_np(getattr(ta, op)(tb)), getattr(a, op)(b), rtol=1e-12)
    np.testing.assert_allclose(to_np(ta ** 2), a ** 2)
    np.testing.assert_allclose(to_np(2 - ta), 2 - a)
    np.testing.assert_allclose(to_np(1 / (ta + 10)), 1 / (a + 10))
    np.testing.assert_array_equal(to_np(ta > tb), a > b)
    np.testing.assert_array_equal(to_np(ta == ta), np.ones_like(a, bool))
    np.testing.assert_allclose(to_np(-ta), -a)
    assert (ls.tensor([1, 2]) * 1.5).dtype == ls.float32  # int tensor with a float scalar
    assert (ls.tensor([1, 2]) / ls.tensor([2, 2])).tolist() == [0.5, 1.0]  # true division
    with pytest.raises(ValueError, match=r"\(3, 1, 5\).*\(2, 3\)"):
        ta + ls.tensor(randn(2, 3))


def test_list_and_array_operands_promote_as_tensors_like_torch():
    # a list or array operand is a tensor of its own dtype, as torch.as_tensor makes it, not a
    # dtype self is cast to (float64 + [1, 2] had been an int64 [2, 4]); scalars keep their rule
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b, ">": lambda a, b: a > b}
    cases = [("float64", "+", [1, 2]), ("float32", "+", np.array([1, 2])), ("float64", "*", [0.1]),
             ("float32", "*", np.array([0.5])), ("float32", "+", np.array([0.1, 0.2])),
             ("int64", "+", [1.0, 2.0]), ("int64", "/", [2, 4]), ("float32", ">", [2.0, 1.0]),
             ("int32", "-", [1, 2]), ("bool", "+", [1, 2])]
    for dtype, op, other in cases:
        data = [1.5, 2.5] if dtype.startswith("float") else [1, 0]
        x, tx = ls.tensor(data, dtype=getattr(ls, dtype)), torch.tensor(data, dtype=getattr(torch, dtype))
        for ours, ref in ((ops[op](x, other), ops[op](tx, torch.as_tensor(other))),
                          (ops[op](other, x), ops[op](torch.as_tensor(other), tx))):
            assert str(ours.dtype).split(".")[-1] == str(ref.dtype).split(".")[-1], (dtype, op, other)
            np.testing.assert_array_equal(to_np(ours), ref.numpy())
    assert (ls.tensor([1.5], dtype=ls.float64) + [1, 2]).tolist() == [2.5, 3.5]
    y = np.array([1, 2]) * ls.tensor([1.5, 2.5], requires_grad=True)  # not numpy's product
    assert isinstance(y, ls.Tensor) and y.requires_grad and y.dtype == ls.float32


def test_logical_operators_on_bool_masks_match_torch():
    a = np.array([[True, False, True]])
    b = np.array([[True], [False]])
    la, lb, ta, tb = ls.tensor(a), ls.tensor(b), torch.tensor(a), torch.tensor(b)
    for got, want in ((la & lb, ta & tb), (la | lb, ta | tb), (la ^ lb, ta ^ tb), (~la, ~ta),
                      (la & True, ta & True), (False | lb, False | tb)):
        assert got.dtype == ls.bool and got.tolist() == want.tolist()
    assert (~ls.tensor([0, 5, -2**63])).tolist() == (~torch.tensor([0, 5, -2**63])).tolist()
    with pytest.raises(TypeError, match="'&' is supported between bool tensors only"):
        ls.tensor([1, 2]) & ls.tensor([3, 4])
    with pytest.raises(TypeError, match="'~' is not defined for llmscratch.float32"):
        ~ls.tensor([1.0])
    with pytest.raises(TypeError, match=r"subtracting two bool tensors.*\^"):
        la - lb
    with pytest.raises(TypeError, match=r"subtracting two bool tensors"):
        la - True


def test_inplace_ops_write_memory():
    t = ls.ones(3)
    ptr = t.data_ptr()
    t += 2
    t *= ls.tensor([1.0, 2.0, 3.0])
    assert t.data_ptr() == ptr and t.tolist() == [3.0, 6.0, 9.0]
    w = ls.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="in place"):
        w.add_(1.0)
    with ls.no_grad():
        w.add_(1.0)
    assert w.tolist() == [2.0, 2.0]


def test_pow_and_logical_inplace_ops_write_through_views():
    # **=, |=, &=, ^= had rebound the name to a new tensor, leaving the base unchanged
    a = ls.full([3], 2.0)
    v = a[1:]
    v **= 2
    assert a.tolist() == [2.0, 4.0, 4.0] and v.data_ptr() == a.data_ptr() + 4
    a[:1].pow_(3)
    assert a.tolist() == [8.0, 4.0, 4.0]
    m, ref = ls.tensor([[True, False], [False, False]]), torch.tensor([[True, False], [False, False]])
    for x, mk in ((m, ls.tensor), (ref, torch.tensor)):
        row = x[1]
        row |= mk([True, False])
        row ^= mk([True, True])
        row &= mk([False, True])
        x[0] &= mk([False, True])
    assert m.tolist() == ref.tolist() == [[False, False], [False, True]]
    i = ls.tensor([1, 2])
    with pytest.raises(TypeError, match="in-place"):
        i **= 0.5  # a float result into an int tensor, refused like the other in-place ops


def test_cpu_allocator_reuses_large_blocks():
    import llmscratch_core as core
    a = ls.randn(1 << 20)
    ptr = a.data_ptr()
    del a
    b = ls.zeros(1 << 20)  # same size bin: the cached block comes back, freshly written
    assert b.data_ptr() == ptr and b.sum().item() == 0
    del b
    assert core.cpu_cached_bytes() >= 4 << 20
    core.cpu_empty_cache()
    assert core.cpu_cached_bytes() == 0


def test_int64_values_past_two_to_the_53_stay_exact():
    # the creation ops carry numbers as doubles; int64 values beyond 2^53 go around them
    big = 2**60 + 1
    x = ls.tensor([0, 1])
    assert (x + big).tolist() == [big, big + 1] and (big - x).tolist() == [big, big - 1]
    assert (x * np.int64(big)).tolist() == [0, big]
    assert ls.where(x > 0, x, big).tolist() == [big, 1]
    assert ls.full((2,), big).tolist() == [big, big] and ls.full((1,), -big).tolist() == [-big]
    assert ls.arange(big, big + 7, 3).tolist() == [big, big + 3, big + 6]  # was empty
    assert ls.arange(big, big - 2, -1).tolist() == [big, big - 1]
    y = ls.zeros(3, dtype=ls.int64)
    y.fill_(big)
    assert y.tolist() == [big] * 3
    mask = ls.tensor([True, False])
    for value in (2**63 - 1, 2**53 + 1, -2**63):  # the fill value had gone through a double
        assert x.masked_fill(mask, value).tolist() == [value, 1]
        assert ls.functional.masked_fill(x, ~mask, value).tolist() == [0, value]
        # a mask wider than x is refused on this path too (where alone broadcast it to (2, 2))
        for fill in (value, 7):
            with pytest.raises(ValueError, match=r"mask of shape \(2, 2\) does not broadcast to \(2,\)"):
                x.masked_fill(ls.tensor([[True, False], [False, True]]), fill)
    # below 2^53 and for other dtypes the ops' own path, unchanged
    assert ls.arange(5).tolist() == list(range(5)) and (ls.tensor([1.5]) + big).dtype == ls.float32
    with pytest.raises(ValueError, match="step must be nonzero"):
        ls.arange(big, big + 3, 0)


def test_tensor_arguments_keep_their_meaning_and_gradient_like_torch():
    # a 0-d tensor as masked_fill's value or a clamp bound keeps its gradient (a float had dropped it)
    x = ls.tensor([1.0, 2.0, 3.0], dtype=ls.float64, requires_grad=True)
    v = ls.tensor(2.0, dtype=ls.float64, requires_grad=True)
    (x.masked_fill(x > 1.5, v) ** 2).sum().backward()
    assert v.grad.item() == 8.0 and x.grad.tolist() == [2.0, 0.0, 0.0]
    for lo, hi, want_bound, want_x in ((2.0, None, 1.0, [0.0, 1.0, 1.0]), (None, 2.0, 1.0, [1.0, 1.0, 0.0])):
        x = ls.tensor([1.0, 2.0, 3.0], dtype=ls.float64, requires_grad=True)
        bound = ls.tensor(lo if lo is not None else hi, dtype=ls.float64, requires_grad=True)
        ls.functional.clamp(x, bound if lo is not None else None, bound if hi is not None else None).sum().backward()
        assert bound.grad.item() == want_bound and x.grad.tolist() == want_x  # torch's, ties to x
    # max/min of a tensor argument is elementwise, a 0-d int tensor included (it was read as a dim)
    m = ls.tensor([[1.0, 5.0], [3.0, 2.0]])
    assert m.max(ls.tensor(1)).tolist() == [[1.0, 5.0], [3.0, 2.0]]
    assert m.min(ls.tensor([2.0, 2.0])).tolist() == [[1.0, 2.0], [2.0, 2.0]]
    # a bool tensor takes only bool results in place
    b = ls.tensor([True, False])
    with pytest.raises(TypeError, match="cannot be written into a llmscratch.bool tensor"):
        b += 1
    b |= ls.tensor([False, True])
    assert b.tolist() == [True, True]


def test_a_copy_from_memory_it_overwrites_reads_a_snapshot():
    a = ls.tensor(np.arange(9.0).reshape(3, 3))
    a[:] = a.T
    assert a.tolist() == np.arange(9.0).reshape(3, 3).T.tolist()
    b = ls.tensor(np.arange(10.0).reshape(5, 2))
    b[1:, 0] = b[:-1, 0]  # each row from the one before it, as it was
    assert b[:, 0].tolist() == [0.0, 0.0, 2.0, 4.0, 6.0] and b[:, 1].tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    c = ls.tensor(np.arange(6.0))
    c[:] = c  # onto itself
    assert c.tolist() == list(np.arange(6.0))
    # an expanded destination has several elements in one place: a copy is refused, as in
    # torch; a fill (one value everywhere) is fine
    x = ls.zeros(3)
    e = x.expand(2, 3)
    for write in (lambda: e.add_(ls.tensor([[1.0, 2, 3], [10, 20, 30]])), lambda: e.copy_(ls.ones(2, 3))):
        with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
            write()
    e.fill_(1.0)
    assert x.tolist() == [1.0, 1.0, 1.0] and e.zero_().tolist() == [[0.0] * 3] * 2
    y = ls.zeros(1, 3).expand(1, 3)  # a size-1 dim is not shared
    y += 1
    assert y.tolist() == [[1.0, 1.0, 1.0]]


def test_values_out_of_an_integer_dtypes_range_are_refused_not_converted():
    # a C++ conversion of such a double is undefined (it gave INT_MIN); torch refuses them
    u8, mask = ls.tensor([1, 2], dtype=ls.uint8), ls.tensor([True, False])
    for call, what in ((lambda: ls.tensor([1, 2], dtype=ls.int32).fill_(2**32 + 5), "4294967301 cannot be converted to int32"),
                       (lambda: ls.tensor([1, 2]).fill_(float("nan")), "nan cannot be converted to int64"),
                       (lambda: ls.tensor([1, 2]).masked_fill(mask, float("inf")), "inf cannot"),
                       (lambda: ls.full((2,), 2**40, dtype=ls.int32), "1099511627776 cannot be converted to int32"),
                       (lambda: ls.tensor([1, 7]).masked_fill(mask, 2**63), "cannot be converted to int64"),
                       (lambda: ls.tensor([1, 2], dtype=ls.int32).masked_fill(mask, ls.tensor(2**40)), "int32"),
                       (lambda: u8.fill_(-256), "-256 cannot"), (lambda: u8.fill_(255.7), "255.69"),
                       (lambda: u8.fill_(-1.0), "-1 cannot"), (lambda: ls.tensor([1], dtype=ls.int32).fill_(2**31 - 0.5), "int32")):
        with pytest.raises(RuntimeError, match=what):
            call()
    assert ls.tensor([1, 7]).masked_fill(mask, 2**63 - 1).tolist() == [2**63 - 1, 7]
    assert ls.tensor([1, 7], dtype=ls.uint8).fill_(254.7).tolist() == [254, 254]  # a fraction is dropped
    assert ls.tensor([False]).fill_(float("nan")).tolist() == [True]  # bool takes any value
    # a negative integer into uint8 wraps, as torch's (-1 is 255), down to -255
    for ours, theirs in ((u8.clone().fill_(-1), torch.zeros(2, dtype=torch.uint8).fill_(-1)),
                         (u8.masked_fill(mask, -255), torch.tensor([1, 2], dtype=torch.uint8).masked_fill(torch.tensor([True, False]), -255)),
                         (ls.full((2,), -1, dtype=ls.uint8), torch.full((2,), -1, dtype=torch.uint8)),
                         (ls.where(mask, u8, -1), torch.where(torch.tensor([True, False]), torch.tensor([1, 2], dtype=torch.uint8), -1))):
        assert ours.tolist() == theirs.tolist()
    v = u8.clone()
    v[0] = -1
    assert v.tolist() == [255, 2]


def test_integer_scalars_wrap_only_where_torch_wraps_them():
    # true division divides by the scalar's own value (it had been wrapped to the tensor's dtype)
    u8, i32 = ls.tensor([7]).to(dtype=ls.uint8), ls.tensor([7], dtype=ls.int32)
    t_u8, t_i32 = torch.tensor([7], dtype=torch.uint8), torch.tensor([7], dtype=torch.int32)
    for ours, theirs in ((u8 / -1, t_u8 / -1), (u8 / 256, t_u8 / 256), (i32 / 2**32, t_i32 / 2**32),
                         (2**32 / i32, 2**32 / t_i32)):
        np.testing.assert_allclose(ours.tolist(), theirs.tolist(), rtol=1e-6)
    assert (i32 + 2**32 + 1).tolist() == (t_i32 + 2**32 + 1).tolist() == [8]  # arithmetic wraps, as torch
    # where, setitem and a pow exponent refuse a value the dtype cannot hold, as torch does
    for call in (lambda: ls.where(ls.tensor([True, False]), i32, 2**32 + 5), lambda: i32 ** 2**32,
                 lambda: u8 ** 258, lambda: i32.__setitem__(0, 2**32 + 5)):
        with pytest.raises(RuntimeError, match="cannot be converted to (int32|uint8) without overflow"):
            call()
    x = ls.tensor([1, 2], dtype=ls.int32)
    x[0], x[1] = 2**31 - 1, -7
    assert x.tolist() == [2**31 - 1, -7] and (u8 ** 2).tolist() == [49]


def test_comparing_with_a_string_and_sub_with_alpha_as_torch():
    x = ls.tensor([1.0, 2.0])
    assert (x == "a") is False and (x != "a") is True and x not in ["a", None]
    with pytest.raises(TypeError):
        x < "a"  # noqa: B015
    x.sub_(ls.tensor([1.0, 1.0]), alpha=2)
    assert x.tolist() == [-1.0, 0.0]


def test_maximum_minimum_and_clamp_by_tensors_split_gradients_as_torch():
    a, b = np.array([1.0, 2.0, 3.0, np.nan, 5.0]), np.array([1.0, 3.0, 2.0, 1.0, np.nan])
    for ours, theirs in ((ls.functional.maximum, torch.maximum), (ls.functional.minimum, torch.minimum)):
        la, lb = ls.tensor(a, requires_grad=True), ls.tensor(b, requires_grad=True)
        ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        ours(la, lb).sum().backward()
        theirs(ta, tb).sum().backward()  # halves on a tie, both whole at a NaN
        assert la.grad.tolist() == ta.grad.tolist() and lb.grad.tolist() == tb.grad.tolist()
    weights = [1.0, 2.0, 3.0, 4.0]
    for lo, hi in ((2.0, None), (None, 2.0), (1.5, 2.5), (3.0, 2.0)):  # the last: max wins
        x = ls.tensor([1.0, 2.0, 3.0, np.nan], dtype=ls.float64, requires_grad=True)
        tx = torch.tensor([1.0, 2.0, 3.0, np.nan], dtype=torch.float64, requires_grad=True)
        lb = [None if v is None else ls.tensor(v, dtype=ls.float64, requires_grad=True) for v in (lo, hi)]
        tb = [None if v is None else torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (lo, hi)]
        y, ty = x.clamp(*lb), tx.clamp(*tb)
        (y * ls.tensor(weights, dtype=ls.float64)).sum().backward()
        (ty * torch.tensor(weights, dtype=torch.float64)).sum().backward()
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        assert x.grad.tolist() == tx.grad.tolist(), (lo, hi)
        assert [v.grad.item() for v in lb if v is not None] == [v.grad.item() for v in tb if v is not None]


def test_clamp_needs_a_bound_as_torch():
    with pytest.raises(ValueError, match="at least one of min and max"):
        ls.ones(3).clamp()


def test_clamp_by_a_nan_bound_gives_nan_as_torch():
    x = ls.tensor([1.0, 2.0])
    for kw in ({"min": ls.tensor(float("nan"))}, {"max": ls.tensor(float("nan"))}):
        assert np.isnan(x.clamp(**kw).numpy()).all()


def test_view_edge_cases_like_torch():
    import sys
    a = np.arange(60.0).reshape(3, 4, 5)
    x = ls.tensor(a)
    # a step near 2^63 and bounds past int64: one row / clamped, as numpy (a shape of -1 before;
    # the bounds failed in the binding)
    assert x[::sys.maxsize].tolist() == a[::sys.maxsize].tolist()
    assert tuple(x[:2 ** 63].shape) == (3, 4, 5) and tuple(x[2 ** 70:].shape) == (0, 4, 5)
    assert x[-2 ** 70:2].tolist() == a[:2].tolist()
    for bad in ((3, -5, 5), (3, -1, -2)):  # a negative size (had built a tensor of shape (3, -5, 5))
        with pytest.raises(ValueError, match="expand: cannot expand"):
            ls.ones(3, 1, 5).expand(*bad)
    with pytest.raises(IndexError, match="out of range for a 0-d tensor"):
        ls.tensor(1.0).transpose(3, 5)
    assert tuple(ls.tensor(1.0).transpose(0, -1).shape) == ()
    y, ty = ls.ones(2, 1, 3, 1), torch.ones(2, 1, 3, 1)
    for dims in ((1, 3), (0, 1), [-1], (1, -1)):  # a tuple of dims, as torch >= 2.0
        assert tuple(y.squeeze(dims).shape) == tuple(ty.squeeze(tuple(dims)).shape)
    with pytest.raises(RuntimeError, match="dim 1 appears multiple times"):
        y.squeeze((1, -3))
    with pytest.raises(IndexError, match="squeeze: dimension 5 is out of range"):
        y.squeeze((5,))


def test_predicates_and_new_tensors_as_torch():
    a = np.array([[1.0, np.nan], [np.inf, 0.0]])
    x, t = ls.tensor(a), torch.tensor(a)
    for name in ("isnan", "isinf", "isfinite"):
        assert to_np(getattr(x, name)()).tolist() == getattr(t, name)().tolist()
        assert to_np(getattr(ls, name)(x)).tolist() == getattr(torch, name)(t).tolist()
    assert x.any().item() and not x.all().item()
    assert to_np(x.any(1)).tolist() == t.any(1).tolist() and to_np(x.all(0, keepdim=True)).tolist() == t.all(0, keepdim=True).tolist()
    assert to_np(x.eq(0.0)).tolist() == t.eq(0.0).tolist() and to_np(x.gt(0.5)).tolist() == t.gt(0.5).tolist()
    b = np.array([1.0 + 1e-9, np.inf, np.nan])
    c = np.array([1.0, np.inf, np.nan])
    for kw in ({}, {"equal_nan": True}, {"rtol": 0.0, "atol": 0.0}):
        assert to_np(ls.isclose(ls.tensor(b), ls.tensor(c), **kw)).tolist() == \
            torch.isclose(torch.tensor(b), torch.tensor(c), **kw).tolist()
    assert ls.allclose(ls.tensor(b), ls.tensor(c), equal_nan=True) and not ls.allclose(ls.tensor(b), ls.tensor(c))
    assert ls.equal(ls.tensor([1, 2]), ls.tensor([1, 2])) and not ls.equal(ls.tensor([1, 2]), ls.tensor([[1, 2]]))
    assert ls.is_tensor(x) and not ls.is_tensor(a)
    assert 4 in ls.tensor([[1, 2], [3, 4]]) and 5 not in ls.tensor([[1, 2], [3, 4]])
    assert f"{ls.tensor(1.5):.2f}" == "1.50"
    with pytest.raises(TypeError, match="unsupported format string"):
        f"{ls.tensor([1.0, 2.0]):.2f}"
    y = ls.tensor([1, 2], dtype=ls.int32)
    assert y.new_zeros(2, 3).dtype == ls.int32 and tuple(y.new_ones((4,)).shape) == (4,)
    assert to_np(y.new_full((2,), 7)).tolist() == [7, 7] and y.new_tensor([1.7]).dtype == ls.int32
    assert x.view_as(ls.zeros(4)).shape == (4,) and y.byte().dtype == ls.uint8
    with pytest.raises(NotImplementedError, match="reinterpreting the bytes"):
        x.view(ls.int32)
    with pytest.raises(TypeError, match="expected ints, got the dtype"):
        x.transpose(ls.float32, 1)


def test_tensor_from_unusual_numpy_data_and_arange_bounds_as_torch():
    big = np.array([1.0, 2.0], dtype=">f4")  # big-endian: converted, not read byte-swapped
    assert to_np(ls.tensor(big)).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="byte order"):
        ls.from_numpy(np.array([1, 2], dtype=">i8"))
    with pytest.raises(OverflowError, match="does not fit in int64"):
        ls.tensor(np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(TypeError, match="complex"):
        ls.tensor([1 + 2j])
    assert ls.arange(ls.tensor(3)).dtype == ls.int64
    for bad, why in (((0, 5, -1), "against the step's sign"), ((0.0, float("inf")), "must be finite"),
                     ((0, 1, 0), "step must be nonzero")):
        with pytest.raises(ValueError, match=why):
            ls.arange(*bad)
    assert ls.arange(3, 3).shape == (0,) and to_np(ls.arange(5, 0, -2)).tolist() == [5, 3, 1]


def test_isclose_of_infinite_differences_and_bools_and_in_of_a_string_as_torch():
    a, b = np.array([np.inf, 1.0, -np.inf]), np.array([-np.inf, np.inf, -np.inf])
    assert to_np(ls.isclose(ls.tensor(a), ls.tensor(b))).tolist() == torch.isclose(torch.tensor(a), torch.tensor(b)).tolist()
    assert not ls.allclose(ls.tensor([1.0]), ls.tensor([np.inf]))
    t, f = ls.tensor([True, False]), ls.tensor([True, True])
    assert to_np(ls.isclose(t, f)).tolist() == [True, False]
    with pytest.raises(RuntimeError, match="takes a tensor or a number"):
        "a" in ls.tensor([1, 2])


def test_repr_of_empty_tensors_names_their_size_and_dtype_as_torch():
    for shape, dtype, tdtype in (((0, 3), ls.int64, torch.int64), ((0,), ls.bool, torch.bool),
                                 ((0,), ls.float32, torch.float32), ((0, 2), ls.float32, torch.float32)):
        assert repr(ls.zeros(*shape, dtype=dtype)).replace("llmscratch", "torch") == repr(torch.zeros(*shape, dtype=tdtype))
