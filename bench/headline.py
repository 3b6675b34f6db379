"""The README's headline table from a compare_backends results.csv: per op and pass, at its
largest measured shape in one dtype (ops measured only in another dtype, such as the float32
AdamW step, at their own), each backend's % of the ceiling and speed relative to torch.

    python bench/headline.py bench/results/nvidia-h200/results.csv --dtype bfloat16

--shape OP=SHAPE shows that shape of OP instead of its largest (the square GEMM rather than
GPT-2's output layer, whose odd width is a case of its own).

Several CSVs may be given, oldest first: each backend of an op takes its rows from the latest
file that measured it (a re-run of some ops or backends after they changed), and a cell from an
older file than the op's latest is labelled with the name of its file's folder after the last
"-" (the commit, for bench/results/<gpu>-<commit>/results.csv). Speeds against torch are always
from the cell's own run.
"""
import argparse
import csv
import os


def shape_size(shape):
    """Orders shapes like '16384x768' or 'B4 NH16 T4096 HS128' by the product of their numbers."""
    size = 1
    for tok in shape.replace("x", " ").replace(":", " ").split():
        digits = "".join(ch for ch in tok if ch.isdigit())
        size *= int(digits) if digits else 1
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shape", action="append", default=[], metavar="OP=SHAPE",
                    help="the shape to show for OP instead of its largest (repeatable)")
    args = ap.parse_args()
    chosen = dict(s.split("=", 1) for s in args.shape)
    by_impl, newest = {}, {}  # (op, impl) -> its rows of the latest file measuring it; op -> that file
    for path in args.csv:
        fresh = {}
        for r in csv.DictReader(open(path)):
            if r["ms"]:
                r["source"] = path
                fresh.setdefault((r["op"], r["impl"]), []).append(r)
                newest[r["op"]] = path
        by_impl.update(fresh)
    every = [r for rows in by_impl.values() for r in rows]
    wanted = {r["op"] for r in every if r["dtype"] == args.dtype}
    rows = [r for r in every if r["dtype"] == args.dtype or r["op"] not in wanted]
    impls = sorted({r["impl"] for r in rows} - {"torch"})
    largest = {}
    for r in rows:
        key = (r["op"], r["pass_"])
        if r["op"] in chosen:
            if r["shape"] == chosen[r["op"]]:
                largest[key] = r["shape"]
        elif key not in largest or shape_size(r["shape"]) > shape_size(largest[key]):
            largest[key] = r["shape"]
    head = ["op", "pass", "shape", "dtype", "torch % of ceiling"] + [f"{i} % / vs torch" for i in impls]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|" + "---:|" * (len(head) - 4))
    for (op, pass_), shape in largest.items():
        cell = {r["impl"]: r for r in rows if (r["op"], r["pass_"], r["shape"]) == (op, pass_, shape)}
        dtype = next(iter(cell.values()))["dtype"]
        out = [op, pass_, shape, dtype, f"{float(cell['torch']['pct']):.0f}%" if "torch" in cell else "-"]
        for i in impls:
            r = cell.get(i)
            label = ""
            if r and r["source"] != newest[op]:
                label = f" ({os.path.basename(os.path.dirname(os.path.abspath(r['source']))).rsplit('-', 1)[-1]})"
            out.append(f"{float(r['pct']):.0f}% / {float(r['speedup']):.2f}x{label}" if r else "-")
        print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
