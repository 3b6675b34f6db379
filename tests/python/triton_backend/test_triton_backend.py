"""The triton backend as a whole: autograd through the registry, the fallback for what it does
not serve (visible in backend_report), and the message when torch or triton is missing."""
import sys

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.functional as F
from triton_check import CASES, compiled_only, interpreter_only, rng, to_ls, to_np


@pytest.mark.parametrize("device,dtype", CASES)
def test_model_fragment_forward_backward_runs_on_triton(device, dtype):
    """layer_norm -> gelu -> cross_entropy with autograd: the forward and backward ops are served
    by triton, and the gradients match the CPU backend's."""
    r = rng()
    x0, w0 = r.standard_normal((6, 33)), r.standard_normal(33)
    targets = r.integers(0, 33, 6)

    def run(backend, device, dtype):
        x = to_ls(x0, device, dtype).detach().requires_grad_()
        w = to_ls(w0, device, dtype).detach().requires_grad_()
        with ls.backend(backend):
            ls.backend_report(reset=True)
            h = F.gelu(F.layer_norm(x, (33,), weight=w), approximate="tanh")
            loss = F.cross_entropy(h, to_ls(targets, device, dtype))
            loss.backward()
            report = ls.backend_report()
        return to_np(loss), to_np(x.grad), to_np(w.grad), report

    loss, dx, dw, report = run("triton", device, dtype)
    for op in ("layer_norm", "layer_norm_backward", "gelu", "gelu_backward", "cross_entropy",
               "cross_entropy_backward"):
        assert report[op] == "triton", (op, report)
    ref_loss, ref_dx, ref_dw, _ = run("cpu", "cpu", "float32")
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}[dtype]
    assert abs(loss - ref_loss) <= tol * abs(ref_loss)
    assert np.linalg.norm(dx - ref_dx) <= tol * np.linalg.norm(ref_dx)
    assert np.linalg.norm(dw - ref_dw) <= tol * np.linalg.norm(ref_dw)


FLOAT32_CASES = [c for c in CASES if "float32" in (c if isinstance(c, tuple) else c.values)]


@pytest.mark.parametrize("device,dtype", FLOAT32_CASES)  # the CPU backend has no 16-bit add
def test_unserved_ops_fall_back_and_say_so(device, dtype):
    a = to_ls(rng().standard_normal((3, 4)), device, dtype)
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        F.silu(a + a)  # add has no triton implementation
        report = ls.backend_report()
    assert report["silu"] == "triton"
    assert report["add"] == device


def test_float64_falls_back_to_cpu():
    x = ls.tensor(rng().standard_normal((2, 5)))
    with ls.backend("triton"):
        ls.backend_report(reset=True)
        y = F.softmax(x, -1)
        assert ls.backend_report()["softmax"] == "cpu"
    assert np.allclose(to_np(y).sum(-1), 1)


def test_a_fallback_leaves_other_threads_on_their_backend():
    import threading
    # float32 attention with a user mask: the triton wrapper takes the call (triton serves
    # float32 attention) and hands it to the native backend itself (its SERVES refuses a mask; a
    # CPU tensor without the interpreter is refused too), the re-dispatch under test
    q = ls.tensor(rng().standard_normal((1, 2, 4, 8)).astype(np.float32))
    mask = ls.tensor(np.tril(np.ones((4, 4), dtype=bool)))
    seen, stop = set(), threading.Event()
    with ls.backend("triton"):
        def watch():
            while not stop.is_set():
                seen.add(ls.get_backend())
        t = threading.Thread(target=watch)
        t.start()
        try:
            ls.backend_report(reset=True)
            for _ in range(300):
                F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            assert ls.backend_report()["attention"] == "cpu"
        finally:
            stop.set()
            t.join()
    assert seen == {"triton"}  # the re-dispatch had set the process's backend to "cpu" meanwhile


def test_an_unknown_backend_in_the_environment_is_refused():
    import os
    import subprocess
    env = dict(os.environ, LLMSCRATCH_BACKEND="Triton")
    r = subprocess.run([sys.executable, "-c", "import llmscratch"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "LLMSCRATCH_BACKEND='Triton' is not a backend" in r.stderr


def test_missing_triton_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install \.\[triton\]"):
        ls.set_backend("triton")
    assert ls.get_backend() == "default"


def test_outputs_of_one_storage_come_back_as_views_of_one_tensor():
    """_views_of_one_buffer (for the ops in ONE_BUFFER_OUTPUTS): outputs that view one torch
    storage with one dtype become views of one llmscratch tensor (the second half at its offset
    in that tensor's storage, where one exported alone starts its own storage at offset 0);
    others, None and empty outputs come back one by one."""
    import torch

    from llmscratch import _backend
    tk = _backend._triton_kernels()
    buf = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    mixed = torch.zeros(8)
    outs = [buf[:, :2], None, buf[:, 2:], torch.ones(5), torch.empty(0), mixed[:4],
            mixed[4:].view(torch.int32)]
    a, none, b, alone, empty, m_float, m_int = tk._views_of_one_buffer(outs)
    assert none is None and tuple(empty.shape) == (0,)
    np.testing.assert_array_equal(a.numpy(), outs[0].numpy())
    np.testing.assert_array_equal(b.numpy(), outs[2].numpy())
    assert a.stride() == b.stride() == (4, 1)
    assert (a.storage_offset(), b.storage_offset()) == (0, 2)
    assert b.data_ptr() - a.data_ptr() == 2 * 4
    np.testing.assert_array_equal(alone.numpy(), np.ones(5, np.float32))
    # one storage, two dtypes: each exported alone
    assert (m_float.storage_offset(), m_int.storage_offset()) == (0, 0)
    assert m_int.data_ptr() - m_float.data_ptr() == 4 * 4


@interpreter_only
def test_bad_arguments_raise_the_native_kernels_errors():
    """The Triton wrappers run the CPU and CUDA kernels' shared checks (CHECKS) before a kernel
    that would read past a weight of the wrong size, or mix dtypes, returns garbage."""
    import llmscratch_core as core
    x, r = to_ls(rng().standard_normal((2, 4)), "cpu", "float32"), to_ls(rng().standard_normal((2, 4)), "cpu", "float32")
    w3, w16 = ls.ones(3), ls.ones(4, dtype=ls.float16)
    bad = [
        (ValueError, "weight of shape", lambda: F.layer_norm(x, (4,), weight=w3)),
        (ValueError, "weight of shape", lambda: F.add_layer_norm(x, r, weight=w3)[1]),
        (ValueError, "eps", lambda: F.rms_norm(x, (4,), eps=-1.0)),
        (TypeError, "dtype", lambda: F.layer_norm(x, (4,), weight=w16)),
        (ValueError, "at least one dimension", lambda: core.call("add_rms_norm", [ls.ones(()), ls.ones(())], {})),
        (ValueError, "statistics", lambda: core.call("layer_norm_backward",
                                                     [x, x, None, ls.zeros(1), ls.ones(1)], {})),
        (ValueError, "gradient of shape", lambda: core.call("rms_norm_backward", [x[:1], x, None, ls.ones(2)], {})),
        (TypeError, "one dtype", lambda: F.swiglu(x, r.to(dtype=ls.float16))),
        (TypeError, "rope", lambda: core.call("rope", [ls.ones(1, 3, 2, 4), ls.ones(3, 2, dtype=ls.float16),
                                                       ls.ones(3, 2, dtype=ls.float16)], {})),
        (ValueError, "gradient of shape", lambda: core.call("softmax_backward", [ls.ones(2, 3), ls.ones(2, 4)],
                                                           {"dim": -1})),
        (TypeError, "gradient dtype", lambda: core.call("log_softmax_backward",
                                                        [ls.ones(2, 3), ls.ones(2, 3, dtype=ls.float16)], {"dim": -1})),
        (TypeError, "gates dtype", lambda: core.call("moe_combine", [ls.ones(4, 3), ls.ones(2, 2, dtype=ls.float16),
                                                                    ls.tensor([[0, 1], [2, 3]])], {})),
        (TypeError, "row must be int64", lambda: core.call("moe_combine", [ls.ones(4, 3), ls.ones(2, 2),
                                                                          ls.tensor([[0, 1], [2, 3]], dtype=ls.int32)], {})),
        (ValueError, "have no classes", lambda: core.call("cross_entropy", [ls.zeros(2, 0), ls.tensor([0, 0])],
                                                          {"ignore_index": -100, "reduction": "mean"})),
        (ValueError, "label_smoothing", lambda: core.call("cross_entropy", [x, ls.tensor([0, 1])],
                                                          {"ignore_index": -100, "label_smoothing": 1.5})),
        (ValueError, "softmax_backward: expected 2 inputs, got 1",
         lambda: core.call("softmax_backward", [ls.ones(2, 3)], {"dim": -1})),
        (ValueError, "moe_combine: input 1 must not be None",
         lambda: core.call("moe_combine", [ls.ones(4, 3), None, ls.tensor([[0, 1], [2, 3]])], {})),
        (ValueError, "moe_combine_backward: expected 4 inputs, got 3",
         lambda: core.call("moe_combine_backward", [ls.ones(2, 3), ls.ones(4, 3), ls.ones(2, 2)], {})),
        # a short g_lse had been read past its end
        (ValueError, r"gradients of shapes \(\) and \(1,\) do not match N = 2",
         lambda: core.call("cross_entropy_backward", [ls.ones(()), x, ls.tensor([0, 1]), ls.ones(2), ls.ones(1)],
                           {"ignore_index": -100, "reduction": "mean"})),
        (ValueError, "cross_entropy_backward: input 4 must not be None",
         lambda: core.call("cross_entropy_backward", [ls.ones(()), x, ls.tensor([0, 1]), ls.ones(2), None],
                           {"ignore_index": -100, "reduction": "mean"})),
        (TypeError, "must be floating-point", lambda: core.call("cross_entropy_inplace_backward",
                                                                [ls.ones(()), ls.ones(2, 3, dtype=ls.int64)], {})),
        (ValueError, "cross_entropy: expected 2 inputs, got 3",
         lambda: core.call("cross_entropy", [x, ls.tensor([0, 1]), x], {"ignore_index": -100})),
        # a strided parameter had been updated in storage order against its gradient's
        (ValueError, "tensors must be contiguous",
         lambda: core.call("adamw_step", [ls.ones(4, 2).T, ls.ones(2, 4), ls.zeros(2, 4), ls.zeros(2, 4)],
                           {"step": 1, "lr": 0.1})),
        (ValueError, "grad_scale must be a floating 1-element tensor",
         lambda: core.call("adamw_step", [ls.ones(3), ls.ones(3), ls.zeros(3), ls.zeros(3),
                                          ls.ones(1, dtype=ls.int32)], {"step": 1, "has_grad_scale": True})),
        (TypeError, "global_norm: tensors must be floating", lambda: core.call("global_norm", [ls.ones(3), ls.ones(3, dtype=ls.int32)], {})),
        (TypeError, "gelu_backward: gradient dtype float32 differs",
         lambda: core.call("gelu_backward", [ls.ones(3), ls.ones(3, dtype=ls.float16)], {})),
        (ValueError, "silu_backward: gradient of shape", lambda: core.call("silu_backward", [ls.ones(3), ls.ones(4)], {})),
        (ValueError, "gelu: expected 1 inputs, got 2", lambda: core.call("gelu", [ls.ones(3), ls.ones(3)], {})),
        (TypeError, "rope_cos_sin_backward: grad and x dtypes differ",
         lambda: core.call("rope_cos_sin_backward", [ls.ones(1, 3, 2, 4), ls.ones(1, 3, 2, 4, dtype=ls.float16)], {})),
        (ValueError, r"rope: expected the inputs \(x, cos, sin\)", lambda: core.call("rope", [ls.ones(1, 3, 2, 4)], {})),
        (ValueError, "softmax: expected 1 inputs, got 2", lambda: core.call("softmax", [x, x], {"dim": -1})),
        (TypeError, "grouped_matmul: weight dtype float16 differs from the input dtype float32",
         lambda: core.call("grouped_matmul", [ls.ones(4, 3), ls.ones(2, 3, 5, dtype=ls.float16),
                                              ls.tensor([0, 2, 4])], {})),
        (TypeError, "grouped_matmul: offsets must be int64",
         lambda: core.call("grouped_matmul", [ls.ones(4, 3), ls.ones(2, 3, 5), ls.tensor([0, 2, 4], dtype=ls.int32)], {})),
        (TypeError, "grouped_matmul_weight_grad: second operand dtype float16",
         lambda: core.call("grouped_matmul_weight_grad", [ls.ones(4, 3), ls.ones(4, 5, dtype=ls.float16),
                                                          ls.tensor([0, 2, 4])], {})),
        (ValueError, r"attention_backward: expected the inputs \(q, k, v, mask, out, lse, dout\[, dlse\]\)",
         lambda: core.call("attention_backward", [ls.ones(1, 1, 2, 4)] * 3, {})),
        (ValueError, r"attention: expected the inputs \(q, k, v\) or \(q, k, v, mask\)",
         # a None mask in place 3: the Triton op would serve it without SERVES' count
         lambda: core.call("attention", [ls.ones(1, 1, 2, 4)] * 3 + [None, ls.ones(1, 1, 2, 4)], {})),
        (ValueError, "dropout: expected 1 inputs, got 2",
         lambda: core.call("dropout", [x, x], {"p": 0.5, "seed": 1, "offset": 0})),
        (ValueError, "embedding: expected 2 inputs, got 3",
         lambda: core.call("embedding", [x, ls.tensor([0, 1]), x], {})),
        (ValueError, "embedding_backward: expected 2 inputs, got 1",
         lambda: core.call("embedding_backward", [x], {"num_weights": 3})),
        (ValueError, "swiglu_backward: shapes of g", lambda: core.call("swiglu_backward", [x[:1], x, r], {})),
        (TypeError, "swiglu_backward: gradient dtype", lambda: core.call("swiglu_backward",
                                                                        [x, x.to(dtype=ls.float64), r.to(dtype=ls.float64)], {})),
        (IndexError, "log_softmax: dimension 5 is out of range", lambda: core.call("log_softmax", [x], {"dim": 5})),
        (IndexError, "softmax_backward: dimension -3 is out of range",
         lambda: core.call("softmax_backward", [x, x], {"dim": -3})),
        (ValueError, "layer_norm: expected 1 to 3 inputs, got 4",
         lambda: core.call("layer_norm", [x, ls.ones(4), ls.ones(4), ls.ones(4)], {"eps": 1e-5})),
        (ValueError, "add_rms_norm: expected 2 to 3 inputs, got 4",
         lambda: core.call("add_rms_norm", [x, r, ls.ones(4), ls.ones(4)], {"eps": 1e-5})),
        (ValueError, "moe_permute: expected 1 inputs, got 2",
         lambda: core.call("moe_permute", [ls.tensor([[0], [1]]), ls.tensor([[0], [1]])], {"num_experts": 2})),
    ]
    for exc, text, call in bad:
        with ls.backend("cpu"), pytest.raises(exc, match=text) as cpu_error:
            call()  # the CPU kernel's error
        with ls.backend("triton"), pytest.raises(exc, match=text) as triton_error:
            call()
        assert str(triton_error.value) == str(cpu_error.value)  # the same text, not only the word


@interpreter_only
def test_rows_of_no_elements_have_the_cpus_nan_statistics():
    import llmscratch_core as core
    for op in ("layer_norm", "rms_norm"):
        cpu = core.call_native(op, [ls.zeros(2, 0)], {"eps": 1e-5})
        with ls.backend("triton"):
            tri = core.call(op, [ls.zeros(2, 0)], {"eps": 1e-5})  # statistics were left unwritten
        assert [t.shape for t in tri[1:]] == [t.shape for t in cpu[1:]]
        assert all(np.isnan(t.numpy()).all() for t in tri[1:] + cpu[1:])


@pytest.mark.cuda
@compiled_only
@pytest.mark.parametrize("torch_side, ls_side", [(False, False), (True, False), (False, True), (True, True)])
def test_kernels_launch_on_llmscratchs_current_stream(torch_side, ls_side):
    """A wrapped kernel runs on llmscratch's current stream whatever torch's is: on the default
    stream even when torch's current stream was switched elsewhere, so that it stays ordered with
    the native ops of that stream."""
    import torch
    from llmscratch import triton_kernels
    seen = []

    def fn(tin, attrs):
        seen.append(torch.cuda.current_stream().cuda_stream)
        return [tin[0]]

    run = triton_kernels._wrap("probe", fn, "cuda")
    x = ls.zeros(4, device="cuda")
    t_side, l_side = torch.cuda.Stream(), ls.cuda.Stream()
    with torch.cuda.stream(t_side if torch_side else torch.cuda.default_stream()):
        with ls.cuda.stream(l_side if ls_side else ls.cuda.default_stream()):
            run([x], {})
            expected = ls.cuda.current_stream().cuda_stream
    assert seen == [expected] and (expected == 0) == (not ls_side)


@interpreter_only
def test_a_missing_attr_is_a_type_error_naming_the_op():
    import llmscratch_core as core
    grad, ids = ls.zeros(3, 4), ls.tensor(np.array([0, 1, 2]))
    with ls.backend("triton"), pytest.raises(TypeError, match="embedding_backward: missing argument 'num_weights'"):
        core.call("embedding_backward", [grad, ids], {})
