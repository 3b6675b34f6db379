"""Stochastic gradient descent with momentum, Nesterov momentum and (coupled) weight decay, as
torch.optim.SGD defines them:
    g = grad + wd * p;  b = mu * b + (1 - dampening) * g  (b = g on the first step)
    g = g + mu * b if nesterov else b;  p -= lr * g"""
from ..autograd import no_grad
from .optimizer import Optimizer


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be non-negative, got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self):
        with no_grad():
            for g in self.param_groups:
                lr, mu, wd = g["lr"], g["momentum"], g["weight_decay"]
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    d = p.grad
                    if wd:
                        d = d + p * wd
                    if mu:
                        s = self._state(p)
                        if "momentum_buffer" not in s:
                            s["momentum_buffer"] = d.clone()
                        else:
                            buf = s["momentum_buffer"]
                            buf.copy_(buf * mu + d * (1 - g["dampening"]))
                        buf = s["momentum_buffer"]
                        d = d + buf * mu if g["nesterov"] else buf
                    p.sub_(d * lr)
