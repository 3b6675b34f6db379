"""matmul with torch semantics in Triton: a persistent, tiled GEMM with fp32 accumulation.

Math: C[b] = A[b] @ B[b], A (..., M, K), B (..., K, N) -> C (..., M, N); the batch dims
broadcast, a 1-D A is a row (1, K) and a 1-D B a column (K, 1), squeezed back from the result
(the registry op "matmul" already receives both operands with at least two dims; the promotion
here makes the function usable on its own). bfloat16, float16 and float32; float32 multiplies
in IEEE precision (no TF32) so results match the CPU reference to float32 rounding.

The kernel: each program walks a strided list of output tiles (BLOCK_M x BLOCK_N) over all
batches (persistent: one or two programs per SM, by tile size), loading A and B tiles through their
own row/column/batch strides, so transposed or strided views (the backward's A^T and B^T) are
read in place and never copied. Tiles are visited in groups of GROUP_M row tiles so that
neighbouring programs share A and B tiles in L2. The K loop accumulates in fp32 registers and
the tile is stored once, in the output dtype. Tile sizes are autotuned per (M, N, K) on the GPU
from a short list for 16-bit problems over 512 x 512 outputs; smaller ones and float32 use one
config each (fewer compiled variants); under TRITON_INTERPRET=1 (CPU tensors) one small tile
keeps tests fast.

On Hopper (sm_90 and up) a 16-bit single GEMM over 512 x 512 outputs (the common case: Linear
layers, and the backward's A^T and B^T) takes a second kernel, the same persistent grouped loop
but loading tiles through tensor descriptors (TMA: the copy engine fetches a whole tile into
shared memory, zero-filling past the edges, so the loop has no masks or address arithmetic).
Each operand is described in its stored order (row- or column-major) and a column-major tile
is transposed in shared memory, which wgmma reads in either order, so the backward's transposed
views are still read in place. It needs 16-byte aligned bases and outer strides (K, M or N a
multiple of 8 by layout): an operand without them is copied into padded rows first, and C
computed into padded rows and copied out. Batched problems and float32 use the pointer kernel.
Autotuned per (M, N, K, layouts): 128 x 256 x 64 tiles, 8 warps, 3 stages win at 4096^3 (0.97x
cuBLAS on an H200 in `python bench/compare_backends.py --device cuda --ops matmul`,
bench/results/nvidia-h200-a91ea69/; bench/notes_triton_tuning.md).

Batching: broadcast batch dims are expanded as views (stride 0). If their strides fold into one
uniform batch stride per operand the whole problem is one launch; otherwise the outermost batch
dim is split into separate launches on views. A 2-D B against a batched A with foldable rows is
one (rows, K) @ (K, N) GEMM, like a Linear layer. Limits: inputs must share a dtype and device.
"""
import collections

import llmscratch_core as _core
import torch
import triton
import triton.language as tl

try:  # host-side tensor descriptors (TMA); older triton releases lack them: pointer kernels only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

from . import interpreted
from ._common import dtype_name, fold_stride, launch, lru_get, lru_put, matmul_output, num_sms, sm90_or_later



def _configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2},
                              num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
    ]


def _prune(configs, named_args, **kwargs):
    """Autotune only where it pays: float32 (IEEE products on the FMA units, a test dtype) and
    small problems get one config, so a test suite of many shapes compiles few variants."""
    args = {**named_args, **kwargs}
    if len(configs) == 1:
        return configs
    if args["FP32"]:
        return [c for c in configs if c.kwargs["BLOCK_K"] == 32]
    if args["M"] * args["N"] * args["NBATCH"] <= 512 * 512:
        return [c for c in configs if c.kwargs["BLOCK_N"] == 64][-1:]
    return configs


@triton.autotune(configs=_configs(), key=["M", "N", "K", "FP32"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, NBATCH,
                   sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
                   FP32: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_batch = tiles_m * tiles_n
    total = per_batch * NBATCH
    group_size = GROUP_M * tiles_n
    rk = tl.arange(0, BLOCK_K)
    for tile in range(tl.program_id(0), total, tl.num_programs(0)):
        batch = tile // per_batch
        t = tile % per_batch
        # grouped order: GROUP_M row tiles sweep the column tiles together (L2 reuse)
        first_m = (t // group_size) * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (t % group_size) % rows_in_group
        pid_n = (t % group_size) // rows_in_group
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = rm < M
        mask_n = rn < N
        # a points at A[batch, rm, k0 + rk], b at B[batch, k0 + rk, rn]
        a = a_ptr + batch.to(tl.int64) * sab + rm[:, None].to(tl.int64) * sam + rk[None, :] * sak
        b = b_ptr + batch.to(tl.int64) * sbb + rk[:, None] * sbk + rn[None, :].to(tl.int64) * sbn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                x = tl.load(a, mask=mask_m[:, None], other=0.0)
                y = tl.load(b, mask=mask_n[None, :], other=0.0)
            else:
                x = tl.load(a, mask=mask_m[:, None] & (rk[None, :] < K - k0), other=0.0)
                y = tl.load(b, mask=(rk[:, None] < K - k0) & mask_n[None, :], other=0.0)
            if FP32:
                acc = tl.dot(x, y, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, y, acc)
            a += BLOCK_K * sak
            b += BLOCK_K * sbk
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        c = c_ptr + batch.to(tl.int64) * scb + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _tma_blocks(nargs):
    """Autotune pre-hook: each descriptor's box is the config's tile, in the operand's stored order."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bk, bm] if nargs["TRANS_A"] else [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["TRANS_B"] else [bk, bn]
    nargs["c_desc"].block_shape = [bm, bn]


def _tma_configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2},
                              num_warps=1, num_stages=1, pre_hook=_tma_blocks)]
    # 128 x 256 x 64 with 3 stages (208 KB of shared memory) is the fast one at 4096^3 and up on
    # H100/H200; 4 stages of it do not fit. The smaller tiles serve problems of few output tiles.
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "GROUP_M": 8},
                          num_warps=w, num_stages=s, pre_hook=_tma_blocks)
            for bm, bn, w, s in ((128, 256, 8, 3), (128, 128, 4, 4), (64, 128, 4, 4))]


def _prune_tma(configs, named_args, **kwargs):
    """Problems of at least two waves of 128 x 256 tiles keep only that tile. It is the fastest
    there in every layout (H100, 4096^3 bf16, each config timed alone: 0.91-0.92x cuBLAS for
    A @ B, A^T @ B and A @ B^T, against 0.82-0.86x for the next), but the autotuner's one short
    measurement per config picked 128 x 128 for the 8192^3 forward in one of two runs of the
    benchmark (0.87x instead of 1.00x, bench/notes_triton_tuning.md)."""
    tiles = triton.cdiv(named_args["M"], 128) * triton.cdiv(named_args["N"], 256)
    if tiles < 2 * _num_sms(torch.cuda.current_device()):
        return configs
    return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == (128, 256)] or configs


@triton.autotune(configs=_tma_configs(), key=["M", "N", "K", "TRANS_A", "TRANS_B"],
                 prune_configs_by={"early_config_prune": _prune_tma})
@triton.jit
def _matmul_tma_kernel(a_desc, b_desc, c_desc, bias_ptr, M, N, K,
                       TRANS_A: tl.constexpr, TRANS_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """One 2-D GEMM through tensor descriptors (the copy engine loads whole tiles into shared
    memory and zero-fills past the edges, so no masks; the store clips at the edges). A
    transposed operand is described in its stored order and transposed in shared memory, which
    the matrix instructions read either way. HAS_BIAS: bias[n] is added to every row before the
    store (a Linear layer's bias, without a pass of its own over C)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    for t in range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0)):
        first_m = (t // group_size) * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        m0 = (first_m + (t % group_size) % rows_in_group) * BLOCK_M
        n0 = ((t % group_size) // rows_in_group) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if TRANS_A:
                x = a_desc.load([k0, m0]).T
            else:
                x = a_desc.load([m0, k0])
            if TRANS_B:
                y = b_desc.load([n0, k0]).T
            else:
                y = b_desc.load([k0, n0])
            acc = tl.dot(x, y, acc)
        if HAS_BIAS:
            cols = n0 + tl.arange(0, BLOCK_N)
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        c_desc.store([m0, n0], acc.to(c_desc.dtype))


def _num_sms(device_index):
    return 2 if interpreted() else num_sms(device_index)


def _stored(x):
    """How the last two dims of a 16-bit operand (2-D, or 3-D with one batch) can be described to
    the copy engine: "rows" (row-major), "cols" (column-major, a transposed view), or None (the
    pointer kernel reads it). The engine wants a 16-byte aligned base and 16-byte multiples for
    the outer stride."""
    if x.data_ptr() % 16 != 0:
        return None
    r, c = x.shape[-2], x.shape[-1]
    sr, sc = x.stride(-2), x.stride(-1)
    es = x.element_size()
    if sc == 1 and sr * es % 16 == 0 and sr >= c:
        return "rows"
    if sr == 1 and sc * es % 16 == 0 and sc >= r:
        return "cols"
    return None


@triton.jit
def _copy_rows_kernel(X, Y, R, C, sx, sy, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # Y[r, c] = X[r, c] over [BLOCK_R, BLOCK_C] tiles; rows of any stride, unit column stride
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < R)[:, None] & (c < C)[None, :]
    v = tl.load(X + r[:, None] * sx + c[None, :], mask=mask)
    tl.store(Y + r[:, None] * sy + c[None, :], v, mask=mask)


def _copy_rows(dst, src):
    """dst.copy_(src) for two views of one shape whose rows (all dims but the last, folded) have a
    stride each and whose last dim is contiguous: the padded copies of this module. torch's copy
    of such views ran at about half the copy bandwidth (2 ms for the 16384 x 50257 logits on the
    H100, its index arithmetic per element); this kernel's tiles need none."""
    R = src.numel() // src.shape[-1] if src.shape[-1] else 0
    sx = fold_stride(list(src.shape[:-1]), src.stride()[:-1])
    sy = fold_stride(list(dst.shape[:-1]), dst.stride()[:-1])
    if sx is None or sy is None or src.stride(-1) != 1 or dst.stride(-1) != 1:
        dst.copy_(src)
        return
    C = src.shape[-1]
    if R and C:
        launch(_copy_rows_kernel, (triton.cdiv(R, 4), triton.cdiv(C, 1024)), src, dst, R, C, sx, sy,
               BLOCK_R=4, BLOCK_C=1024, num_warps=4)


def _padded(x, copy=True):
    """x (..., R, C) in a fresh buffer whose outer stride is rounded up to 16 bytes, in x's stored
    order (column-major for a transposed view, so the copy streams rows either way); copy=False
    leaves it uninitialised (an output)."""
    if x.stride(-2) == 1 and x.stride(-1) != 1:
        return _padded(x.transpose(-2, -1), copy).transpose(-2, -1)
    mult = 16 // x.element_size()
    C = x.shape[-1]
    buf = torch.empty((*x.shape[:-1], (C + mult - 1) // mult * mult), dtype=x.dtype, device=x.device)[..., :C]
    if copy:
        _copy_rows(buf, x)
    return buf


def _tma_operand(x):
    """x and its stored order for the copy engine ("rows" or "cols"), as a padded copy where x's
    base or outer stride does not allow it (a padded copy always does)."""
    layout = _stored(x)
    if layout is None:
        x = _padded(x)
        layout = _stored(x)
    return x, layout


def _has_tma(device_index):
    return TensorDescriptor is not None and sm90_or_later(device_index)


# The TMA kernel compiled for a problem, its tile and its three tensor descriptors, after the
# autotuner's first call: (device, dtype, M, N, K, layouts, strides) -> (compiled kernel,
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M), [a, b, c descriptors]). Later calls of the same problem
# launch the compiled kernel directly, without the autotuner's and the JIT's per-call work
# (argument binding, specialisation, cache keys): a 4096^3 call's host time on the H100 went from
# 114-123 to 65-66 us, for 180 us of GPU time (bench/notes_triton_tuning.md). They also reuse
# copies of the descriptors with the new operands as bases (shapes, strides and boxes are the
# key's), as building and checking three descriptors cost more host time than the launch. The
# key holds everything the compiled kernel was specialised on: the shapes and strides (the
# descriptors' bases are 16-byte aligned, _stored checks). (launch in _common.py does the same
# for the other kernels; this one keeps its own cache for the descriptors and the autotuner's
# pre-hook.) Least recently used problems are dropped past _TMA_COMPILED_MAX (a training step has
# a few dozen).
_tma_compiled = collections.OrderedDict()
_TMA_COMPILED_MAX = 512


def _descriptors(a, b, c, ta, tb, bm, bn, bk):
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    ad = (TensorDescriptor(a, [K, M], [a.stride(-1), 1], [bk, bm]) if ta
          else TensorDescriptor(a, [M, K], [a.stride(-2), 1], [bm, bk]))
    bd = (TensorDescriptor(b, [N, K], [b.stride(-1), 1], [bn, bk]) if tb
          else TensorDescriptor(b, [K, N], [b.stride(-2), 1], [bk, bn]))
    cd = TensorDescriptor(c, [M, N], [c.stride(-2), 1], [bm, bn])
    return ad, bd, cd


def _rebased(template, base):
    """A copy of a cached descriptor on a new base, without the dataclass's checks (its shape,
    strides and box are the cached problem's, checked when it was built): fresh objects per call,
    so no cached one holds a tensor or is shared between threads."""
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = base
    return desc


def _launch_tma(a, b, c, ta, tb, sms, bias=None):
    """c (M, N) = a (M, K) @ b (K, N) [+ bias (N,) on every row] (2-D, or 3-D views with one
    batch) with a, b in the stored orders ta, tb (True: column-major) and c row-major."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    # the bias's alignment is keyed: the compiled kernel may load it in 16-byte vectors
    has_bias = None if bias is None else (bias.dtype, bias.data_ptr() % 16 == 0)
    key = (a.device.index, a.dtype, M, N, K, ta, tb, a.stride(), b.stride(), c.stride(), has_bias)
    bias_arg = c if bias is None else bias  # a pointer the kernel never reads without a bias
    hit = lru_get(_tma_compiled, key)
    if hit is not None:
        kernel, (bm, bn, bk, gm), templates = hit
        descs = [_rebased(t, base) for t, base in zip(templates, (a, b, c))]
        grid = (min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)), 1, 1)
        kernel[grid](*descs, bias_arg, M, N, K, ta, tb, bias is not None, bm, bn, bk, gm)
        return
    # the boxes are placeholders until the autotuner's pre-hook sets each config's tile
    ad, bd, cd = _descriptors(a, b, c, ta, tb, 16, 16, 16)
    grid = lambda meta: (min(sms, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)
    kernel = _matmul_tma_kernel[grid](ad, bd, cd, bias_arg, M, N, K, ta, tb, HAS_BIAS=bias is not None)
    config = getattr(_matmul_tma_kernel, "best_config", None)
    if kernel is not None and config is not None:
        tile = tuple(config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"))
        templates = _descriptors(a, b, c, ta, tb, *tile[:3])
        for t in templates:
            t.base = None  # a cached descriptor must not keep this call's tensors alive
        lru_put(_tma_compiled, key, (kernel, tile, templates), _TMA_COMPILED_MAX)


def _launch(a, b, c, bias=None):
    """c (NB, M, N) = a (NB, M, K) @ b (NB, K, N) [+ bias (N,) on every row] on 3-D views, or
    2-D ones (NB = 1), any strides."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    NB = a.shape[0] if a.dim() == 3 else 1
    if c.numel() == 0:
        return
    if K == 0:
        c.zero_()
        if bias is not None:
            c.add_(bias)
        return
    sms = _num_sms(a.device.index if a.is_cuda else 0)
    # one 16-bit GEMM over 512 x 512 outputs on Hopper: the copy-engine kernel
    if NB == 1 and a.is_cuda and a.dtype != torch.float32 and M * N > 512 * 512 and _has_tma(a.device.index):
        # An operand whose outer stride is not a multiple of 16 bytes (a vocabulary of odd size,
        # the logits and their gradient) is copied into padded rows first, and C computed into
        # padded rows and copied out: one pass over each, where the pointer kernel took 14.8 ms of
        # a GPT-2 step for the output layer's three GEMMs (bench/notes_triton_tuning.md).
        (a, la), (b, lb) = _tma_operand(a), _tma_operand(b)
        out = c if _stored(c) == "rows" else _padded(c, copy=False)
        _launch_tma(a, b, out, la == "cols", lb == "cols", sms, bias)
        if out is not c:
            _copy_rows(c, out)
        return

    def grid(meta):
        # tiles up to 128 x 128 leave shared memory for two programs per SM: one stores its tile
        # while the other's loads run
        per_sm = 2 if meta["BLOCK_M"] * meta["BLOCK_N"] <= 128 * 128 else 1
        tiles = NB * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        return (min(sms * per_sm, tiles),)
    batch_strides = (a.stride(0), b.stride(0), c.stride(0)) if a.dim() == 3 else (0, 0, 0)
    _matmul_kernel[grid](a, b, c, c if bias is None else bias, M, N, K, NB,
                         batch_strides[0], a.stride(-2), a.stride(-1),
                         batch_strides[1], b.stride(-2), b.stride(-1),
                         batch_strides[2], c.stride(-2), c.stride(-1),
                         FP32=a.dtype == torch.float32, HAS_BIAS=bias is not None)


def _batched(a, b, c, bias=None):
    """c (*batch, M, N) = a @ b [+ bias] with a, b already expanded to c's batch dims (views)."""
    nb = c.dim() - 2
    batch = list(c.shape[:nb])
    sa = fold_stride(batch, a.stride()[:nb])
    sb = fold_stride(batch, b.stride()[:nb])
    sc = fold_stride(batch, c.stride()[:nb])
    if sa is not None and sb is not None and sc is not None:
        NB = 1
        for n in batch:
            NB *= n
        view3 = lambda x, s: x.as_strided((NB, x.shape[-2], x.shape[-1]), (s, x.stride(-2), x.stride(-1)))
        _launch(view3(a, sa), view3(b, sb), view3(c, sc), bias)
        return
    for i in range(batch[0]):  # strides that do not fold: split the outermost dim
        _batched(a[i], b[i], c[i], bias)


def matmul_forward(a, b, bias=None):
    """a @ b on torch tensors (cuda, or cpu under TRITON_INTERPRET=1), torch.matmul semantics;
    bias (N,), for operands of at least 2 dims, is added to every row in the kernel's epilogue."""
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("matmul: both operands need at least one dimension, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: dtypes differ: {dtype_name(a.dtype)} and {dtype_name(b.dtype)}")
    if a.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"matmul: the triton backend supports float32, float16 and bfloat16, got {dtype_name(a.dtype)}")
    if a.device != b.device:
        raise ValueError(f"matmul: operands are on {a.device} and {b.device}")
    K, N = a.shape[-1], b.shape[-1]
    if b.shape[-2 if b.dim() > 1 else 0] != K:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         f"multiplied ({K} != {b.shape[-2 if b.dim() > 1 else 0]})")
    if bias is not None and (a.dim() < 2 or b.dim() < 2 or bias.shape != (N,) or bias.dtype != a.dtype):
        raise ValueError(f"matmul: the bias must be ({N},) in {dtype_name(a.dtype)} with operands of at least "
                         f"2 dims; got {tuple(bias.shape)} {dtype_name(bias.dtype)} for shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return _matmul(a, b, bias)


def _matmul(a, b, bias):
    """matmul_forward past its checks (the registry op's run by CHECKS instead)."""
    if bias is not None:
        bias = bias.contiguous()
    A = a.unsqueeze(0) if a.dim() == 1 else a
    B = b.unsqueeze(-1) if b.dim() == 1 else b
    M, K, N = A.shape[-2], A.shape[-1], B.shape[-1]
    if a.dim() == 2 and b.dim() == 2:  # the common case, with the least host work
        out = matmul_output((M, N), a.dtype, a.device)
        _launch(a, b, out, bias)
        return out
    # a 2-D B (a Linear layer's weight) broadcasts to A's batch: torch.broadcast_shapes would
    # cost more host time than the rest of the call
    batch = A.shape[:-2] if B.dim() == 2 else torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    out = matmul_output((*batch, M, N), a.dtype, a.device)
    rows = fold_stride(list(A.shape[:-1]), A.stride()[:-1]) if B.dim() == 2 else None
    if rows is not None and A.dim() > 2:  # (..., M, K) @ (K, N): one GEMM over the folded rows
        R = A.shape[:-1].numel()
        _launch(A.as_strided((R, K), (rows, A.stride(-1))), B, out.view(R, N), bias)
    else:
        _batched(A.expand(*batch, M, K), B.expand(*batch, K, N), out, bias)
    if a.dim() == 1:
        out = out.squeeze(-2)
    if b.dim() == 1:
        out = out.squeeze(-1)
    return out


def _matmul_op(inputs, attrs):
    """Registry op "matmul": inputs {a, b[, bias]} (at least 2-D each; bias (N,) or absent), no
    attrs, outputs {a @ b + bias}."""
    return [_matmul(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)]  # checked by CHECKS


KERNELS = {"matmul": _matmul_op}
# the CPU and CUDA kernels' checks (count, dims, dtypes, K, the bias, broadcastable batch dims:
# torch's broadcast had raised its own RuntimeError)
CHECKS = {"matmul": lambda inputs, attrs: _core.ops.check_matmul_kernel_args(inputs)}
