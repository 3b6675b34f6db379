"""AdamW (decoupled weight decay). The update of all parameters of a group runs as one fused
multi-tensor C++ op (cpp/optim/adamw.cpp); the CUDA backend registers its own fused kernel.

Mixed precision: a bfloat16/float16 parameter trains through a float32 master copy kept in its
state ("master"); the fused op reads the 16-bit gradient, updates the master weight and moments
in float32 and writes the rounded new weight back into the parameter in the same pass."""
import llmscratch_core as _core

from .._creation import zeros_like
from .._dtype import bfloat16, float16, float32
from ..autograd import no_grad
from .optimizer import Optimizer


class AdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0:
            raise ValueError(f"AdamW: invalid learning rate {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW: eps and weight_decay must be non-negative, got {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self, grad_scale=None):
        """One update. grad_scale: optional 0-d tensor multiplying every gradient (e.g. a
        clipping coefficient), applied inside the fused kernel."""
        with no_grad():
            for g in self.param_groups:
                # two fused calls per group: float32/float64 parameters updated in place, and
                # 16-bit parameters through their float32 masters (written back as model copies)
                plain, mixed = ([], [], [], []), ([], [], [], [], [])
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    s = self._state(p)
                    if not s:
                        s["step"] = 0
                        if p.dtype in (bfloat16, float16):
                            s["master"] = p.to(dtype=float32, copy=True)
                        s["exp_avg"] = zeros_like(s.get("master", p))
                        s["exp_avg_sq"] = zeros_like(s.get("master", p))
                    s["step"] += 1
                    lists = mixed if "master" in s else plain
                    lists[0].append(s.get("master", p))
                    lists[1].append(p.grad.contiguous())
                    lists[2].append(s["exp_avg"])
                    lists[3].append(s["exp_avg_sq"])
                    if "master" in s:
                        mixed[4].append(p)
                b1, b2 = g["betas"]
                for params, grads, m, v, *copies in (plain, mixed):
                    if not params:
                        continue
                    # Parameters of a group step together, so they share one step count.
                    step = self._state(copies[0][0] if copies else params[0])["step"]
                    _core.ops.adamw_step(params, grads, m, v, float(g["lr"]), float(b1), float(b2),
                                         float(g["eps"]), float(g["weight_decay"]), int(step),
                                         grad_scale, model_copies=copies[0] if copies else [])
