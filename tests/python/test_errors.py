"""Bad input raises a Python exception naming the op and the offending values; nothing aborts."""
import pytest

import llmscratch as ls
from conftest import randn


def test_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\)"):
        ls.ones(2, 3) + ls.ones(4)
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\)"):
        ls.ones(2, 3) @ ls.ones(2, 3)


def test_wrong_dtype_is_a_clear_error():
    # the message lists what each backend serves: the CPU computes in float32 and float64
    with pytest.raises(NotImplementedError, match=r"op 'exp' has no implementation for device cpu, "
                       r"dtype bfloat16, backend cpu; implemented for: cpu \(float32, float64\)"):
        ls.ones(2).to(ls.bfloat16).exp()
    with pytest.raises(TypeError, match="dtypes differ"):
        ls.ones(2, 2) @ ls.ones(2, 2, dtype=ls.float64)
    with pytest.raises(RuntimeError, match="floating point"):
        ls.ones(2, dtype=ls.int64).requires_grad = True


def test_missing_device_is_a_clear_error():
    if ls.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        ls.ones(2, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ls.ones(2, device="tpu")


def test_out_of_range_indices():
    t = ls.ones(3, 4)
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 3"):
        t[3]
    with pytest.raises(IndexError, match="dimension 5 is out of range"):
        t.sum(5)
    with pytest.raises(IndexError, match="too many indices"):
        t[0, 0, 0]


def test_empty_tensors_work_or_fail_cleanly():
    e = ls.zeros(0, 3)
    assert (e + 1).shape == (0, 3)
    assert e.sum().item() == 0
    assert e.sum(0).tolist() == [0, 0, 0]
    assert (e @ ls.ones(3, 2)).shape == (0, 2)
    with pytest.raises(ValueError, match="empty"):
        e.max()
    with pytest.raises(ValueError, match="negative dimension"):
        ls.zeros(-1)


def test_unknown_backend_and_op():
    import llmscratch_core as core
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ls.set_backend("fast")
    with pytest.raises(NotImplementedError, match="unknown op 'nope'"):
        core.call("nope", [ls.ones(1)], {})
    with pytest.raises(TypeError, match="argument 'dims'"):
        core.call("sum", [ls.ones(1)], {"dims": "x"})


def test_layer_and_attention_arguments_are_checked_when_given():
    import llmscratch.functional as F
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'fast'"):
        ls.nn.GELU("fast")
    for p in ("0.1", True, 1.5):
        with pytest.raises(ValueError, match="p must be a number in"):
            ls.nn.Dropout(p)
    q = ls.tensor(randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="scale must be finite"):
        F.scaled_dot_product_attention(q, q, q, scale=float("nan"))
    with pytest.raises(ValueError, match="manual_seed"):
        ls.manual_seed(2**64)


def test_torchs_optional_arguments_are_taken_at_their_defaults_and_refused_otherwise():
    # torch-style call sites pass weight=None / inplace=False explicitly: they run as without them
    import llmscratch.functional as F
    logits, targets = ls.tensor(randn(4, 5)), ls.tensor([0, 3, 1, 4])
    assert F.cross_entropy(logits, targets, None).item() == F.cross_entropy(logits, targets).item()
    assert F.cross_entropy(logits, targets, weight=None, reduction="sum").item() == \
        F.cross_entropy(logits, targets, reduction="sum").item()
    x = ls.tensor(randn(3, 4))
    assert (F.silu(x, inplace=False) == F.silu(x)).all().item()
    assert F.dropout(x, 0.5, False, False) is x
    with pytest.raises(NotImplementedError, match="cross_entropy: per-class weight is not implemented"):
        F.cross_entropy(logits, targets, ls.ones(5))
    with pytest.raises(NotImplementedError, match="silu: inplace=True is not supported"):
        F.silu(x, inplace=True)
    with pytest.raises(NotImplementedError, match="dropout: inplace=True is not supported"):
        F.dropout(x, 0.5, True, True)
