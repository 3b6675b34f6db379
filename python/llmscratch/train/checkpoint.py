"""Checkpoints that survive being interrupted and resume a run exactly.

A checkpoint is a folder `step_NNNNNNN/` holding `model.safetensors` (the state_dict),
`optimizer.safetensors` (every state tensor, named `state.<param index>.<name>`) and
`trainer.json` (step, the optimizer's hyperparameters and scalar state, the generator state,
the data position, the config, metrics). It is written into a temporary folder that is renamed
into place only when complete, so a killed writer leaves the previous checkpoints intact; the
file `latest` (replaced atomically too) names the newest one."""
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

import llmscratch_core as _core

from .._creation import from_numpy

Tensor = _core.Tensor


def _host(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == _core.DType.bfloat16:
        t = t.to(dtype=_core.DType.float32)  # safetensors.numpy has no bfloat16
    return np.ascontiguousarray(t.numpy())


def _atomic_write_text(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(root: str, step: int, model, optimizer, trainer_state: dict,
                    keep_last: int = 3, keep: tuple = ()) -> str:
    """Write checkpoint `step` under root; delete older ones beyond the last `keep_last`,
    except those named in `keep` (e.g. the best by validation loss). Returns its folder."""
    os.makedirs(root, exist_ok=True)
    name = f"step_{step:07d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: _host(v) for k, v in model.state_dict().items()}, os.path.join(tmp, "model.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in opt["state"].items():
        for k, v in state.items():
            if isinstance(v, Tensor):
                tensors[f"state.{idx}.{k}"] = _host(v)
            else:
                scalars[f"{idx}.{k}"] = v
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    meta = dict(trainer_state, step=step, optimizer_groups=opt["param_groups"], optimizer_scalars=scalars)
    with open(os.path.join(tmp, "trainer.json"), "w") as f:
        json.dump(meta, f, indent=1, default=list)
    if os.path.exists(final):  # re-saving the same step replaces it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _atomic_write_text(os.path.join(root, "latest"), name)
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    for d in steps[:-keep_last] if keep_last > 0 else []:
        if d not in keep and d != name:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return final


def latest_checkpoint(root: str):
    """The newest complete checkpoint folder under root, or None."""
    path = os.path.join(root, "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        name = f.read().strip()
    folder = os.path.join(root, name)
    return folder if os.path.isdir(folder) else None


def load_checkpoint(folder: str, model, optimizer=None) -> dict:
    """Restore the model (and optimizer) in place; returns the trainer state."""
    for f in ("model.safetensors", "trainer.json"):
        if not os.path.exists(os.path.join(folder, f)):
            raise FileNotFoundError(f"checkpoint {folder} is incomplete: {f} is missing")
    with open(os.path.join(folder, "trainer.json")) as f:
        meta = json.load(f)
    state = {k: from_numpy(v) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    model.load_state_dict(state)
    if optimizer is not None:
        opt_state = {}
        for key, arr in load_file(os.path.join(folder, "optimizer.safetensors")).items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = from_numpy(arr)
        for key, v in meta["optimizer_scalars"].items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["optimizer_groups"]]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    return meta
