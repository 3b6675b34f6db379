"""Training-step throughput of llmscratch against a plain PyTorch implementation of the same
GPT-2-style model, from the same initial weights on the same batches, in one process.

    python bench/train_throughput.py                  # tiny preset, CPU, B=16 T=128
    python bench/train_throughput.py --steps 20 --out bench/results/cpu-2core-train.md

Each step is forward + backward + AdamW. Tokens/s is the median over the timed steps (after
warm-up steps); both sides use the same thread count. The loss after the last step shows the
two runs train the same model (they differ only by float32 rounding)."""
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
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.norm_f(x))
        return logits, tF.cross_entropy(logits.flatten(0, 1), targets.flatten())


def decay_groups(named, wd):
    decay = [p for n, p in named if p.ndim >= 2 and "wte" not in n and "wpe" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def run(step_fn, steps, warmup):
    times, loss = [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = step_fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    threads = ls.get_num_threads()
    torch.set_num_threads(threads)
    cfg = M.get_preset(args.preset)
    if cfg.pos != "learned" or cfg.norm != "layernorm" or cfg.mlp != "gelu" or not cfg.tie_embeddings:
        raise SystemExit("the PyTorch twin here covers the GPT-2 family only")
    B, T = args.batch_size, args.seq_len
    ls.manual_seed(0)
    model = M.Transformer(cfg)
    tmodel = TorchGPT(cfg)
    tmodel.load_state_dict({k: torch.from_dlpack(v).clone() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, size=(B, T + 1)) for _ in range(args.warmup + args.steps)]

    opt = ls.optim.AdamW(decay_groups(list(model.named_parameters()), 0.1), lr=1e-3, betas=(0.9, 0.95))
    topt = torch.optim.AdamW(decay_groups(list(tmodel.named_parameters()), 0.1), lr=1e-3, betas=(0.9, 0.95))

    def ours(i):
        b = ls.tensor(batches[i])
        _, loss = model(b[:, :-1], b[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def theirs(i):
        b = torch.from_numpy(batches[i])
        _, loss = tmodel(b[:, :-1], b[:, 1:])
        topt.zero_grad()
        loss.backward()
        topt.step()
        return loss.item()

    t_ours, loss_ours = run(ours, args.steps, args.warmup)
    t_torch, loss_torch = run(theirs, args.steps, args.warmup)
    tok = B * T
    rows = [("llmscratch", tok / t_ours, t_ours * 1e3, loss_ours),
            (f"torch {torch.__version__} eager", tok / t_torch, t_torch * 1e3, loss_torch)]
    print(f"{args.preset}: {model.num_parameters() / 1e6:.2f}M parameters, B={B} T={T}, {threads} threads")
    for name, tps, ms, loss in rows:
        print(f"{name:<28}{tps:>9.0f} tokens/s {ms:>9.1f} ms/step   loss after {args.warmup + args.steps} steps {loss:.4f}")
    print(f"llmscratch / torch: {t_torch / t_ours:.2f}x the throughput")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        with open(args.out, "w") as f:
            f.write(f"# Training throughput, {args.preset}, CPU ({threads} threads)\n\n")
            f.write(f"- date: {datetime.date.today()}\n- commit: {commit}\n")
            f.write(f"- command: `python bench/train_throughput.py {' '.join(sys.argv[1:])}`\n")
            f.write(f"- B={B}, T={T}, forward + backward + AdamW, median of {args.steps} steps after {args.warmup}\n\n")
            f.write("| implementation | tokens/s | ms/step | loss after the run |\n|---|---:|---:|---:|\n")
            for name, tps, ms, loss in rows:
                f.write(f"| {name} | {tps:.0f} | {ms:.1f} | {loss:.4f} |\n")
            f.write(f"\nllmscratch runs at {t_torch / t_ours:.2f}x torch's throughput.\n")


if __name__ == "__main__":
    main()
