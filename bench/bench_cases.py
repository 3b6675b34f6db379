"""The cases compare_backends.py races: for each op and pass, inputs made once, our call (run
under whichever backend is selected), the torch eager call on the same memory (DLPack views),
the float64 reference, the work (bytes moved or FLOPs) and the arithmetic intensity.

Bytes count every operand read or written once; FLOPs follow the usual conventions (matmul
2MNK; attention 4 B T^2 NH HS, halved when causal, backward 2.5x the forward)."""
import math

import numpy as np
import torch
import torch.nn.functional as tF

import llmscratch as ls
import llmscratch.functional as F
import llmscratch_core as _core

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Case:
    def __init__(self, op, pass_, shape, dtype, work, unit, ours, torch_fn, ref=None, out=None,
                 registry_op=None, flops=None, keep=(), torch_work=None, torch_checked=True):
        self.op, self.pass_, self.shape, self.dtype, self.unit = op, pass_, shape, dtype, unit
        self.work, self.ours, self.torch = work, ours, torch_fn
        # False where torch's call computes another product (a dense stand-in): no error for it
        self.torch_checked = torch_checked
        # torch's call may do other work than ours (torch_work: its own count, e.g. no restoring copy)
        self.torch_work = work if torch_work is None else torch_work
        self.registry_op = registry_op or op
        self._ref, self._out = ref, out or (lambda r: r)
        nbytes = work if unit == "GB/s" else None
        # FLOP per byte; bandwidth rows pass the FLOPs they do, matmul-like rows their bytes.
        self.intensity = (flops / nbytes if flops and nbytes else
                          (work / flops if unit == "TFLOP/s" and flops else None))
        self._keep = list(keep)

    def error(self, fn):
        """||out - ref|| / ||ref|| over every output (NaN when an output holds a NaN); None when the
        case has no reference (timing-only)."""
        if self._ref is None:
            return None
        outs = self._out(fn())
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        refs = self._ref if isinstance(self._ref, (list, tuple)) else [self._ref]
        num = den = 0.0
        for o, r in zip(outs, refs):
            t = (o if isinstance(o, torch.Tensor) else torch.from_dlpack(o)).double()
            if torch.isnan(t).any():
                return float("nan")
            num += float(torch.linalg.vector_norm(t - r)) ** 2
            den += float(torch.linalg.vector_norm(r)) ** 2
        return math.sqrt(num / max(den, 1e-300))

    def release(self):
        self._keep.clear()
        self.ours = self.torch = self._ref = None


def _pair(shape, dtype, device, scale=1.0, requires_grad=False):
    """An llmscratch tensor of fresh random values, the torch view of its memory and a float64 copy."""
    x = (ls.randn(*shape, device=device) * scale).to(dtype=getattr(ls, dtype))
    t = torch.from_dlpack(x)
    t64 = t.double()
    if requires_grad:
        x.requires_grad_(True)
        t = t.detach().requires_grad_(True)
    return x, t, t64


def _es(dtype):
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


# ---- ops -----------------------------------------------------------------------------------------


def matmul(device, dtype, M, N, K):
    a, ta, a64 = _pair((M, K), dtype, device)
    b, tb, b64 = _pair((K, N), dtype, device)
    g, tg, g64 = _pair((M, N), dtype, device)
    shape, es = f"{M}x{N}x{K}", _es(dtype)
    flops = 2 * M * N * K
    byts = es * (M * K + K * N + M * N)
    yield Case("matmul", "fwd", shape, dtype, flops, "TFLOP/s", lambda: a @ b, lambda: ta @ tb,
               ref=a64 @ b64, flops=byts, keep=(a, b))
    # backward: dA = g B^T, dB = A^T g, both read through transposed views
    yield Case("matmul", "bwd", shape, dtype, 2 * flops, "TFLOP/s",
               lambda: (g @ b.transpose(0, 1), a.transpose(0, 1) @ g),
               lambda: (tg @ tb.T, ta.T @ tg), ref=[g64 @ b64.T, a64.T @ g64], flops=2 * byts, keep=(g,))


def softmax(device, dtype, R, C):
    x, tx, x64 = _pair((R, C), dtype, device)
    size = R * C * _es(dtype)
    y, ty = F.softmax(x, -1), torch.softmax(tx, -1)
    g, tg, g64 = _pair((R, C), dtype, device)
    y64 = torch.softmax(x64, -1)
    shape = f"{R}x{C}"
    yield Case("softmax", "fwd", shape, dtype, 2 * size, "GB/s", lambda: F.softmax(x, -1),
               lambda: torch.softmax(tx, -1), ref=y64, flops=4 * R * C, keep=(x,))
    y_in = torch.from_dlpack(y).double()  # the backward's reference on the y it receives (rounded)
    ref_bwd = y_in * (g64 - (g64 * y_in).sum(-1, keepdim=True))
    yield Case("softmax", "bwd", shape, dtype, 3 * size, "GB/s",
               lambda: _core.call("softmax_backward", [y, g], {"dim": -1})[0],
               lambda: torch._softmax_backward_data(tg, ty, -1, tx.dtype),
               ref=ref_bwd, registry_op="softmax_backward", flops=4 * R * C, keep=(y, g))
    yield Case("log_softmax", "fwd", shape, dtype, 2 * size, "GB/s", lambda: F.log_softmax(x, -1),
               lambda: torch.log_softmax(tx, -1), ref=torch.log_softmax(x64, -1), flops=4 * R * C)


def _norm_case(name, device, dtype, R, C):
    x, tx, x64 = _pair((R, C), dtype, device)
    w, tw, w64 = _pair((C,), dtype, device)
    bias, tb, b64 = _pair((C,), dtype, device)
    g, tg, g64 = _pair((R, C), dtype, device)
    size, shape = R * C * _es(dtype), f"{R}x{C}"
    if name == "layer_norm":
        ours = lambda: F.layer_norm(x, (C,), w, bias)
        theirs = lambda: tF.layer_norm(tx, (C,), tw, tb)
        ref = lambda xx, ww, bb: tF.layer_norm(xx, (C,), ww, bb)
        _, mean, rstd = _core.call("layer_norm", [x, w, bias], {"eps": 1e-5})
        ours_bwd = lambda: _core.call("layer_norm_backward", [g, x, w, mean, rstd],
                                      {"dweight": True, "dbias": True, "eps": 1e-5})
        params = (tw, tb)
    else:
        ours = lambda: F.rms_norm(x, (C,), w, eps=1e-6)
        theirs = lambda: tF.rms_norm(tx, (C,), tw, eps=1e-6)
        ref = lambda xx, ww, bb: tF.rms_norm(xx, (C,), ww, eps=1e-6)
        _, rstd = _core.call("rms_norm", [x, w], {"eps": 1e-6})
        ours_bwd = lambda: _core.call("rms_norm_backward", [g, x, w, rstd], {"dweight": True, "eps": 1e-6})
        params = (tw,)
    yield Case(name, "fwd", shape, dtype, 2 * size, "GB/s", ours, theirs, ref=ref(x64, w64, b64),
               flops=8 * R * C, keep=(x, w, bias))
    # backward: torch's autograd through a graph built once (retain_graph), ours through the op
    xr, wr, br = (x64.clone().requires_grad_(True), w64.clone().requires_grad_(True),
                  b64.clone().requires_grad_(True))
    leaves = (xr, wr, br) if name == "layer_norm" else (xr, wr)
    refs = torch.autograd.grad(ref(xr, wr, br), leaves, g64)
    txg = tx.detach().requires_grad_(True)
    pg = [p.detach().requires_grad_(True) for p in params]
    ty = tF.layer_norm(txg, (C,), *pg) if name == "layer_norm" else tF.rms_norm(txg, (C,), pg[0], eps=1e-6)
    yield Case(name, "bwd", shape, dtype, 3 * size, "GB/s", ours_bwd,
               lambda: torch.autograd.grad(ty, [txg] + pg, tg, retain_graph=True),
               ref=list(refs), registry_op=f"{name}_backward", flops=12 * R * C, keep=(g,))


def layer_norm(device, dtype, R, C):
    return _norm_case("layer_norm", device, dtype, R, C)


def rms_norm(device, dtype, R, C):
    return _norm_case("rms_norm", device, dtype, R, C)


def _add_norm_case(name, device, dtype, R, C):
    """add_layer_norm / add_rms_norm: h = x + r, y = norm(h); torch runs the two steps."""
    x, tx, x64 = _pair((R, C), dtype, device)
    r, tr, r64 = _pair((R, C), dtype, device)
    w, tw, w64 = _pair((C,), dtype, device)
    bias, tb, b64 = _pair((C,), dtype, device)
    dy, tdy, dy64 = _pair((R, C), dtype, device)
    dh, tdh, dh64 = _pair((R, C), dtype, device)
    size, shape = R * C * _es(dtype), f"{R}x{C}"
    ln = name == "add_layer_norm"
    norm = ((lambda h, w_, b_: tF.layer_norm(h, (C,), w_, b_)) if ln else
            (lambda h, w_, b_: tF.rms_norm(h, (C,), w_, eps=1e-6)))
    if ln:
        ours = lambda: F.add_layer_norm(x, r, w, bias)
        h, _, mean, rstd = _core.call(name, [x, r, w, bias], {"eps": 1e-5})
        ours_bwd = lambda: _core.call(f"{name}_backward", [dy, dh, h, w, mean, rstd],
                                      {"dweight": True, "dbias": True})
        params = (tw, tb)
    else:
        ours = lambda: F.add_rms_norm(x, r, w, eps=1e-6)
        h, _, rstd = _core.call(name, [x, r, w], {"eps": 1e-6})
        ours_bwd = lambda: _core.call(f"{name}_backward", [dy, dh, h, w, rstd], {"dweight": True})
        params = (tw,)

    def theirs():
        th = tx + tr
        return th, norm(th, tw, tb)
    h64 = x64 + r64
    # forward: x and r read, h and y written; backward: dy, dh and h read, dx written (dr = dx)
    yield Case(name, "fwd", shape, dtype, 4 * size, "GB/s", ours, theirs,
               ref=[h64, norm(h64, w64, b64)], flops=9 * R * C, keep=(x, r, w, bias))
    # the backward's reference on the h it receives (rounded to the run's dtype): dx = dh + the
    # norm's gradient at h
    hr, wr, br = (torch.from_dlpack(h).double().requires_grad_(True), w64.clone().requires_grad_(True),
                  b64.clone().requires_grad_(True))
    leaves = (hr, wr, br) if ln else (hr, wr)
    refs = list(torch.autograd.grad(norm(hr, wr, br), leaves, dy64))
    refs[0] = refs[0] + dh64
    txg = tx.detach().requires_grad_(True)
    pg = [p.detach().requires_grad_(True) for p in params]
    th = txg + tr
    ty = norm(th, *pg) if ln else norm(th, pg[0], None)
    yield Case(name, "bwd", shape, dtype, 4 * size, "GB/s", ours_bwd,
               lambda: torch.autograd.grad([th, ty], [txg] + pg, [tdh, tdy], retain_graph=True),
               ref=refs, registry_op=f"{name}_backward", flops=13 * R * C,
               keep=(dy, dh, h))


def add_layer_norm(device, dtype, R, C):
    return _add_norm_case("add_layer_norm", device, dtype, R, C)


def add_rms_norm(device, dtype, R, C):
    return _add_norm_case("add_rms_norm", device, dtype, R, C)


def cross_entropy(device, dtype, N, V):
    x, tx, x64 = _pair((N, V), dtype, device, scale=2.0)
    t = ls.randint(0, V, (N,), device=device)
    tt = torch.from_dlpack(t)
    size, shape = N * V * _es(dtype), f"{N}x{V}"
    yield Case("cross_entropy", "fwd", shape, dtype, size, "GB/s", lambda: F.cross_entropy(x, t),
               lambda: tF.cross_entropy(tx, tt), ref=tF.cross_entropy(x64, tt), flops=3 * N * V, keep=(x, t))
    xg = x.detach().requires_grad_(True)
    txg = tx.detach().requires_grad_(True)
    x64g = x64.clone().requires_grad_(True)
    ref = torch.autograd.grad(tF.cross_entropy(x64g, tt), x64g)[0]

    def ours():
        xg.grad = None
        F.cross_entropy(xg, t).backward()
        return xg.grad

    def theirs():
        txg.grad = None
        tF.cross_entropy(txg, tt).backward()
        return txg.grad
    # fwd+bwd: one read for the forward, one read and one write for the gradient
    yield Case("cross_entropy", "fwd+bwd", shape, dtype, 3 * size, "GB/s", ours, theirs, ref=ref,
               flops=8 * N * V)

    # fwd+bwd with the gradient written over the logits (F.cross_entropy(inplace_backward=True)),
    # through the registry pair. Each call first restores the logits it overwrote (a copy: one
    # read, one write), then reads the rows and writes the gradient; the backward's factor is 1,
    # which the device skips. Work: those 4 row passes; torch's call (not in place) makes 3.
    scratch = x * 1.0
    attrs = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
    one = ls.ones(device=device)

    def ours_inplace():
        scratch.copy_(x)
        _core.call("cross_entropy_inplace", [scratch, t], attrs)
        return _core.call("cross_entropy_inplace_backward", [one, scratch], {"reduction": "mean"})[0]
    yield Case("cross_entropy", "inplace", shape, dtype, 4 * size, "GB/s", ours_inplace, theirs, ref=ref,
               registry_op="cross_entropy_inplace", flops=8 * N * V, keep=(scratch,), torch_work=3 * size)


def _pointwise(name, device, dtype, R, C):
    x, tx, x64 = _pair((R, C), dtype, device)
    g, tg, g64 = _pair((R, C), dtype, device)
    size, shape = R * C * _es(dtype), f"{R}x{C}"
    if name == "swiglu":
        b, tb, b64 = _pair((R, C), dtype, device)
        fwd = (lambda: F.swiglu(x, b)), (lambda: tF.silu(tx) * tb)
        ref_f = lambda a, bb: tF.silu(a) * bb
        inputs, leaves64 = (x, b), (x64, b64)
        bwd_ours = lambda: _core.call("swiglu_backward", [g, x, b], {})
        tleaves = [tx.detach().requires_grad_(True), tb.detach().requires_grad_(True)]
        ty = tF.silu(tleaves[0]) * tleaves[1]
        reads = 3
    else:
        tfn = {"gelu": lambda a: tF.gelu(a, approximate="tanh"), "silu": tF.silu}[name]
        ofn = {"gelu": lambda a: F.gelu(a, approximate="tanh"), "silu": F.silu}[name]
        attrs = {"approximate": "tanh"} if name == "gelu" else {}
        fwd = (lambda: ofn(x)), (lambda: tfn(tx))
        ref_f = tfn
        inputs, leaves64 = (x,), (x64,)
        bwd_ours = lambda: _core.call(f"{name}_backward", [g, x], attrs)
        tleaves = [tx.detach().requires_grad_(True)]
        ty = tfn(tleaves[0])
        reads = 2
    yield Case(name, "fwd", shape, dtype, reads * size, "GB/s", fwd[0], fwd[1], ref=ref_f(*leaves64),
               flops=10 * R * C, keep=inputs)
    l64 = [t.clone().requires_grad_(True) for t in leaves64]
    ref_b = torch.autograd.grad(ref_f(*l64), l64, g64)
    yield Case(name, "bwd", shape, dtype, (reads + len(inputs)) * size, "GB/s", bwd_ours,
               lambda: torch.autograd.grad(ty, tleaves, tg, retain_graph=True), ref=list(ref_b),
               registry_op=f"{name}_backward", flops=14 * R * C, keep=(g,))


def gelu(device, dtype, R, C):
    return _pointwise("gelu", device, dtype, R, C)


def silu(device, dtype, R, C):
    return _pointwise("silu", device, dtype, R, C)


def swiglu(device, dtype, R, C):
    return _pointwise("swiglu", device, dtype, R, C)


def rope(device, dtype, B, T, NH, HS):
    x, tx, x64 = _pair((B, T, NH, HS), dtype, device)
    cos64, sin64 = F.rope_cache(T, HS, dtype=ls.float64)
    cos, sin = cos64.to(device=device, dtype=getattr(ls, dtype)), sin64.to(device=device, dtype=getattr(ls, dtype))
    tc, ts = torch.from_dlpack(cos)[:, None, :], torch.from_dlpack(sin)[:, None, :]
    c64, s64 = tc.double(), ts.double()

    def torch_rope(t, c, s):  # pairs (i, i + HS/2), the Hugging Face LLaMA layout
        a, b = t[..., : HS // 2], t[..., HS // 2:]
        return torch.cat([a * c - b * s, a * s + b * c], -1)
    size = x.numel() * _es(dtype)
    yield Case("rope", "fwd", f"{B}x{T}x{NH}x{HS}", dtype, 2 * size, "GB/s", lambda: F.rope(x, cos, sin),
               lambda: torch_rope(tx, tc, ts), ref=torch_rope(x64, c64, s64), flops=3 * x.numel(),
               keep=(x, cos, sin))


def embedding(device, dtype, V, C, N, zipf=False):
    """zipf=True: ids with text-like frequencies, p(id) proportional to 1 / (id + 2.7) (the most
    frequent about 3.7% of the tokens, as "," or " the" in English BPE text), not uniform."""
    w, tw, w64 = _pair((V, C), dtype, device)
    if zipf:
        p = 1.0 / (np.arange(V) + 2.7)
        ids = ls.tensor(np.random.default_rng(0).choice(V, size=N, p=p / p.sum()), device=device)
    else:
        ids = ls.randint(0, V, (N,), device=device)
    tids = torch.from_dlpack(ids)
    g, tg, g64 = _pair((N, C), dtype, device)
    rows = N * C * _es(dtype)
    shape = f"V{V} C{C} N{N}" + (" zipf" if zipf else "")
    # the forward reads each distinct weight row once (a repeated one can come from L2) and
    # writes N rows
    distinct = int(torch.unique(tids).numel())
    yield Case("embedding", "fwd", shape, dtype, rows + distinct * C * _es(dtype), "GB/s", lambda: F.embedding(ids, w),
               lambda: tF.embedding(tids, tw), ref=tF.embedding(tids, w64), flops=0, keep=(w, ids))
    ref = torch.zeros(V, C, dtype=torch.float64, device=g64.device).index_add_(0, tids, g64)
    twg = tw.detach().requires_grad_(True)
    ty = tF.embedding(tids, twg)
    # reads the gradient rows, writes the whole (V, C) table
    yield Case("embedding", "bwd", shape, dtype, rows + V * C * _es(dtype), "GB/s",
               lambda: _core.call("embedding_backward", [g, ids], {"num_weights": V})[0],
               lambda: torch.autograd.grad(ty, twg, tg, retain_graph=True)[0], ref=ref,
               registry_op="embedding_backward", flops=N * C, keep=(g,))


def attention(device, dtype, B, NH, T, HS):
    q, tq, q64 = _pair((B, NH, T, HS), dtype, device)
    k, tk, k64 = _pair((B, NH, T, HS), dtype, device)
    v, tv, v64 = _pair((B, NH, T, HS), dtype, device)
    do, tdo, do64 = _pair((B, NH, T, HS), dtype, device)
    flops = 4 * B * T * T * NH * HS // 2  # causal
    byts = 4 * q.numel() * _es(dtype)
    shape = f"B{B} NH{NH} T{T} HS{HS}"
    on_gpu = device != "cpu"
    ref = tF.scaled_dot_product_attention(q64, k64, v64, is_causal=True) if not on_gpu or T <= 2048 else None
    yield Case("attention", "fwd", shape, dtype, flops, "TFLOP/s",
               lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               lambda: tF.scaled_dot_product_attention(tq, tk, tv, is_causal=True), ref=ref, flops=byts,
               keep=(q, k, v))
    out, lse = F.scaled_dot_product_attention(q, k, v, is_causal=True, return_lse=True)
    leaves = [t.detach().requires_grad_(True) for t in (tq, tk, tv)]
    ty = tF.scaled_dot_product_attention(*leaves, is_causal=True)
    yield Case("attention", "bwd", shape, dtype, flops * 5 // 2, "TFLOP/s",
               lambda: _core.call("attention_backward", [q, k, v, None, out, lse, do], {"causal": True}),
               lambda: torch.autograd.grad(ty, leaves, tdo, retain_graph=True), ref=None,
               registry_op="attention_backward", flops=2 * byts, keep=(out, lse, do))


def adamw(device, dtype, n_params, n_tensors):
    """One fused AdamW step over n_params float32 parameters in n_tensors tensors (timing only:
    its correctness is tested in the test suite)."""
    sizes = [n_params // n_tensors] * n_tensors
    ps = [ls.randn(s, device=device) for s in sizes]
    gs = [ls.randn(s, device=device) for s in sizes]
    ms = [ls.zeros(s, device=device) for s in sizes]
    vs = [ls.zeros(s, device=device) for s in sizes]
    tps = [torch.nn.Parameter(torch.from_dlpack(p).clone()) for p in ps]
    for tp, g in zip(tps, gs):
        tp.grad = torch.from_dlpack(g).clone()
    opt = torch.optim.AdamW(tps, lr=1e-4, fused=device != "cpu", foreach=None if device != "cpu" else True)
    step = [0]

    def ours():
        step[0] += 1
        _core.ops.adamw_step(ps, gs, ms, vs, 1e-4, 0.9, 0.95, 1e-8, 0.1, step[0], None)
    # reads p, g, m, v and writes p, m, v: 7 float32 per parameter
    yield Case("adamw", "step", f"{n_params // 10**6}M params / {n_tensors}", "float32", 7 * 4 * n_params,
               "GB/s", ours, opt.step, registry_op="adamw_step", flops=12 * n_params, keep=(ps, gs, ms, vs))


def elementwise(device, dtype, n):
    a, ta, a64 = _pair((n,), dtype, device)
    b, tb, b64 = _pair((n,), dtype, device)
    size = n * _es(dtype)
    yield Case("add", "fwd", f"{n}", dtype, 3 * size, "GB/s", lambda: a + b, lambda: ta + tb, ref=a64 + b64,
               flops=n, keep=(a, b))
    yield Case("mul", "fwd", f"{n}", dtype, 3 * size, "GB/s", lambda: a * b, lambda: ta * tb, ref=a64 * b64, flops=n)
    yield Case("exp", "fwd", f"{n}", dtype, 2 * size, "GB/s", lambda: a.exp(), lambda: ta.exp(), ref=a64.exp(),
               flops=n)
    yield Case("sum", "fwd", f"{n}", dtype, size, "GB/s", lambda: a.sum(), lambda: ta.sum(), ref=a64.sum(), flops=n)


def _experts_ref(x64, w64, offsets, transpose=False):
    """Float64 reference of grouped_matmul: a loop over the experts (reference only)."""
    out = x64.new_zeros(x64.shape[0], w64.shape[1] if transpose else w64.shape[2])
    for e in range(len(offsets) - 1):
        r0, r1 = offsets[e], offsets[e + 1]
        out[r0:r1] = x64[r0:r1] @ (w64[e].T if transpose else w64[e])
    return out


def moe(device, dtype, T, C, H, E, k):
    """MoE layer pieces: T tokens routed to k of E SwiGLU experts (C -> 2H -> C). The grouped GEMMs
    race a torch dense matmul of the same FLOPs (the T*k rows through one weight); permute and
    combine race their torch gather/sort equivalents; the whole layer (permute, gather, up,
    SwiGLU, down, combine; forward and backward) races a dense torch SwiGLU MLP of the same
    active parameters (C -> 2kH -> C). The torch rows of the GEMM and layer cases compute a
    different (dense) product, so their err column says nothing; ours are checked against a
    float64 loop over the experts."""
    dev = "cuda" if device != "cpu" else "cpu"
    A = T * k
    ids_t = torch.rand(T, E, device=dev).topk(k, -1).indices  # distinct experts per token
    ids = ls.from_dlpack(ids_t)
    token, row, off, _ = F.moe_permute(ids, E)
    offsets = torch.from_dlpack(off).tolist()
    trow = torch.from_dlpack(row)
    x, tx, x64 = _pair((T, C), dtype, device)
    xs = F.index_select(x, 0, token)  # (A, C): the rows in expert order
    txs = torch.from_dlpack(xs)
    xs64 = txs.double()
    w1, tw1, w1_64 = _pair((E, C, 2 * H), dtype, device, scale=C ** -0.5)
    w2, tw2, w2_64 = _pair((E, H, C), dtype, device, scale=H ** -0.5)
    es, shape = _es(dtype), f"{T}x{C}x{H} E{E}k{k}"  # tokens x C x H, experts, top-k

    # moe_permute against a stable torch sort + per-expert counts; compared on token
    flat = ids_t.reshape(-1)
    ones = torch.ones_like(flat)
    tok_ref = (torch.argsort(flat, stable=True) // k).double()
    # ours: the int64 ids read, token and row written; torch's: ids read, token written
    yield Case("moe_permute", "fwd", shape, dtype, 3 * A * 8, "GB/s", lambda: F.moe_permute(ids, E),
               lambda: (torch.argsort(flat, stable=True) // k,
                        torch.zeros(E, dtype=flat.dtype, device=dev).index_add_(0, flat, ones)),
               ref=tok_ref, out=lambda r: r[0], flops=A, keep=(ids,), torch_work=2 * A * 8)

    # up projection x -> 2H, then down H -> C; the dense baselines use expert 0's weight
    f_up, f_down = 2 * A * C * 2 * H, 2 * A * H * C
    d1, d2 = tw1[0], tw2[0]
    h1 = F.grouped_matmul(xs, w1, off)
    yield Case("grouped_matmul", "fwd", shape + ":up", dtype, f_up, "TFLOP/s",
               lambda: F.grouped_matmul(xs, w1, off), lambda: txs @ d1,
               ref=_experts_ref(xs64, w1_64, offsets), flops=es * (A * C + E * C * 2 * H + A * 2 * H),
               keep=(xs, w1, off), torch_checked=False)
    hs = F.swiglu(*F.split(h1, [H, H], dim=-1))
    ths = torch.from_dlpack(hs)
    yield Case("grouped_matmul", "fwd", shape + ":down", dtype, f_down, "TFLOP/s",
               lambda: F.grouped_matmul(hs, w2, off), lambda: ths @ d2,
               ref=_experts_ref(ths.double(), w2_64, offsets), flops=es * (A * H + E * H * C + A * C),
               keep=(hs, w2), torch_checked=False)
    del h1
    # backward of the up projection: dx = g w1^T (grouped, weights read transposed), dw1 = x^T g
    g1, tg1, g1_64 = _pair((A, 2 * H), dtype, device)
    yield Case("grouped_matmul", "bwd", shape + ":up", dtype, 2 * f_up, "TFLOP/s",
               lambda: (F.grouped_matmul(g1, w1, off, transpose_w=True),
                        _core.call("grouped_matmul_weight_grad", [xs, g1, off], {})[0]),
               lambda: (tg1 @ d1.T, txs.T @ tg1),
               ref=None, flops=2 * es * (A * C + E * C * 2 * H + A * 2 * H), keep=(g1,))
    del g1, tg1, g1_64

    # combine: out[n] = sum_s gates[n, s] y[row[n, s]], and its backward
    y, ty, y64 = _pair((A, C), dtype, device)
    gates, tgates, gates64 = _pair((T, k), dtype, device)
    g, tg, g64 = _pair((T, C), dtype, device)
    yield Case("moe_combine", "fwd", shape, dtype, es * (A * C + T * C), "GB/s",
               lambda: F.moe_combine(y, gates, row), lambda: (ty[trow] * tgates.unsqueeze(-1)).sum(1),
               ref=(y64[trow] * gates64.unsqueeze(-1)).sum(1), flops=2 * A * C, keep=(y, gates, row, g))
    dy64 = torch.zeros_like(y64)
    dy64[trow.reshape(-1)] = (gates64.unsqueeze(-1) * g64.unsqueeze(1)).reshape(A, C)

    def torch_combine_bwd():
        dy = torch.zeros_like(ty)
        dy[trow.reshape(-1)] = (tgates.unsqueeze(-1) * tg.unsqueeze(1)).reshape(A, C)
        return dy, (tg.unsqueeze(1) * ty[trow]).sum(-1)
    yield Case("moe_combine", "bwd", shape, dtype, es * (2 * A * C + T * C), "GB/s",
               lambda: _core.call("moe_combine_backward", [g, y, gates, row], {}), torch_combine_bwd,
               ref=[dy64, (g64.unsqueeze(1) * y64[trow]).sum(-1)], registry_op="moe_combine_backward",
               flops=4 * A * C)
    del y, ty, y64, dy64

    # the layer, forward + backward, against a dense SwiGLU MLP with the same active parameters
    for t in (x, w1, w2, gates):
        t.requires_grad_(True)

    def ours():
        tk, rw, of, _ = F.moe_permute(ids, E)
        h = F.grouped_matmul(F.index_select(x, 0, tk), w1, of)
        out = F.moe_combine(F.grouped_matmul(F.swiglu(*F.split(h, [H, H], dim=-1)), w2, of), gates, rw)
        out.backward(g)
        return out

    _, td1, _ = _pair((C, 2 * k * H), dtype, device, scale=C ** -0.5, requires_grad=True)
    _, td2, _ = _pair((k * H, C), dtype, device, scale=(k * H) ** -0.5, requires_grad=True)
    txg = tx.detach().requires_grad_(True)

    def theirs():
        a, b = (txg @ td1).split(k * H, dim=-1)
        out = (tF.silu(a) * b) @ td2
        out.backward(tg)
        return out
    yield Case("moe_layer", "fwd+bwd", shape, dtype, 3 * (f_up + f_down), "TFLOP/s", ours, theirs,
               registry_op="grouped_matmul", keep=(td1, td2))


def dropout(device, dtype, R, C):
    """Timing and the kept fraction: the mask is Philox's, so there is no float64 reference; the
    error column is |kept fraction - (1 - p)| / (1 - p) (exactness against the CPU mask is tested)."""
    x, tx, _ = _pair((R, C), dtype, device)
    size = R * C * _es(dtype)

    def kept(out):
        t = out if isinstance(out, torch.Tensor) else torch.from_dlpack(out)
        return torch.tensor([float((t != 0).float().mean())], dtype=torch.float64)
    case = Case("dropout", "fwd", f"{R}x{C}", dtype, 2 * size, "GB/s", lambda: F.dropout(x, 0.1),
                lambda: tF.dropout(tx, 0.1), ref=torch.tensor([0.9], dtype=torch.float64),
                flops=2 * R * C, keep=(x,))
    case._out = kept
    yield case


def cumsum(device, dtype, R, C):
    x, tx, x64 = _pair((R, C), dtype, device)
    size = R * C * _es(dtype)
    yield Case("cumsum", "fwd", f"{R}x{C}", dtype, 2 * size, "GB/s", lambda: F.cumsum(x, -1),
               lambda: torch.cumsum(tx, -1), ref=torch.cumsum(x64, -1), flops=R * C, keep=(x,))


def topk(device, dtype, R, C, k):
    """Top-k of routing size (2 of 64 experts) and of sampling size (50 of a row or a vocabulary);
    the values (the indices are compared in the tests)."""
    x, tx, x64 = _pair((R, C), dtype, device)
    yield Case("topk", "fwd", f"{R}x{C} k{k}", dtype, R * C * _es(dtype) + R * k * (_es(dtype) + 8), "GB/s",
               lambda: F.topk(x, k)[0], lambda: torch.topk(tx, k)[0], ref=torch.topk(x64, k)[0],
               flops=R * C, keep=(x,))


def sort(device, dtype, R, C):
    x, tx, x64 = _pair((R, C), dtype, device)
    size = R * C * _es(dtype)
    # reads the rows, writes the values and their int64 positions
    yield Case("sort", "fwd", f"{R}x{C}", dtype, 2 * size + 8 * R * C, "GB/s", lambda: F.sort(x)[0],
               lambda: torch.sort(tx)[0], ref=torch.sort(x64)[0], flops=R * C * max(1, int(math.log2(C))),
               keep=(x,))


def index_select(device, dtype, V, C, N):
    w, tw, w64 = _pair((V, C), dtype, device)
    ids = ls.randint(0, V, (N,), device=device)
    tids = torch.from_dlpack(ids)
    # each distinct row read once (a repeated one can come from L2, as for the embedding), N written
    distinct = int(torch.unique(tids).numel())
    yield Case("index_select", "fwd", f"{V}x{C} N{N}", dtype, (N + distinct) * C * _es(dtype), "GB/s",
               lambda: F.index_select(w, 0, ids), lambda: torch.index_select(tw, 0, tids),
               ref=torch.index_select(w64, 0, tids), flops=0, keep=(w, ids))


def cat(device, dtype, R, C):
    parts = [_pair((R, C // 4 * (i + 1)), dtype, device) for i in range(3)]
    size = sum(p[0].numel() for p in parts) * _es(dtype)
    yield Case("cat", "fwd", f"{R}x({C // 4},{C // 2},{3 * C // 4})", dtype, 2 * size, "GB/s",
               lambda: F.cat([p[0] for p in parts], -1), lambda: torch.cat([p[1] for p in parts], -1),
               ref=torch.cat([p[2] for p in parts], -1), flops=0, keep=[p[0] for p in parts])


# ---- the sweep -----------------------------------------------------------------------------------


def sweep(device, dtype, quick):
    """(op, builder, args) of every case; rows of 256 MB and more on the GPU."""
    gpu = device != "cpu"
    big = 4 if dtype == "float32" else 2
    if not gpu:
        rows = [(1024, 768)] if quick else [(4096, 768), (4096, 4096)]
        return [
            ("matmul", matmul, [(n, n, n) for n in ([256, 512] if quick else [1024, 2048])]),
            *[(op, fn, rows) for op, fn in (("softmax", softmax), ("layer_norm", layer_norm),
                                            ("rms_norm", rms_norm), ("add_layer_norm", add_layer_norm),
                                            ("add_rms_norm", add_rms_norm), ("gelu", gelu),
                                            ("silu", silu), ("swiglu", swiglu))],
            ("cross_entropy", cross_entropy, [(512, 4096)] if quick else [(2048, 32768)]),
            ("rope", rope, [(2, 128, 4, 64)] if quick else [(8, 512, 12, 64)]),
            ("embedding", embedding, [(4096, 256, 2048)] if quick else [(32768, 768, 8192)]),
            ("attention", attention, [(1, 4, 128, 64)] if quick else [(2, 8, 512, 64)]),
            ("adamw", adamw, [(1 << 20, 8)] if quick else [(1 << 24, 50)]),
            ("elementwise", elementwise, [(1 << 20)] if quick else [(1 << 25)]),
            ("moe", moe, [(256, 64, 128, 8, 2)] if quick else [(2048, 256, 512, 8, 2)]),
            ("dropout", dropout, rows[:1]),
            ("cumsum", cumsum, rows[:1]),
            ("topk", topk, [(4096, 64, 2)] if quick else [(16384, 64, 2), (1024, 4096, 50)]),
            ("sort", sort, [(256, 1024)] if quick else [(4096, 1024)]),
            ("index_select", index_select, [(4096, 256, 2048)] if quick else [(32768, 768, 8192)]),
            ("cat", cat, rows[:1]),
        ]
    r = 16384 * 4 // big  # 256 MB at C = 4096
    rows = [(1024, 1024)] if quick else [(16384, 768), (r, 4096)]
    return [
        ("matmul", matmul, [(1024, 1024, 1024)] if quick else
         # square GEMMs, GPT-2's MLP at 16 x 1024 tokens, and its output layer (50257: rows of an
         # odd length, which the CUDA tensor-core GEMMs and the Triton TMA kernel read through
         # padded copies)
         ([(4096, 4096, 4096), (8192, 8192, 8192), (16384, 3072, 768), (16384, 50257, 768)]
          if dtype != "float32" else [(4096, 4096, 4096)])),
        *[(op, fn, rows) for op, fn in (("softmax", softmax), ("layer_norm", layer_norm), ("rms_norm", rms_norm),
                                        ("add_layer_norm", add_layer_norm), ("add_rms_norm", add_rms_norm),
                                        ("gelu", gelu), ("silu", silu), ("swiglu", swiglu))],
        ("cross_entropy", cross_entropy, [(1024, 32768)] if quick else [(16384, 50304), (8192, 128256)]),
        ("rope", rope, [(2, 128, 4, 64)] if quick else [(16, 4096, 16, 128)]),
        # GPT-2 small at 16 x 1024 tokens (102 MB backward), and GPT-2 large at 64 x 1024, whose
        # forward and backward both move 256 MB or more
        # (and the small one with text-like id frequencies: the most frequent id takes about 600
        # of the 16384 tokens, and about 4850 of 128 x 1024: a batch whose long rows carry most
        # of the bytes)
        ("embedding", embedding, [(4096, 256, 2048)] if quick else
         [(50304, 768, 16384), (50304, 768, 16384, True), (50304, 1280, 65536),
          (50304, 768, 131072, True)]),
        ("attention", attention, [] if dtype == "float32" else
         ([(1, 4, 256, 64)] if quick else [(4, 16, 4096, 128), (4, 32, 4096, 64), (16, 12, 1024, 64)])),
        ("adamw", adamw, [(1 << 20, 8)] if quick or dtype != "float32" else [(124 << 20, 50)]),
        ("elementwise", elementwise, [(1 << 20)] if quick else [(1 << 26)]),
        ("moe", moe, [] if dtype == "float32" else
         ([(2048, 512, 1024, 8, 2)] if quick else [(16384, 1024, 4096, 8, 2)])),
        ("dropout", dropout, rows[-1:]),
        ("cumsum", cumsum, [(1024, 1024)] if quick else [(16384, 4096)]),
        ("topk", topk, [(4096, 64, 2)] if quick else [(16384, 64, 2), (16384, 4096, 50), (64, 50304, 50)]),
        ("sort", sort, [(256, 1024)] if quick else [(16384, 1024)]),
        ("index_select", index_select, [(4096, 256, 2048)] if quick else [(50304, 768, 16384)]),
        ("cat", cat, rows[-1:]),
    ]


# --ops also takes these for the elementwise group
ELEMENTWISE_OPS = {"add", "mul", "exp", "sum"}


def op_groups(device):
    """The names --ops accepts: the sweep's groups and the elementwise group's ops."""
    return {op for op, _, _ in sweep(device, "float32", True)} | ELEMENTWISE_OPS


def all_cases(device, dtypes, quick, ops=None):
    """Every case, built lazily (one op's tensors live only while it is measured)."""
    for dtype in dtypes:
        for op, fn, shapes in sweep(device, dtype, quick):
            if ops and op not in ops and not (op == "elementwise" and ops & ELEMENTWISE_OPS):
                continue
            if op == "adamw" and dtype != "float32":
                continue  # the master weights and moments are float32 whatever the model's dtype
            for shape in shapes:
                args = shape if isinstance(shape, tuple) else (shape,)
                yield from fn(device, dtype, *args)
