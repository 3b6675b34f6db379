"""AdamW (decoupled weight decay). The update of all parameters of a group runs as one fused
multi-tensor C++ op (cpp/optim/adamw.cpp); the CUDA backend registers its own fused kernel."""
import llmscratch_core as _core

from .._creation import zeros_like
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
                params, grads, m, v = [], [], [], []
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    s = self._state(p)
                    if not s:
                        s["step"] = 0
                        s["exp_avg"] = zeros_like(p)
                        s["exp_avg_sq"] = zeros_like(p)
                    s["step"] += 1
                    params.append(p)
                    grads.append(p.grad.contiguous())
                    m.append(s["exp_avg"])
                    v.append(s["exp_avg_sq"])
                if not params:
                    continue
                # Parameters of a group step together, so they share one step count.
                step = self._state(params[0])["step"]
                b1, b2 = g["betas"]
                _core.ops.adamw_step(params, grads, m, v, float(g["lr"]), float(b1), float(b2),
                                     float(g["eps"]), float(g["weight_decay"]), int(step),
                                     grad_scale)
