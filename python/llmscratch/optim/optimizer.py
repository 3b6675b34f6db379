"""Optimizer base: parameter groups with per-group hyperparameters, per-parameter state,
zero_grad, and state_dict / load_state_dict for exact resumption."""
import llmscratch_core as _core

Tensor = _core.Tensor


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        self.state = {}  # id of the parameter's impl -> dict of state tensors
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict):
        group = dict(group)
        group["params"] = list(group["params"])
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameters must be Tensors, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {tuple(p.shape)} does not require grad")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.zero_()

    def _state(self, p) -> dict:
        return self.state.setdefault(p._impl_id(), {})

    def state_dict(self) -> dict:
        """{'state': {index: {name: tensor or number}}, 'param_groups': [...]} with parameters
        numbered in group order, as torch does."""
        index, state, groups = 0, {}, []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                s = self.state.get(p._impl_id())
                if s:
                    state[index] = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in s.items()}
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict):
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError("load_state_dict: the number of parameter groups differs")
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError("load_state_dict: a parameter group has a different size")
            for k, v in saved.items():
                if k != "params":
                    g[k] = v
            for p, idx in zip(g["params"], saved["params"]):
                s = sd["state"].get(idx, sd["state"].get(str(idx)))
                if s is None:
                    continue
                self.state[p._impl_id()] = {
                    k: (v.to(device=p.device).clone() if isinstance(v, Tensor) else v) for k, v in s.items()}

    def step(self):
        raise NotImplementedError
