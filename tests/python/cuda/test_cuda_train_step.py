"""A whole GPT-2-style and LLaMA-style training step on the GPU against the CPU backend: the same
weights and batch give the same loss and parameter gradients (float32: to float32 rounding;
bfloat16: within bf16 tolerance), a mixed-precision Trainer step keeps fp32 master weights,
the step runs with llmscratch kernels alone (torch never imported), and a steady-state step never
waits for the GPU and never calls cudaMalloc."""
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import llmscratch as ls
import llmscratch.models as M
from conftest import rel_err, to_np

pytestmark = pytest.mark.cuda

# Head size 64 takes the tensor-core attention path in bf16; two layers keep it quick.
CONFIGS = {
    "gpt2": M.get_preset("tiny", vocab_size=320, n_layer=2, n_head=2, n_embd=128, block_size=64),
    "llama": M.get_preset("llama-style-124m", vocab_size=320, n_layer=2, n_head=2, n_kv_head=1,
                          n_embd=128, intermediate_size=192, block_size=64),
}


def _loss_and_grads(model, batch):
    model.zero_grad()
    _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    return float(loss.item()), {n: p.grad.cpu().float() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("dtype,tol", [(ls.float32, 1e-4), (ls.bfloat16, 5e-2)])
def test_step_matches_the_cpu_backend(family, dtype, tol):
    cfg = CONFIGS[family]
    ls.manual_seed(0)
    cpu = M.Transformer(cfg)
    gpu = M.Transformer(cfg)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(device="cuda", dtype=dtype)
    if dtype != ls.float32:  # the reference sees the same rounded weights
        cpu.load_state_dict({k: v.cpu().float() for k, v in gpu.state_dict().items()})
    batch = np.random.default_rng().integers(0, cfg.vocab_size, size=(3, 48))
    loss_c, grads_c = _loss_and_grads(cpu, ls.tensor(batch))
    loss_g, grads_g = _loss_and_grads(gpu, ls.tensor(batch, device="cuda"))
    assert abs(loss_g - loss_c) <= tol * abs(loss_c), (loss_g, loss_c)
    for name, g in grads_c.items():
        err = rel_err(to_np(grads_g[name]), to_np(g))
        assert err <= tol * (4 if dtype != ls.float32 else 1), f"{name}: relative error {err:.2e}"


def test_mixed_precision_trainer_keeps_fp32_master_weights(tmp_path):
    from llmscratch.train import TrainConfig, Trainer
    cfg = CONFIGS["gpt2"]
    ls.manual_seed(0)
    model = M.Transformer(cfg, device="cuda")
    data = np.random.default_rng(0).integers(0, 32, size=(64, 4, 33))  # a small alphabet: learnable
    source = lambda i: ls.tensor(data[i % 64], device="cuda")
    trainer = Trainer(model, TrainConfig(steps=30, batch_size=4, seq_len=32, warmup=2, lr=3e-3,
                                         eval_every=30, ckpt_every=30, dtype="bfloat16",
                                         out=str(tmp_path)), source, source, log=lambda *a: None)
    assert all(p.dtype == ls.bfloat16 for p in model.parameters())
    history = trainer.fit()
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    assert "mfu" not in history[-1] or 0 < history[-1]["mfu"] < 1  # absent for a GPU without a known peak
    masters = [s["master"] for s in trainer.optimizer.state.values()]
    assert masters and all(m.dtype == ls.float32 for m in masters)
    for p in model.parameters():  # the bf16 weights are the rounded master weights
        m = trainer.optimizer._state(p)["master"]
        assert np.array_equal(to_np(m.to(dtype=ls.bfloat16).float().cpu()), to_np(p.float().cpu()))


def test_training_step_runs_without_torch():
    script = (
        "import sys, numpy as np, llmscratch as ls, llmscratch.models as M\n"
        "cfg = M.get_preset('tiny', vocab_size=320, n_layer=2, n_head=2, n_embd=128, block_size=64)\n"
        "m = M.Transformer(cfg, device='cuda').to(dtype=ls.bfloat16)\n"
        "opt = ls.optim.AdamW(m.parameters(), lr=1e-3)\n"
        "b = ls.tensor(np.random.randint(0, 320, size=(2, 33)), device='cuda')\n"
        "for _ in range(2):\n"
        "    _, loss = m(b[:, :-1], b[:, 1:]); opt.zero_grad(); loss.backward(); opt.step()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('loss', loss.item())\n")
    env = dict(os.environ, LLMSCRATCH_BACKEND="cuda")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.isfinite(float(r.stdout.split()[-1]))


def test_a_steady_step_never_waits_for_the_gpu():
    """Forward with the cross-entropy loss, backward, gradient clipping and the AdamW step, once
    warm: no host wait (each would raise in sync debug mode "error") and no cudaMalloc."""
    model = M.Transformer(CONFIGS["gpt2"], device="cuda").to(dtype=ls.bfloat16)
    opt = ls.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    batch = ls.tensor(np.random.default_rng().integers(0, 320, (4, 33)), device="cuda")

    def step():
        # A step leaves reference cycles that Python's collector frees when it chooses; collected
        # here, the pool sees the same frees every step (without it, steps 3 and 5 of a 10-step
        # run each made one cudaMalloc on the H100, and none after).
        gc.collect()
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        ls.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    with ls.backend("cuda"):
        for _ in range(4):  # the optimizer state and the allocator's pools settle
            loss = step()  # held across the next step, as in the measured steps below
        ls.cuda.synchronize()
        before = ls.cuda.memory_stats()
        ls.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                loss = step()
        finally:
            ls.cuda.set_sync_debug_mode("default")
    after = ls.cuda.memory_stats()
    # cudaFree calls too: the pool is handed back when a cudaMalloc fails (another process on the
    # GPU holding memory), after which the step has to allocate again.
    assert after["num_cuda_malloc"] == before["num_cuda_malloc"], (before, after)
    assert np.isfinite(loss.item())


def test_sync_debug_mode_error_refuses_every_wait():
    x = ls.ones(3, device="cuda")
    ls.cuda.set_sync_debug_mode("error")
    try:
        assert ls.cuda.get_sync_debug_mode() == 2
        for wait in (lambda: x.sum().item(), lambda: x.cpu(), lambda: ls.tensor([1.0]).cuda(),
                     ls.cuda.synchronize, lambda: ls.cuda.current_stream().synchronize()):
            with pytest.raises(RuntimeError, match='the host would wait for the GPU here.*"error"'):
                wait()
    finally:
        ls.cuda.set_sync_debug_mode(0)
    assert ls.cuda.get_sync_debug_mode() == 0 and x.sum().item() == 3.0
    with pytest.raises(ValueError, match='mode must be "default" \\(0\\) or "error" \\(2\\), got \'warn\''):
        ls.cuda.set_sync_debug_mode("warn")
