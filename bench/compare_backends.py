"""Race every op across llmscratch's backends against PyTorch and the hardware limit.

    python bench/compare_backends.py                         # every op, CPU
    python bench/compare_backends.py --quick                 # the CI smoke sweep (about a minute)
    python bench/compare_backends.py --device cuda           # cuda and triton backends vs torch eager
    python bench/compare_backends.py --device cuda --ops matmul attention --dtypes bfloat16

For each op, pass (fwd, bwd, fwd+bwd), shape, dtype and backend: correctness (relative error
against a float64 reference computed by torch on the same inputs, NaN check), the median time
(CUDA events on the GPU, calls back to back, no L2 flush: the bandwidth targets are read at the
rows of 256 MB and more, which L2 cannot hold; the smaller, GPT-2-sized rows may sit partly in
it), achieved GB/s or TFLOP/s, % of the ceiling measured once at start-up in the same run (device
copy bandwidth, and cuBLAS GEMM at 4096^3 through torch in bf16 for the 16-bit rows and in
float32 for the float32 rows, on the GPU; torch's copy bandwidth and sgemm on the CPU; a rate
can pass 100% when the clocks or L2 favour a later call) and the speed ratio to torch (torch
time / ours: above 1 is faster than torch). On the GPU each row also gives the device time alone
(device_time: the calls queued behind a sleep kernel, so the host's Python and launches never
keep the GPU waiting): where the call's time is well above it, the call is host-bound.
A backend that does not implement an op shows as skipped with the backend that served it.

Output: a table on the terminal and, in --out-dir (default bench/results/<device-name>-<commit>/),
report.md, results.csv, pct_of_roofline.png (per op, bars of % of the ceiling per backend) and
roofline.png (achieved rate against arithmetic intensity). With --kernels (GPU), each backend's
call is also split into the kernels it launched (torch.profiler's device times, per call),
printed and written to kernels.md: where an op's time goes, e.g. the sort of the embedding
backward against its sums.
"""
import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import llmscratch as ls
import llmscratch_core as _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cases import all_cases, op_groups  # noqa: E402

# ---- timing ------------------------------------------------------------------------------------


def cpu_time(fn, min_time=0.3, warmup=2, max_reps=50):
    """Median seconds of fn after a warm-up."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cuda_time(fn, reps=15, warmup=3):
    """Median seconds of fn on the GPU by CUDA events around each call. llmscratch, Triton and
    torch all launch on the default stream, so torch's events time any of them. The calls are
    queued back to back and synchronised once at the end, as a training loop runs them: host
    work per call (Python dispatch, launch) counts only where it leaves the GPU idle."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)


_SLEEP_CYCLES_PER_S = None


def _sleep_cycles_per_s():
    """torch.cuda._sleep's cycles a second on this GPU, measured once."""
    global _SLEEP_CYCLES_PER_S
    if _SLEEP_CYCLES_PER_S is None:
        cycles = 10 ** 7
        torch.cuda._sleep(cycles)  # (the first call loads the kernel)
        _SLEEP_CYCLES_PER_S = cycles / cuda_time(lambda: torch.cuda._sleep(cycles), reps=5, warmup=1)
    return _SLEEP_CYCLES_PER_S


def device_time(fn, reps=15, warmup=3):
    """Median seconds of fn's device work alone, the host kept out: a sleep kernel holds the
    stream while the reps calls queue behind it (the blocking-kernel method of NVIDIA's nvbench),
    so no kernel waits on the host's Python, launches or allocations; the gaps between one call's
    kernels stay in. Where cuda_time is well above it, the call is host-bound: its kernels would
    run faster than the host launches them. None when the calls could not be queued inside the
    sleep (a call that waits on the GPU from the host), rather than a figure with the host in it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    queue_s = 0.0
    for _ in range(3):
        sleep_s = 4 * queue_s + 2e-3
        torch.cuda._sleep(int(sleep_s * _sleep_cycles_per_s()))
        t0 = time.perf_counter()
        for start, end in events:
            start.record()
            fn()
            end.record()
        queue_s = time.perf_counter() - t0
        torch.cuda.synchronize()
        # every call queued well before the sleep ended (the margin covers clocks running faster
        # than when the sleep's rate was measured)
        if queue_s < sleep_s / 2:
            return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)
    return None


# ---- ceilings ----------------------------------------------------------------------------------


def ceilings(device, timer):
    """{'GB/s': memory bandwidth, 'TFLOP/s': matmul rate (16-bit on the GPU), and on the GPU
    'TFLOP/s float32': the float32 matmul rate} measured now, through torch."""
    if device == "cuda":
        x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").normal_()  # 1 GiB
        bw = 2 * x.nbytes / timer(lambda: x.clone()) / 1e9
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        flops = 2 * 4096 ** 3 / timer(lambda: a @ a) / 1e12
        a32 = a.float()  # torch's float32 matmul without TF32 (its default), as llmscratch's
        flops32 = 2 * 4096 ** 3 / timer(lambda: a32 @ a32) / 1e12
        return ({"GB/s": bw, "TFLOP/s": flops, "TFLOP/s float32": flops32},
                f"device copy {bw:.0f} GB/s, cuBLAS GEMM 4096^3 bf16 {flops:.0f} / float32 {flops32:.0f} TFLOP/s")
    # torch's copy_ uses the same thread count as our kernels (numpy's copy is one thread); into
    # a buffer allocated once, so first-touch page faults are not timed
    x, y = torch.rand(1 << 25), torch.empty(1 << 25)  # 128 MiB each
    bw = 2 * x.nbytes / timer(lambda: y.copy_(x)) / 1e9
    a = torch.randn(2048, 2048)
    flops = 2 * 2048 ** 3 / timer(lambda: a @ a) / 1e12
    return {"GB/s": bw, "TFLOP/s": flops}, f"copy (torch copy_) {bw:.1f} GB/s, torch sgemm 2048^3 {flops * 1e3:.0f} GFLOP/s"


# ---- running -----------------------------------------------------------------------------------


def served_by(op, backend, fn):
    """Run fn once under backend and return which implementation served op ('' if op did not run)."""
    _core.backend_report(True)
    with ls.backend(backend):
        fn()
    return _core.backend_report(False).get(op, "")


def measure(case, backends, timer, roof, device_timer=None):
    """One row per implementation of the case: torch first, then each backend. With a
    device_timer (the GPU), each row also has the device time alone (dev_ms, dev_pct)."""
    rows = []
    base = dict(op=case.op, pass_=case.pass_, shape=case.shape, dtype=case.dtype, unit=case.unit,
                intensity=case.intensity)
    ceiling = roof.get(f"{case.unit} {case.dtype}", roof[case.unit])
    scale = 1e9 if case.unit == "GB/s" else 1e12

    def timed(fn, work):
        t = timer(fn)
        t_dev = device_timer(fn) if device_timer else None
        return t, dict(ms=t * 1e3, rate=work / t / scale, pct=100 * work / t / scale / ceiling,
                       dev_ms=None if t_dev is None else t_dev * 1e3,
                       dev_pct=None if t_dev is None else 100 * work / t_dev / scale / ceiling)

    t_torch, times = timed(case.torch, case.torch_work)
    rows.append(dict(base, impl="torch", **times, speedup=1.0,
                     err=case.error(case.torch) if case.torch_checked else None, note=""))
    for b in backends:
        who = served_by(case.registry_op, b, case.ours)
        if who != b:
            rows.append(dict(base, impl=b, ms=None, rate=None, pct=None, dev_ms=None, dev_pct=None,
                             speedup=None, err=None, note=f"skipped: served by {who or 'nothing'}"))
            continue
        with ls.backend(b):
            t, times = timed(case.ours, case.work)
            err = case.error(case.ours)
        rows.append(dict(base, impl=b, **times, speedup=t_torch / t, err=err, note=""))
    return rows


def kernel_times(fn, reps=5):
    """(kernel name, microseconds per call, launches per call) of fn's device work, longest first."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    ls.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        ls.cuda.synchronize()
    found = [(e.key, e.device_time_total / reps, e.count / reps) for e in prof.key_averages()
             if e.device_time_total > 0]
    return sorted(found, key=lambda k: -k[1])


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_row(r):
    print(f"{r['op']:<14}{r['pass_']:<8}{r['shape']:<22}{r['dtype']:<9}{r['impl']:<8}"
          f"{fmt(r['ms'], '10.3f')}ms{fmt(r['rate'], '9.1f')} {r['unit']:<8}{fmt(r['pct'], '6.0f')}%"
          f"{fmt(r['speedup'], '7.2f')}x {fmt(r['err'], '9.1e')}"
          + (f"  device {fmt(r['dev_ms'], '.3f')}ms {fmt(r['dev_pct'], '.0f')}%" if r.get("dev_ms") is not None else "")
          + f" {r['note']}", flush=True)


# ---- output ------------------------------------------------------------------------------------


def git_commit():
    try:
        return os.environ.get("COMMIT") or subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], text=True,
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


COLUMNS = ["op", "pass_", "shape", "dtype", "impl", "ms", "rate", "unit", "pct", "speedup", "err", "note",
           "intensity", "dev_ms", "dev_pct"]


def write_outputs(out_dir, title, facts, rows, roof):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# {title}", "", f"- date: {datetime.date.today()}", f"- commit: {git_commit()}",
             f"- command: `python bench/compare_backends.py {' '.join(sys.argv[1:])}`"]
    lines += [f"- {fact}" for fact in facts]
    lines += ["", "speedup = torch time / our time (above 1: faster than torch); % = share of the ceiling "
              "measured at start-up (bandwidth for GB/s rows, cuBLAS/torch GEMM for TFLOP/s rows); "
              "err = ||ours - ref|| / ||ref|| against float64."]
    device = any(r.get("dev_ms") is not None for r in rows)
    if device:
        lines += ["device ms / device % = the device work alone, the calls queued behind a sleep "
                  "kernel (where ms is well above it, the call is host-bound)."]
    lines += ["", "| op | pass | shape | dtype | impl | ms | rate | % of ceiling | speedup | rel err |"
              + (" device ms | device % |" if device else ""),
              "|---|---|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if device else "")]
    for r in rows:
        rate = "-" if r["rate"] is None else f"{r['rate']:.1f} {r['unit']}"
        lines.append(f"| {r['op']} | {r['pass_']} | {r['shape']} | {r['dtype']} | {r['impl']} | "
                     f"{fmt(r['ms'], '.3f')} | {rate} | {fmt(r['pct'], '.0f')} | "
                     f"{fmt(r['speedup'], '.2f')} | {fmt(r['err'], '.1e')} {r['note']} |"
                     + (f" {fmt(r.get('dev_ms'), '.3f')} | {fmt(r.get('dev_pct'), '.0f')} |" if device else ""))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(out_dir, rows, roof)
    print(f"wrote {out_dir}/report.md, results.csv and the plots")


def plot(out_dir, rows, roof=None):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    done = [r for r in rows if r["pct"] is not None]
    impls = sorted({r["impl"] for r in done}, key=lambda s: (s != "torch", s))
    # Per op: the best % of ceiling each implementation reaches over the op's rows.
    keys = sorted({(r["op"], r["pass_"]) for r in done})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(keys) * len(impls)), 4))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        vals = [max([r["pct"] for r in done if (r["op"], r["pass_"]) == k and r["impl"] == impl] or [0])
                for k in keys]
        ax.bar([i + j * width for i in range(len(keys))], vals, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{o}\n{p}" for o, p in keys], fontsize=7)
    ax.set_ylabel("% of ceiling (best shape)")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "pct_of_roofline.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for impl in impls:
        sel = [r for r in done if r["impl"] == impl and r["intensity"]]
        ax.scatter([r["intensity"] for r in sel], [achieved_gflops(r) for r in sel], label=impl, s=12)
    if roof:  # the roofline: min(peak FLOP/s, bandwidth x intensity)
        xs = np.logspace(-2, 4, 200)
        ax.plot(xs, np.minimum(roof["TFLOP/s"] * 1e3, roof["GB/s"] * xs), "k--", lw=1, label="roofline")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "roofline.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)


def achieved_gflops(r):
    """FLOP/s of a row: TFLOP/s rows directly, bandwidth rows through their intensity."""
    return r["rate"] * 1e3 if r["unit"] == "TFLOP/s" else r["rate"] * r["intensity"]


# ---- main --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", nargs="*", help="ops to run (default: all)")
    ap.add_argument("--backends", nargs="*", help="backends to run (default: cpu on the CPU, cuda and triton on a GPU)")
    ap.add_argument("--dtypes", nargs="*", help="dtypes (default: float32 on the CPU, float32 and bfloat16 on a GPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small shapes: about a minute on 2 cores")
    ap.add_argument("--kernels", action="store_true", help="also split each GPU call into its kernels")
    ap.add_argument("--out-dir", help="folder for report.md, results.csv and plots "
                                      "(default bench/results/<device-name>/; '-' writes none)")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not (ls.cuda.is_available() and torch.cuda.is_available()):
        print("skipped: no CUDA device visible to llmscratch and torch")
        return 0
    threads = ls.get_num_threads()
    torch.set_num_threads(threads)
    backends = args.backends or (["cpu"] if dev == "cpu" else ["cuda", "triton"])
    if "triton" in backends:
        try:
            ls.set_backend("triton")
            ls.set_backend("default")
        except Exception as e:  # no torch/triton, or no GPU for it: reported, never fatal
            print(f"backend triton skipped: {e}")
            backends = [b for b in backends if b != "triton"]
    dtypes = args.dtypes or (["float32"] if dev == "cpu" else ["float32", "bfloat16"])
    known = op_groups(dev)
    unknown = sorted(set(args.ops or ()) - known)
    if unknown:
        ap.error(f"unknown --ops {' '.join(unknown)}; the groups are: {' '.join(sorted(known))}")
    timer = cuda_time if dev == "cuda" else cpu_time
    roof, roof_text = ceilings(dev, timer)
    name = torch.cuda.get_device_name() if dev == "cuda" else f"{cpu_name()}, {threads} threads"
    print(f"{name}: {roof_text}")
    rows, kernels = [], []
    for case in all_cases(dev, dtypes, args.quick, set(args.ops) if args.ops else None):
        try:
            got = measure(case, backends, timer, roof, device_time if dev == "cuda" else None)
        except Exception as e:  # one broken cell must not hide the others
            got = [dict(op=case.op, pass_=case.pass_, shape=case.shape, dtype=case.dtype, impl="-",
                        ms=None, rate=None, unit=case.unit, pct=None, dev_ms=None, dev_pct=None,
                        speedup=None, err=None,
                        intensity=case.intensity, note=f"error: {type(e).__name__}: {str(e)[:120]}")]
        for r in got:
            print_row(r)
        rows += got
        if args.kernels and dev == "cuda":
            for b in [r["impl"] for r in got if r["impl"] in backends and r["ms"] is not None]:
                with ls.backend(b):
                    split = kernel_times(case.ours)
                kernels.append(f"\n{case.op} {case.pass_} {case.shape} {case.dtype} {b}:\n")
                kernels += [f"    {us:9.1f} us  x{n:g}  {name[:150]}" for name, us, n in split]
                print("\n".join(kernels[-len(split) - 1:]))
        case.release()
    if args.out_dir != "-":
        slug = re.sub(r"[^a-z0-9]+", "-", (torch.cuda.get_device_name() if dev == "cuda" else "cpu").lower()).strip("-")
        out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                               f"{slug}-{git_commit()}")
        write_outputs(out_dir, f"{name}: llmscratch backends against torch {torch.__version__}",
                      [f"ceilings: {roof_text}", f"backends: {', '.join(backends)}"], rows, roof)
        if kernels:
            with open(os.path.join(out_dir, "kernels.md"), "w") as f:
                f.write(f"# Kernels per call on {name} (torch.profiler device times, mean of 5 calls)\n\n```"
                        + "\n".join(kernels) + "\n```\n")
    bad = [r for r in rows if r["err"] is not None and not np.isfinite(r["err"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
