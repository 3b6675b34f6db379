"""triton_kernels/_common.launch: a kernel's later calls go straight to the kernel compiled for
their specialisation. The key must be at least as fine as triton's own, or a call would run a
kernel compiled for other facts (alignment, divisibility by 16, a value of 1) and read or write
the wrong elements: every case here changes one such fact between calls and checks each result.
Under the interpreter launch passes every call to triton and only checks the calling convention.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from triton_check import INTERPRET, compiled_only, kernel_module  # noqa: E402


common, gelu, attention = (kernel_module(name) for name in ("_common", "gelu", "attention"))
DEVICE = "cpu" if INTERPRET else "cuda"


def gelu_launch(x, y, n):
    common.launch(gelu._gelu_fwd, common.flat_grid(n), x, y, n, TANH=True,
                  BLOCK=common.ELEMENTWISE_BLOCK)


def gelu_ref(x):
    return torch.nn.functional.gelu(x.double(), approximate="tanh")


def test_constexprs_given_positionally_are_refused():
    x = torch.randn(8, device=DEVICE)
    with pytest.raises(TypeError, match="by keyword"):
        common.launch(gelu._gelu_fwd, (1,), x, torch.empty_like(x), 8, True, BLOCK=1024)


@pytest.mark.cuda
@compiled_only
def test_each_specialisation_gets_its_own_kernel_cuda():
    # n moves between multiples of 16, other sizes and 1; the pointers between 16-byte aligned
    # bases and bases 4 bytes off; each call's output is checked over every element, and the
    # elements past n must stay untouched.
    buf = torch.randn(4096 + 8, device="cuda")
    for n in (2048, 2047, 1, 2048, 16, 1000, 2047):
        for off in (0, 1, 0):
            x = buf[off:off + n]
            out = torch.full((n + 8,), float("nan"), device="cuda")
            gelu_launch(x, out[off:off + n] if off else out[:n], n)
            got = out[off:off + n] if off else out[:n]
            torch.testing.assert_close(got.double(), gelu_ref(x), rtol=1e-5, atol=1e-6)
            rest = torch.cat([out[:off], out[off + n:]])
            assert torch.isnan(rest).all(), (n, off)
    keys = [k for k in common._compiled if k[0].kernel is gelu._gelu_fwd]
    assert len(keys) >= 4  # aligned / not, n % 16 == 0 / not, n == 1


@pytest.mark.cuda
@compiled_only
def test_autotuned_kernels_key_their_tuning_arguments_cuda():
    # The attention kernels are autotuned on T and S: two lengths, alternated, through launch,
    # against the float64 reference each time.
    for T in (64, 200, 64, 200):
        q, k, v = (torch.randn(1, 2, T, 64, device="cuda", dtype=torch.float16) for _ in range(3))
        out, _ = attention.attention_forward(q, k, v, causal=True)
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                               is_causal=True)
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-3)
