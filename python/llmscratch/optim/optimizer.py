"""Optimizer base: parameter groups with per-group hyperparameters, per-parameter state,
zero_grad, and state_dict / load_state_dict for exact resumption."""
import copy
import numbers

import llmscratch_core as _core

Tensor = _core.Tensor


def _refuse_set(params, name):
    if isinstance(params, set):  # its order changes between processes: a resume would mix states
        raise TypeError(f"{name}: parameters must be in an ordered collection (a list), not a set: "
                        f"state_dict numbers them in order")


class Optimizer:
    # attributes keyed by a parameter's identity (its impl's id), re-keyed by __deepcopy__
    _BY_PARAM = ("state",)

    def __init__(self, params, defaults: dict):
        if isinstance(params, Tensor):
            # iterating a Tensor would yield its rows: non-leaf views that train nothing
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or dicts, "
                            f"got a Tensor (wrap it in a list)")
        _refuse_set(params, type(self).__name__)
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
        name = type(self).__name__
        group = dict(group)
        params = group["params"]
        _refuse_set(params, name)
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        ids = set()
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameters must be Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: can't optimize a non-leaf Tensor (shape {tuple(p.shape)})")
            if not p.requires_grad:
                raise ValueError(f"{name}: a parameter of shape {tuple(p.shape)} does not require grad")
            if p._impl_id() in ids:
                raise ValueError(f"{name}: a parameter of shape {tuple(p.shape)} appears twice in one "
                                 f"parameter group (it would be stepped twice)")
            ids.add(p._impl_id())
        if any(q._impl_id() in ids for g in self.param_groups for q in g["params"]):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
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

    def __deepcopy__(self, memo):
        """copy.deepcopy, as torch's: the copy steps copies of the parameters (the model's own
        copies when deepcopy((model, optimizer)) copies both) with copies of their state, which
        is re-keyed to them."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key not in self._BY_PARAM:
                setattr(new, key, copy.deepcopy(value, memo))
        pairs = [(p._impl_id(), q) for g, h in zip(self.param_groups, new.param_groups)
                 for p, q in zip(g["params"], h["params"])]
        for key in self._BY_PARAM:
            old = getattr(self, key)
            setattr(new, key, {q._impl_id(): copy.deepcopy(old[i], memo) for i, q in pairs if i in old})
        return new

    def _state(self, p) -> dict:
        return self.state.setdefault(p._impl_id(), {})

    def _state_dtype(self, p):
        """The dtype of p's floating state tensors."""
        return p.dtype

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
        """Replace the whole state (parameters absent from sd start afresh) and the groups'
        hyperparameters. State tensors (floating: an integer one is refused) are cast to the dtype
        the optimizer keeps for their parameter and copied to its device; nothing changes if any
        check fails."""
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError("load_state_dict: the number of parameter groups differs")
        state = {}
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError("load_state_dict: a parameter group has a different size")
            for p, idx in zip(g["params"], saved["params"]):
                s = sd["state"].get(idx, sd["state"].get(str(idx)))
                if s is not None:
                    state[p._impl_id()] = {k: self._load_state_value(p, idx, k, v) for k, v in s.items()}
        for g, saved in zip(self.param_groups, sd["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state = state

    def _load_state_value(self, p, idx, key, v):
        if not isinstance(v, Tensor):
            if isinstance(v, numbers.Real) and not isinstance(v, bool):  # a step count
                return v
            raise TypeError(f"load_state_dict: state '{key}' of parameter {idx} is a {type(v).__name__}; "
                            f"expected a llmscratch Tensor or a number (a torch optimizer's state "
                            f"dict is not read)")
        # every state tensor of these optimizers (moments, buffers, masters) is parameter-shaped
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"load_state_dict: state '{key}' of parameter {idx} has shape "
                             f"{tuple(v.shape)}, but the parameter has shape {tuple(p.shape)}")
        if not v.dtype.is_floating_point:  # moments, buffers and masters are all floating
            raise ValueError(f"load_state_dict: state '{key}' of parameter {idx} has dtype {v.dtype}, "
                             f"not a floating dtype")
        return v.to(device=p.device, dtype=self._state_dtype(p), copy=True)

    def step(self):
        raise NotImplementedError
