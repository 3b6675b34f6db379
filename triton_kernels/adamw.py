"""Multi-tensor AdamW step and global gradient norm (cpp/optim/adamw.cpp).

adamw_step (Loshchilov & Hutter 2019, decoupled weight decay), in place on every tensor k:
    p -= lr wd p
    m = b1 m + (1 - b1) g s;   v = b2 v + (1 - b2) (g s)^2           (s: optional grad scale)
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
global_norm: sqrt(sum over all tensors and elements of x^2) -> 0-d float32 on the device.

Registry ops: "adamw_step" {params (P), grads (P), exp_avg (P), exp_avg_sq (P), grad_scale?}
attrs lr, beta1, beta2, eps, weight_decay, step, has_grad_scale -> {} (updates in place);
"global_norm" {tensors...} -> {norm}.

The mixed-precision form (has_model_copy, 16-bit gradients of float32 masters) is left to the
CUDA backend (SERVES below).

Kernels: one launch per dtype group over all its tensors, through pointer tables: the tensors'
addresses (int64, cast to pointers in the kernel; the kernel is told when all are 16-byte aligned,
else it cannot know and reads 4 bytes at a time) and a block table giving each program its
tensor and the first element of its 1024-element block, so a huge embedding matrix and many
small biases share one grid. The tables are built on the host and cached, the block tables by
the tensors' sizes and the address table by their addresses (gradients may move between steps,
sizes do not), so a steady-state step copies at most the small address table to the device.
Arithmetic is float32. global_norm writes one float32 partial sum of squares per block; torch
adds the partials in float64 in a fixed order (deterministic; the CPU op sums every element in
float64). The grad scale stays on the device (no synchronisation).
"""
import collections
import math

import llmscratch_core as _core
import torch
import triton
import triton.language as tl

from ._common import launch, lru_get, lru_put


_BLOCK = 1024
_MAX_TABLES = 16
# (device, sizes) -> (sizes, per block its tensor, per block its first element), on the device
_BLOCK_TABLES = collections.OrderedDict()
# (device, addresses) -> the (roles, K) address table on the device
_ADDRESS_TABLES = collections.OrderedDict()


def _block_tables(numels, device):
    """Sizes (K,) int64 and, per 1024-element block, its tensor (int32) and first element
    (int64), built with vectorised torch ops (a 124M-parameter model has 121k blocks)."""
    n = torch.tensor(numels, dtype=torch.int64)
    per = (n + _BLOCK - 1) // _BLOCK
    blk_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), per)
    first = torch.cumsum(per, 0) - per
    blk_start = (torch.arange(int(per.sum())) - torch.repeat_interleave(first, per)) * _BLOCK
    return tuple(t.to(device) for t in (n, blk_tensor, blk_start))


def _tables(groups, device):
    """Device tables for tensors `groups` (lists of tensors of equal sizes, one list per role):
    a (roles, K) int64 address table, sizes (K,), and per block its tensor (int32) and start.
    The block tables depend on the sizes only; the addresses change whenever the gradients are
    allocated anew (their allocator need not hand out the same blocks each step), and then only
    the small address table is rebuilt: rebuilding the block tables with Python lists every step
    had cost tens of milliseconds of host time a step."""
    numels = tuple(t.numel() for t in groups[0])
    addresses = tuple(tuple(t.data_ptr() for t in g) for g in groups)
    key = (str(device), addresses)
    addr = lru_get(_ADDRESS_TABLES, key)
    if addr is None:
        addr = lru_put(_ADDRESS_TABLES, key, torch.tensor(addresses, dtype=torch.int64, device=device),
                       _MAX_TABLES)
    key = (str(device), numels)
    blocks = lru_get(_BLOCK_TABLES, key)
    if blocks is None:
        blocks = lru_put(_BLOCK_TABLES, key, _block_tables(numels, device), _MAX_TABLES)
    return (addr, *blocks)


@triton.jit
def _adamw_block(P, G, M, V, offs, mask, SCALE, lr, beta1, beta2, eps, wd, bc1, bc2,
                 HAS_SCALE: tl.constexpr, MASKED: tl.constexpr):
    """One block of tensor k; MASKED for its last, partial block (a mask of unknown alignment
    makes every access a scalar one)."""
    if MASKED:
        p = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(M + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        p = tl.load(P + offs).to(tl.float32)
        g = tl.load(G + offs).to(tl.float32)
        m = tl.load(M + offs).to(tl.float32)
        v = tl.load(V + offs).to(tl.float32)
    if HAS_SCALE:
        g = g * tl.load(SCALE).to(tl.float32)
    p -= lr * wd * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    p -= lr * (m / bc1) / (tl.sqrt(v / bc2) + eps)
    tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)
    tl.store(M + offs, m.to(M.dtype.element_ty), mask=mask)
    tl.store(V + offs, v.to(V.dtype.element_ty), mask=mask)


@triton.jit
def _adamw(ADDR, K, NUMEL, BLK_TENSOR, BLK_START, SCALE, ELEM, lr, beta1, beta2, eps, wd,
           bc1, bc2, HAS_SCALE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    k = tl.load(BLK_TENSOR + pid)
    start = tl.multiple_of(tl.load(BLK_START + pid), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    n = tl.load(NUMEL + k)
    ptr_ty = tl.pointer_type(ELEM.dtype.element_ty)
    P = tl.load(ADDR + k).to(ptr_ty)  # tensor k of each role
    G = tl.load(ADDR + K + k).to(ptr_ty)
    M = tl.load(ADDR + 2 * K + k).to(ptr_ty)
    V = tl.load(ADDR + 3 * K + k).to(ptr_ty)
    if ALIGNED:  # every address 16-byte aligned (checked on the host): 16-byte accesses
        P = tl.multiple_of(P, 16)
        G = tl.multiple_of(G, 16)
        M = tl.multiple_of(M, 16)
        V = tl.multiple_of(V, 16)
    if start + BLOCK <= n:
        _adamw_block(P, G, M, V, offs, None, SCALE, lr, beta1, beta2, eps, wd, bc1, bc2, HAS_SCALE, False)
    else:
        _adamw_block(P, G, M, V, offs, offs < n, SCALE, lr, beta1, beta2, eps, wd, bc1, bc2, HAS_SCALE,
                     True)


@triton.jit
def _sum_squares(ADDR, NUMEL, BLK_TENSOR, BLK_START, PARTIAL, ELEM, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    k = tl.load(BLK_TENSOR + pid)
    offs = tl.load(BLK_START + pid) + tl.arange(0, BLOCK)
    X = tl.load(ADDR + k).to(tl.pointer_type(ELEM.dtype.element_ty))
    x = tl.load(X + offs, mask=offs < tl.load(NUMEL + k), other=0.0).to(tl.float32)
    tl.store(PARTIAL + pid, tl.sum(x * x, axis=0))


def _by_dtype(indices, tensors):
    groups = collections.defaultdict(list)
    for i in indices:
        groups[tensors[i].dtype].append(i)
    return groups.values()


def adamw_step(inputs, attrs):
    has_scale = bool(attrs.get("has_grad_scale", False))
    scale = inputs[-1] if has_scale else None
    tensors = inputs[:-1] if has_scale else inputs
    n = len(tensors) // 4  # groups as CHECKS accepted them
    step = int(attrs["step"])
    if step < 1:
        raise ValueError(f"adamw_step: step must be >= 1, got {step}")
    b1, b2 = float(attrs.get("beta1", 0.9)), float(attrs.get("beta2", 0.999))
    for idx in _by_dtype([k for k in range(n) if tensors[k].numel()], tensors):
        groups = [[tensors[role * n + k] for k in idx] for role in range(4)]
        addr, numel, blk_tensor, blk_start = _tables(groups, tensors[0].device)
        launch(_adamw, (blk_tensor.numel(),),
               addr, len(idx), numel, blk_tensor, blk_start,
               scale if scale is not None else numel, groups[0][0],
               float(attrs.get("lr", 1e-3)), b1, b2, float(attrs.get("eps", 1e-8)),
               float(attrs.get("weight_decay", 0.0)), 1.0 - math.pow(b1, step),
               1.0 - math.pow(b2, step), HAS_SCALE=scale is not None,
               ALIGNED=all(t.data_ptr() % 16 == 0 for g in groups for t in g), BLOCK=_BLOCK)
    return []


def global_norm(inputs, attrs):
    tensors = [t.contiguous() for t in inputs]
    device = tensors[0].device
    partials = []
    for idx in _by_dtype([i for i, t in enumerate(tensors) if t.numel()], tensors):
        group = [tensors[i] for i in idx]
        addr, numel, blk_tensor, blk_start = _tables([group], device)
        part = torch.empty(blk_tensor.numel(), dtype=torch.float32, device=device)
        launch(_sum_squares, (blk_tensor.numel(),), addr, numel, blk_tensor, blk_start, part, group[0],
               BLOCK=_BLOCK)
        partials.append(part)
    if not partials:
        return [torch.zeros((), dtype=torch.float32, device=device)]
    return [torch.cat(partials).double().sum().sqrt().float()]


def _at_most_float32(tensors):
    """The kernels compute in float32: a float64 tensor (which the registry's dispatch on the first
    input's dtype does not see past a float32 one) goes to the native backend whole."""
    return all(t is None or t.dtype.itemsize <= 4 for t in tensors)


def _serves_adamw(inputs, attrs):
    """Plain steps of float32 and 16-bit tensors only: the mixed-precision form (16-bit gradients
    for float32 masters, model copies written back; has_model_copy) and float64 parameters (which
    a float32 update would round) run on the CUDA backend."""
    n = (len(inputs) - (1 if attrs.get("has_grad_scale", False) else 0)) // 4
    if attrs.get("has_model_copy", False) or not _at_most_float32(inputs[:n]):
        return False  # the parameters' dtypes: the gradients must match them (below)
    return all(inputs[n + k].dtype == inputs[k].dtype for k in range(n))


KERNELS = {"adamw_step": adamw_step, "global_norm": global_norm}
SERVES = {"adamw_step": _serves_adamw, "global_norm": lambda inputs, attrs: _at_most_float32(inputs)}


def _check_adamw(inputs, attrs):
    """CHECKS entry: the CPU and CUDA kernels' checks of the groups (equally many tensors, each of
    its parameter's shape and allowed dtype, all contiguous: a strided parameter had been updated
    in storage order against its gradient in logical order) and of grad_scale; parameters may
    also be bfloat16 or float16 here (with gradients and moments of their dtype)."""
    _core.ops.check_adamw_inputs(inputs, bool(attrs.get("has_model_copy", False)),
                                 bool(attrs.get("has_grad_scale", False)), True)  # 16-bit parameters too


CHECKS = {"adamw_step": _check_adamw,
          "global_norm": lambda inputs, attrs: _core.ops.check_global_norm_inputs(inputs)}
