"""Training-step throughput of llmscratch against a plain PyTorch implementation of the same
GPT-2-style model, from the same initial weights on the same batches, in one process.

    python bench/train_throughput.py                  # tiny preset, CPU, B=16 T=128
    python bench/train_throughput.py --steps 20 --out bench/results/cpu-2core-train.md
    python bench/train_throughput.py --device cuda --preset gpt2-124m --seq-len 1024 --dtype bfloat16

Each step is forward + backward + AdamW. Tokens/s is the median over the timed steps (after
warm-up steps); on the CPU both sides use the same thread count. On a GPU with bfloat16, ours
keeps bf16 weights with fp32 master weights in AdamW, and torch runs fp32 weights under bf16
autocast with its fused AdamW (eager, and torch.compile unless --no-compile). The loss after the
last step shows the runs train the same model (they differ only by rounding). MFU uses the
model's FLOPs per token (6N + 12 L C T) and the GPU's peak from llmscratch.cuda.peak_flops.
"host ms/step" is the time to queue a step, up to reading its loss: a step whose host part
reaches its time waits on Python and the launches, not on the GPU.
The PyTorch twin covers the dense GPT-2 family; other presets (LLaMA-style, MoE) run llmscratch
alone, e.g. `--device cuda --preset moe-124m-8e --backends default,triton`."""
import argparse
import datetime
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as tF

import llmscratch as ls
import llmscratch.models as M


class TorchBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.norm1, self.norm2 = tnn.LayerNorm(c.n_embd), tnn.LayerNorm(c.n_embd)
        self.attn = tnn.Module()
        self.attn.qkv = tnn.Linear(c.n_embd, 3 * c.n_embd)
        self.attn.proj = tnn.Linear(c.n_embd, c.n_embd)
        self.mlp = tnn.Module()
        self.mlp.fc = tnn.Linear(c.n_embd, c.intermediate_size)
        self.mlp.proj = tnn.Linear(c.intermediate_size, c.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(B, T, 3, self.c.n_head, -1).permute(2, 0, 3, 1, 4)
        y = tF.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp.proj(tF.gelu(self.mlp.fc(self.norm2(x)), approximate="tanh"))


class TorchGPT(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte, self.wpe = tnn.Embedding(c.vocab_size, c.n_embd), tnn.Embedding(c.block_size, c.n_embd)
        self.blocks = tnn.ModuleList([TorchBlock(c) for _ in range(c.n_layer)])
        self.norm_f = tnn.LayerNorm(c.n_embd)
        self.lm_head = tnn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids, targets):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.norm_f(x))
        return logits, tF.cross_entropy(logits.flatten(0, 1), targets.flatten())


def decay_groups(named, wd):
    decay = [p for n, p in named if p.ndim >= 2 and "wte" not in n and "wpe" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def run(step_fn, steps, warmup):
    """Median seconds per step and median seconds of its host part. step_fn queues a step and
    returns the loss tensor unread; reading it (a device sync) ends the step. The host part is
    the time to queue the step: where it reaches the step's time, the host sets the pace."""
    times, host, loss = [], [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = step_fn(i)
        t1 = time.perf_counter()
        loss = out.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            host.append(t1 - t0)
    return statistics.median(times), statistics.median(host), loss


def kernel_table(step_fn, top):
    """GPU time per kernel over one step (torch.profiler sees every kernel of the process, ours
    included): the total and the `top` kernels by time, as markdown lines."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_fn(0).item()
    kernels = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in kernels)
    lines = [f"kernel time of one step: {total / 1e3:.2f} ms", "", "| kernel | calls | ms |", "|---|---:|---:|"]
    lines += [f"| {e.key[:110]} | {e.count} | {e.device_time_total / 1e3:.3f} |" for e in kernels[:top]]
    return lines


def torch_peak_mb(device):
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--backends", default="default", help="comma list of llmscratch backends to run")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row on a GPU")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="on a GPU, also profile one more step of each llmscratch backend and list "
                         "its N costliest kernels")
    ap.add_argument("--out")
    args = ap.parse_args()
    dev = args.device
    if args.dtype == "bfloat16" and dev != "cuda":
        raise SystemExit("--dtype bfloat16 needs --device cuda")
    threads = ls.get_num_threads()
    torch.set_num_threads(threads)
    cfg = M.get_preset(args.preset)
    # The PyTorch twin covers the dense GPT-2 family; other presets (LLaMA-style, MoE) run ours only.
    twin = (cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.tie_embeddings
            and not getattr(cfg, "n_experts", 0))
    B, T = args.batch_size, args.seq_len
    ls.manual_seed(0)
    init = M.Transformer(cfg)  # fp32 CPU weights shared by every run
    init_sd = {k: torch.from_dlpack(v).clone() for k, v in init.state_dict().items()}
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, size=(B, T + 1)) for _ in range(args.warmup + args.steps)]
    bf16 = args.dtype == "bfloat16"
    rows, profiles = [], []

    def add_row(name, t, host, loss, peak_mb):
        rows.append((name, B * T / t, t * 1e3, host * 1e3, loss, peak_mb))

    for backend in args.backends.split(","):
        ls.set_backend(backend)
        model = M.Transformer(cfg)
        model.load_state_dict(init.state_dict())
        model.to(device=dev, dtype=ls.bfloat16 if bf16 else None)
        opt = ls.optim.AdamW(decay_groups(list(model.named_parameters()), 0.1), lr=1e-3, betas=(0.9, 0.95))
        dev_batches = [ls.tensor(b, device=dev) for b in batches]
        if dev == "cuda":
            ls.cuda.reset_peak_memory_stats()
            torch.cuda.reset_peak_memory_stats()

        def ours(i):
            b = dev_batches[i]
            _, loss = model(b[:, :-1], b[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        t, host, loss = run(ours, args.steps, args.warmup)
        peak = ls.cuda.memory_stats()["peak_allocated_bytes"] / 2**20 if dev == "cuda" else float("nan")
        # The Triton kernels' outputs come from torch's allocator: its peak is shown beside ours
        # (the two peaks need not coincide, so their sum is an upper bound).
        extra = torch_peak_mb(dev) if dev == "cuda" and backend == "triton" else 0.0
        name = f"llmscratch ({backend})" if backend != "default" else "llmscratch"
        add_row(name, t, host, loss, (peak, extra))
        if args.profile and dev == "cuda":
            profiles += ["", f"### {name}", "", *kernel_table(ours, args.profile)]
        del model, opt, dev_batches
    ls.set_backend("default")

    t_batches = [torch.from_numpy(b).to(dev) for b in batches]
    for compiled in ([] if not twin else [False, True] if dev == "cuda" and not args.no_compile else [False]):
        tmodel = TorchGPT(cfg).to(dev)
        tmodel.load_state_dict(init_sd)
        fwd = torch.compile(tmodel) if compiled else tmodel
        topt = torch.optim.AdamW(decay_groups(list(tmodel.named_parameters()), 0.1), lr=1e-3,
                                 betas=(0.9, 0.95), fused=dev == "cuda")
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def theirs(i):
            b = t_batches[i]
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                _, loss = fwd(b[:, :-1], b[:, 1:])
            topt.zero_grad()
            loss.backward()
            topt.step()
            return loss

        # torch.compile compiles in the first (warm-up) step; every run sees the same batches
        t, host, loss = run(theirs, args.steps, args.warmup)
        add_row(f"torch {torch.__version__} {'compile' if compiled else 'eager'}", t, host, loss,
                (torch_peak_mb(dev), 0.0))
        del tmodel, topt, fwd

    flops = init.flops_per_token(T)
    peak = ls.cuda.peak_flops(args.dtype) if dev == "cuda" else None
    where = ls.cuda.get_device_name() if dev == "cuda" else f"CPU ({threads} threads)"
    head = (f"{args.preset}: {init.num_parameters() / 1e6:.2f}M parameters, B={B} T={T}, {args.dtype}, "
            f"{where}")
    print(head)
    table = ["| implementation | tokens/s | ms/step | host ms/step | MFU | peak memory (MiB) | loss after the run |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, tps, ms, host_ms, loss, pmb in rows:
        mfu = f"{100 * flops * tps / peak:.1f}%" if peak else "-"
        mem = "-" if math.isnan(pmb[0]) else f"{pmb[0]:.0f}" + (f" + {pmb[1]:.0f} (torch's)" if pmb[1] else "")
        table.append(f"| {name} | {tps:.0f} | {ms:.1f} | {host_ms:.1f} | {mfu} | {mem} | {loss:.4f} |")
    eager = [r[1] for r in rows if r[0].endswith("eager")]
    summary = (f"{rows[0][0]} runs at {rows[0][1] / eager[0]:.2f}x torch eager's throughput." if eager else
               "No PyTorch twin for this architecture: llmscratch rows only.")
    print("\n".join(table))
    print(summary)
    print("\n".join(profiles))
    if args.out:
        commit = os.environ.get("COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        with open(args.out, "w") as f:
            f.write(f"# Training throughput, {args.preset}, {where}\n\n")
            f.write(f"- date: {datetime.date.today()}\n- commit: {commit}\n")
            f.write(f"- command: `python bench/train_throughput.py {' '.join(sys.argv[1:])}`\n")
            f.write(f"- {head}; forward + backward + AdamW, median of {args.steps} steps after {args.warmup}\n\n")
            f.write("\n".join(table) + "\n\n" + summary + "\n" + "".join(line + "\n" for line in profiles))


if __name__ == "__main__":
    main()
