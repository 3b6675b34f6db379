"""Race llmscratch ops against PyTorch on the same inputs and report time, throughput, the
ratio to torch, and correctness against a float64 reference.

    python bench/compare_backends.py                 # every op, CPU
    python bench/compare_backends.py --ops matmul softmax --quick
    python bench/compare_backends.py --out bench/results/cpu.md

CPU timing: the median of repeated calls after a warm-up, with torch limited to the same number
of threads as llmscratch. Inputs are fresh random numbers (never zeros). Throughput: FLOP/s for
matmul, bytes moved (read inputs + write outputs, once) per second for the row kernels.
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import llmscratch as ls
import llmscratch.functional as F


def median_time(fn, min_time=0.3, warmup=2, max_reps=50):
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_err(ours, ref64):
    a = np.asarray(ours.detach(), dtype=np.float64) if not isinstance(ours, np.ndarray) else ours
    if np.isnan(a).any():
        return float("nan")
    b = ref64.detach().numpy()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def case_matmul(n, quick):
    a, b = np.random.randn(n, n).astype(np.float32), np.random.randn(n, n).astype(np.float32)
    la, lb, ta, tb = ls.tensor(a), ls.tensor(b), torch.tensor(a), torch.tensor(b)
    ref = torch.tensor(a, dtype=torch.float64) @ torch.tensor(b, dtype=torch.float64)
    return dict(op="matmul", shape=f"{n}x{n}x{n}", work=2 * n ** 3, unit="GFLOP/s",
                ours=lambda: la @ lb, torch=lambda: ta @ tb, err=lambda: rel_err(la @ lb, ref))


def case_rows(op, rows, cols, quick):
    x = np.random.randn(rows, cols).astype(np.float32)
    lx, tx, x64 = ls.tensor(x), torch.tensor(x), torch.tensor(x, dtype=torch.float64)
    w = np.random.randn(cols).astype(np.float32)
    lw, tw, w64 = ls.tensor(w), torch.tensor(w), torch.tensor(w, dtype=torch.float64)
    if op == "softmax":
        ours, theirs, ref = (lambda: F.softmax(lx, -1)), (lambda: torch.softmax(tx, -1)), torch.softmax(x64, -1)
        nbytes = 2 * x.nbytes
    elif op == "layer_norm":
        ours = lambda: F.layer_norm(lx, (cols,), lw, lw)
        theirs = lambda: torch.nn.functional.layer_norm(tx, (cols,), tw, tw)
        ref = torch.nn.functional.layer_norm(x64, (cols,), w64, w64)
        nbytes = 2 * x.nbytes
    elif op == "rms_norm":
        ours = lambda: F.rms_norm(lx, (cols,), lw)
        theirs = lambda: torch.nn.functional.rms_norm(tx, (cols,), tw)
        ref = torch.nn.functional.rms_norm(x64, (cols,), w64)
        nbytes = 2 * x.nbytes
    elif op == "cross_entropy":
        t = np.random.randint(0, cols, rows)
        lt, tt = ls.tensor(t), torch.tensor(t)
        ours = lambda: F.cross_entropy(lx, lt)
        theirs = lambda: torch.nn.functional.cross_entropy(tx, tt)
        ref = torch.nn.functional.cross_entropy(x64, tt)
        nbytes = x.nbytes
    else:
        raise ValueError(op)
    return dict(op=op, shape=f"{rows}x{cols}", work=nbytes, unit="GB/s", ours=ours, torch=theirs,
                err=lambda: rel_err(ours(), ref))


def case_rows_fwd_bwd(op, rows, cols, quick):
    """Forward + backward of the fused row ops (what a training step runs)."""
    x = np.random.randn(rows, cols).astype(np.float32)
    t = np.random.randint(0, cols, rows)
    lx = ls.tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    lt, tt = ls.tensor(t), torch.tensor(t)
    if op == "cross_entropy":
        def ours():
            F.cross_entropy(lx, lt).backward()
        def theirs():
            torch.nn.functional.cross_entropy(tx, tt).backward()
    else:
        def ours():
            F.softmax(lx, -1).sum().backward()
        def theirs():
            torch.softmax(tx, -1).sum().backward()
    return dict(op=f"{op} fwd+bwd", shape=f"{rows}x{cols}", work=3 * x.nbytes, unit="GB/s",
                ours=ours, torch=theirs, err=None)


def cuda_time(fn, reps=20):
    """Median milliseconds of fn on the GPU, by CUDA events around each call after a warm-up.
    llmscratch and torch both launch on the default stream, so torch's events time either."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_rows(quick):
    """Memory-bound kernels at 256 MB+ per operand (1 GiB of float32 elements, so nothing sits in
    L2) against torch on the same tensors, and against the device copy bandwidth (torch clone)."""
    n = (1 << 24) if quick else (1 << 26)
    rows = []
    for dtype, tdtype in ((ls.float32, torch.float32), (ls.bfloat16, torch.bfloat16)):
        a = ls.randn(n, device="cuda").to(dtype=dtype)
        b = ls.randn(n, device="cuda").to(dtype=dtype)
        ta, tb = torch.from_dlpack(a), torch.from_dlpack(b)
        size = n * ta.element_size()
        copy_ms = cuda_time(lambda: ta.clone())
        copy_bw = 2 * size / copy_ms / 1e6
        for name, ours, theirs, nbytes in [
                ("add", lambda: a + b, lambda: ta + tb, 3 * size),
                ("mul", lambda: a * b, lambda: ta * tb, 3 * size),
                ("exp", lambda: a.exp(), lambda: ta.exp(), 2 * size),
                ("cast to fp32" if dtype == ls.bfloat16 else "cast to bf16",
                 lambda: a.to(dtype=ls.float32 if dtype == ls.bfloat16 else ls.bfloat16),
                 lambda: ta.to(torch.float32 if tdtype == torch.bfloat16 else torch.bfloat16),
                 size + n * (4 if dtype == ls.bfloat16 else 2)),
                ("sum", lambda: a.sum(), lambda: ta.sum(), size)]:
            t_ours, t_torch = cuda_time(ours), cuda_time(theirs)
            bw = nbytes / t_ours / 1e6
            rows.append(dict(op=f"{name} {str(dtype).split('.')[-1]}", shape=f"{n}", ours_ms=t_ours,
                             torch_ms=t_torch, ratio=t_ours / t_torch, rate=bw, unit="GB/s",
                             err=None, pct=100 * bw / copy_bw))
    return rows, copy_bw


def triton_mm_attention_rows(quick):
    """Triton matmul (bf16, TFLOP/s against cuBLAS through torch) and flash attention (causal bf16,
    forward and backward against torch SDPA, FLOPs by the FlashAttention convention: 4*B*T^2*NH*HS,
    halved when causal, backward 2.5x forward). The Triton functions run on torch tensors, so the
    times are the kernels' own (autotuning happens in the warm-up calls)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton rows skipped: triton is not installed")
        return []
    from llmscratch import _backend
    _backend._triton_kernels()
    from llmscratch.triton_kernels import attention as tk_attn, matmul as tk_mm

    rows = []
    for n in ([4096] if quick else [4096, 8192]):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        t_ours, t_torch = cuda_time(lambda: tk_mm.matmul_forward(a, b)), cuda_time(lambda: a @ b)
        ref = a.double() @ b.double()
        err = ((tk_mm.matmul_forward(a, b).double() - ref).norm() / ref.norm()).item()
        tflops = 2 * n ** 3 / t_ours / 1e9
        rows.append(dict(op="triton matmul bf16", shape=f"{n}x{n}x{n}", ours_ms=t_ours, torch_ms=t_torch,
                         ratio=t_ours / t_torch, rate=tflops, unit="TFLOP/s", err=err,
                         pct=100 * t_torch / t_ours, vs="cuBLAS"))
    B, T = (2, 2048) if quick else (4, 4096)
    for HS in (64, 128):
        NH = 2048 // HS
        q, k, v = (torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        flops = 4 * B * T * T * NH * HS / 2
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        ours = lambda: tk_attn.attention_forward(q.detach(), k.detach(), v.detach(), None, True)
        t_ours, t_torch = cuda_time(ours), cuda_time(sdpa)
        rows.append(dict(op=f"triton attention fwd HS={HS}", shape=f"B{B} NH{NH} T{T} causal",
                         ours_ms=t_ours, torch_ms=t_torch, ratio=t_ours / t_torch,
                         rate=flops / t_ours / 1e9, unit="TFLOP/s", err=None,
                         pct=100 * t_torch / t_ours, vs="SDPA"))
        out, lse = ours()
        dout = torch.randn_like(out)
        ours_bwd = lambda: tk_attn.attention_backward(q.detach(), k.detach(), v.detach(), None, out, lse,
                                                      dout, None, True)
        t_out = sdpa()
        torch_bwd = lambda: torch.autograd.grad(t_out, (q, k, v), dout, retain_graph=True)
        t_ours, t_torch = cuda_time(ours_bwd), cuda_time(torch_bwd)
        rows.append(dict(op=f"triton attention bwd HS={HS}", shape=f"B{B} NH{NH} T{T} causal",
                         ours_ms=t_ours, torch_ms=t_torch, ratio=t_ours / t_torch,
                         rate=2.5 * flops / t_ours / 1e9, unit="TFLOP/s", err=None,
                         pct=100 * t_torch / t_ours, vs="SDPA"))
    return rows


# More CUDA row sets: fn(quick) -> rows like cuda_rows' (rate/unit, pct of the baseline named by
# "vs"); one registration line each, below the function.
CUDA_SECTIONS = []
CUDA_SECTIONS.append(triton_mm_attention_rows)


def cases(selected, quick):
    mm = [256, 512] if quick else [1024, 2048]
    rows = [(1024, 768)] if quick else [(4096, 768), (4096, 4096)]
    ce = [(512, 4096)] if quick else [(2048, 4096), (2048, 32768)]
    out = []
    if "matmul" in selected:
        out += [lambda n=n: case_matmul(n, quick) for n in mm]
    for op in ("softmax", "layer_norm", "rms_norm"):
        if op in selected:
            out += [lambda op=op, r=r, c=c: case_rows(op, r, c, quick) for r, c in rows]
    if "cross_entropy" in selected:
        out += [lambda r=r, c=c: case_rows("cross_entropy", r, c, quick) for r, c in ce]
        out += [lambda r=r, c=c: case_rows_fwd_bwd("cross_entropy", r, c, quick) for r, c in ce]
    return out


def write_report(path, title, facts, note, header, cells):
    """A Markdown report: title, date, commit, command, facts, a note and a table (the first two
    columns left-aligned, the rest right-aligned)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [f"# {title}", "", f"- date: {datetime.date.today()}",
             f"- commit: {os.environ.get('COMMIT') or git_commit()}",
             f"- command: `python bench/compare_backends.py {' '.join(sys.argv[1:])}`"]
    lines += [f"- {fact}" for fact in facts] + ["", note, ""]
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


def _fmt_err(err):
    return "-" if err is None else f"{err:.1e}"


def git_commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    except Exception:
        return "unknown"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", nargs="*", default=["matmul", "softmax", "layer_norm", "rms_norm", "cross_entropy"])
    ap.add_argument("--quick", action="store_true", help="small shapes, about a minute on 2 cores")
    ap.add_argument("--out", help="write a Markdown report here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda":
        return main_cuda(args)

    threads = ls.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    header = f"{'op':<24}{'shape':<16}{'llmscratch':>12}{'torch':>12}{'ratio':>8}{'ours':>12}{'rel err':>10}"
    print(header)
    for make in cases(set(args.ops), args.quick):
        c = make()
        t_ours, t_torch = median_time(c["ours"]), median_time(c["torch"])
        scale = 1e9
        rate = c["work"] / t_ours / scale
        err = c["err"]() if c["err"] else None  # None: not measured (a timing-only row)
        row = dict(op=c["op"], shape=c["shape"], ours_ms=t_ours * 1e3, torch_ms=t_torch * 1e3,
                   ratio=t_ours / t_torch, rate=rate, unit=c["unit"], err=err)
        rows.append(row)
        print(f"{row['op']:<24}{row['shape']:<16}{row['ours_ms']:>10.3f}ms{row['torch_ms']:>10.3f}ms"
              f"{row['ratio']:>7.2f}x{rate:>8.1f} {c['unit']:<8}{_fmt_err(err):>9}")

    if args.out:
        write_report(args.out, f"CPU: {cpu_name()}, {threads} threads",
                     [f"torch {torch.__version__} on the CPU with the same thread count"],
                     "ratio = llmscratch time / torch time (below 1 is faster than torch). "
                     "rel err = ||ours - ref|| / ||ref|| against float64.",
                     ["op", "shape", "llmscratch ms", "torch ms", "ratio", "llmscratch rate", "rel err"],
                     [[r["op"], r["shape"], f"{r['ours_ms']:.3f}", f"{r['torch_ms']:.3f}", f"{r['ratio']:.2f}",
                       f"{r['rate']:.1f} {r['unit']}", _fmt_err(r["err"])] for r in rows])


def main_cuda(args):
    if not (ls.cuda.is_available() and torch.cuda.is_available()):
        print("skipped: no CUDA device visible to llmscratch and torch")
        return
    rows, copy_bw = cuda_rows(args.quick)
    for section in CUDA_SECTIONS:
        rows += section(args.quick)
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}: device copy (read + write) {copy_bw:.0f} GB/s")
    for r in rows:
        print(f"{r['op']:<28}{r['ours_ms']:>9.3f}ms{r['torch_ms']:>9.3f}ms{r['ratio']:>7.2f}x"
              f"{r['rate']:>8.0f} {r['unit']:<8}{r['pct']:>6.0f}% of {r.get('vs', 'copy')}")
    if args.out:
        write_report(args.out, f"{gpu}: CUDA kernels against torch {torch.__version__}",
                     [f"device copy bandwidth (torch clone, read + write): {copy_bw:.0f} GB/s"],
                     "Times are CUDA-event medians; GB/s counts each operand read or written once. "
                     "% of: the rate against the device copy bandwidth, or against torch's time for "
                     "the same work (cuBLAS, SDPA).",
                     ["op", "shape", "llmscratch ms", "torch ms", "ratio", "rate", "% of", "rel err"],
                     [[r["op"], r["shape"], f"{r['ours_ms']:.3f}", f"{r['torch_ms']:.3f}", f"{r['ratio']:.2f}",
                       f"{r['rate']:.0f} {r['unit']}", f"{r['pct']:.0f}% of {r.get('vs', 'copy')}",
                       _fmt_err(r.get("err"))] for r in rows])

if __name__ == "__main__":
    main()
