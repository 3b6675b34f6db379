"""AdamW (decoupled weight decay). The update of a group's parameters runs as one fused
multi-tensor C++ op (cpp/optim/adamw.cpp) per distinct step count, usually one; the CUDA backend
registers its own fused kernel.

Mixed precision: a bfloat16/float16 parameter trains through a float32 master copy kept in its
state ("master"); the fused op reads the 16-bit gradient, updates the master weight and moments
in float32 and writes the rounded new weight back into the parameter in the same pass. A write to
the parameter from outside (model.load_state_dict, a re-initialisation, p.copy_) bumps its
_version; the next step then re-derives the master from the parameter instead of overwriting it."""
import numbers

import llmscratch_core as _core

from .._creation import full, zeros_like
from .._dtype import bfloat16, float16, float32, float64
from ..autograd import no_grad
from .optimizer import Optimizer, Tensor

_HALF = (bfloat16, float16)


class AdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        # written so that NaN fails each check, as torch's do
        if not lr >= 0:
            raise ValueError(f"AdamW: invalid learning rate {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not (eps >= 0 and weight_decay >= 0):
            raise ValueError(f"AdamW: eps and weight_decay must be non-negative, got {eps}, {weight_decay}")
        # id of a 16-bit parameter's impl -> its _version when its master last matched it
        self._master_versions = {}
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    _BY_PARAM = ("state", "_master_versions")

    def _state_dtype(self, p):
        return float32 if p.dtype in _HALF else p.dtype  # 16-bit parameters: float32 master and moments

    def __deepcopy__(self, memo):
        """As Optimizer's; a master in step with its parameter stays in step with the copy's."""
        new = super().__deepcopy__(memo)
        for g, h in zip(self.param_groups, new.param_groups):
            for p, q in zip(g["params"], h["params"]):
                version = self._master_versions.get(p._impl_id())
                if version is not None:
                    new._master_versions[q._impl_id()] = q._version if version == p._version else -1
        return new

    def state_dict(self) -> dict:
        """As Optimizer.state_dict. A 16-bit parameter written since its last step exports the
        master its next step would use (its own values), not the one the write made stale."""
        for g in self.param_groups:
            for p in g["params"]:
                s = self.state.get(p._impl_id())
                if s and "master" in s and self._master_stale(p):
                    s["master"] = p.to(dtype=float32, copy=True)
                    self._master_versions[p._impl_id()] = p._version
        return super().state_dict()

    def load_state_dict(self, sd: dict):
        """As Optimizer.load_state_dict. A loaded master is the full-precision weight its rounded
        parameter came from, so it stays in use: load the model first, since a later write to the
        parameter makes the next step re-derive the master from it."""
        super().load_state_dict(sd)
        self._master_versions = {}
        for g in self.param_groups:
            for p in g["params"]:
                if "master" in self.state.get(p._impl_id(), {}):
                    self._master_versions[p._impl_id()] = p._version

    def step(self, grad_scale=None):
        """One update. grad_scale: optional 0-d tensor or number multiplying every gradient (e.g.
        a clipping coefficient), applied inside the fused kernel.

        Every parameter counts its own steps, as torch does, so the bias correction stays right
        for one that had no gradient on some steps (frozen, then unfrozen). A group's parameters
        step in one fused call per distinct step count (and per 16-bit or not); a call that
        raises leaves the state of its parameters as it was."""
        if grad_scale is not None and not isinstance(grad_scale, (Tensor, numbers.Real)):
            raise TypeError(f"AdamW.step: grad_scale must be a Tensor or a number, "
                            f"got {type(grad_scale).__name__}")
        # read before any fused call writes: parameters that share a version counter (views of one
        # tensor) see each other's calls move it
        stale = {p._impl_id() for g in self.param_groups for p in g["params"]
                 if p.dtype in _HALF and self._master_stale(p)}
        if grad_scale is not None and not isinstance(grad_scale, Tensor):  # one tensor per step
            p0 = self.param_groups[0]["params"][0]
            grad_scale = full((), float(grad_scale), dtype=float64, device=p0.device)
        stepped = []
        try:
            self._step_groups(stale, stepped, grad_scale)
        finally:  # after every call that ran, for the same reason
            for p in stepped:
                self._master_versions[p._impl_id()] = p._version

    def _step_groups(self, stale, stepped, grad_scale):
        with no_grad():
            for g in self.param_groups:
                batches = {}  # (new step count, 16-bit?) -> [(parameter, its new state)]
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    half = p.dtype in _HALF
                    # a copy, committed only once the fused call has returned
                    s = dict(self.state.get(p._impl_id()) or self._new_state(p))
                    if half and p._impl_id() in stale:
                        # first step, or p was written outside the optimizer: the master follows p
                        s["master"] = p.to(dtype=float32, copy=True).contiguous()
                    s["step"] += 1
                    batches.setdefault((s["step"], half), []).append((p, s))
                for (step, half), batch in batches.items():
                    self._fused_step(g, step, half, batch, grad_scale)
                    stepped += [p for p, _ in batch] if half else []

    def _master_stale(self, p) -> bool:
        """Whether p was written since its master last matched it (or has no master yet)."""
        return self._master_versions.get(p._impl_id()) != p._version

    def _new_state(self, p) -> dict:
        dtype = self._state_dtype(p)
        return {"step": 0, "exp_avg": zeros_like(p, dtype=dtype), "exp_avg_sq": zeros_like(p, dtype=dtype)}

    def _fused_step(self, g, step, half, batch, grad_scale):
        """One adamw_step call over batch; 16-bit parameters update their float32 masters and
        receive the rounded new weights as model copies."""
        # The fused kernel takes contiguous tensors: a strided parameter (a transposed leaf)
        # steps through a contiguous copy, written back after.
        own = [p if p.is_contiguous() else p.contiguous() for p, _ in batch]
        params = [s["master"] if half else q for (_, s), q in zip(batch, own)]
        b1, b2 = g["betas"]
        _core.ops.adamw_step(params, [p.grad.contiguous() for p, _ in batch],
                             [s["exp_avg"] for _, s in batch], [s["exp_avg_sq"] for _, s in batch],
                             float(g["lr"]), float(b1), float(b2), float(g["eps"]),
                             float(g["weight_decay"]), int(step), grad_scale,
                             model_copies=own if half else [])
        for (p, s), q in zip(batch, own):
            if q is not p:
                p.copy_(q)
            self.state[p._impl_id()] = s
