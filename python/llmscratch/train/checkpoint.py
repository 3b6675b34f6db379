"""Checkpoints that survive being interrupted and resume a run exactly.

A checkpoint is a folder `step_NNNNNNN/` holding `model.safetensors` (the state_dict),
`optimizer.safetensors` (every state tensor, named `state.<param index>.<name>`) and
`trainer.json` (step, the optimizer's hyperparameters and scalar state, the generator state,
the data position, the config, metrics; strict JSON: a non-finite number is written null). It is
written into a temporary folder, flushed to disk and renamed into place only when complete, so a
killed writer (or a lost machine) leaves the previous checkpoints intact, and a write that fails
(a full disk) removes its temporary. The file `latest` (replaced atomically too) names the newest
one; it is replaced just before the rename that completes the checkpoint, so there is no moment
at which a whole newer checkpoint exists that `latest` does not name: a writer lost between the
two leaves `latest` naming a folder that is not there, and the newest whole checkpoint of a step
up to that one is taken instead. (The highest step is not simply taken: a run resumed from an
older checkpoint writes on below the steps it abandoned.) Re-saving a step moves the old folder
aside before the new one takes its name, so every `step_*` folder is whole at every moment. A
temporary left by a writer that died is removed by the next save. Steps are compared as numbers
(`step_10000000` follows `step_9999999`)."""
import json
import math
import os
import re
import shutil

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

import llmscratch_core as _core

from .._creation import from_numpy
from .._files import atomic_write_text, fsync, read_json, stale_temporaries

Tensor = _core.Tensor


def _stored_dtype(dtype):
    """The dtype a tensor of this dtype is saved in: safetensors.numpy has no bfloat16."""
    return _core.DType.float32 if dtype == _core.DType.bfloat16 else dtype


def _host(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return np.ascontiguousarray(t.to(dtype=_stored_dtype(t.dtype)).numpy())


_TEMPORARY = re.compile(r"(?:\.(step_\d+)\.(tmp|old)|latest\.tmp)-(?P<pid>\d+)")


def _clean_temporaries(root: str):
    """Before a save: tidy what an earlier writer left under root. Its `.step_N.tmp-PID` and
    `.step_N.old-PID` folders and `latest.tmp-PID` files are removed when that process no longer
    runs, or is this one (a process of the same PID before it: no save of this one is under way);
    but the `.old` folder of a step whose `step_N` is gone (a writer lost between its two renames;
    `.old` was a whole checkpoint, a `.tmp` may be partial) is renamed back to `step_N`."""
    for entry, m in stale_temporaries(root, _TEMPORARY):
        path = os.path.join(root, entry)
        if m[2] == "old" and not os.path.exists(os.path.join(root, m[1])) and _complete(path):
            os.rename(path, os.path.join(root, m[1]))
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


_STEP = re.compile(r"^step_(\d+)$")


def _step(name: str):
    """The step of a `step_N` folder name (a number: names sort wrongly past 10**7), None for
    any other name."""
    m = _STEP.match(name)
    return int(m[1]) if m else None


def json_safe(value):
    """value with every non-finite float (NaN, +-inf) replaced by None, in dicts, lists and
    tuples: JSON has no such numbers (Python would write NaN and Infinity, which strict parsers,
    jq and JavaScript refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_checkpoint(root: str, step: int, model, optimizer, trainer_state: dict,
                    keep_last: int = 3, keep: tuple = ()) -> str:
    """Write checkpoint `step` under root; delete older ones beyond the last `keep_last`,
    except those named in `keep` (e.g. the best by validation loss). Returns its folder."""
    os.makedirs(root, exist_ok=True)
    _clean_temporaries(root)
    name = f"step_{step:07d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.tmp-{os.getpid()}")
    old = None
    shutil.rmtree(tmp, ignore_errors=True)
    try:
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
        meta = dict(trainer_state, step=step, optimizer_groups=opt["param_groups"], optimizer_scalars=scalars,
                    parameter_names=_parameter_names(model, optimizer))
        with open(os.path.join(tmp, "trainer.json"), "w") as f:
            json.dump(json_safe(meta), f, indent=1, default=list, allow_nan=False)
        for f in os.listdir(tmp):
            fsync(os.path.join(tmp, f))
        fsync(tmp)
        if os.path.exists(final):  # re-saving a step: the old folder goes aside, then away
            old = os.path.join(root, f".{name}.old-{os.getpid()}")
            os.rename(final, old)
        # `latest` first, then the rename that makes the checkpoint whole (module docstring).
        atomic_write_text(os.path.join(root, "latest"), name)
        os.rename(tmp, final)
    except BaseException:
        # A failed write (a full disk, an interrupt) leaves no partial folder for the next save
        # to find, and a re-saved step its old folder under its name.
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(final):
            os.rename(old, final)
        raise
    fsync(root)
    if old is not None:
        shutil.rmtree(old)
    steps = sorted((d for d in os.listdir(root) if _step(d) is not None), key=_step)
    for d in steps[:-keep_last] if keep_last > 0 else []:
        if d not in keep and d != name:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return final


def _complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "trainer.json"))


def latest_checkpoint(root: str):
    """The newest checkpoint folder under root: the one `latest` names; should that not be whole
    (a writer lost between replacing `latest` and its rename, or a folder removed by hand), the
    highest whole checkpoint of a step up to latest's: a `step_*` folder, or the whole `.old` copy
    of a re-saved step whose new folder did not arrive; without `latest`, the highest of them.
    None if there is none."""
    if not os.path.isdir(root):
        return None
    bound = None
    path = os.path.join(root, "latest")
    if os.path.exists(path):
        with open(path) as f:
            name = f.read().strip()
        if _step(name) is not None and _complete(os.path.join(root, name)):
            return os.path.join(root, name)
        bound = _step(name)
    candidates = {}  # step -> its folder, `step_N` rather than a `.old` copy
    for entry in os.listdir(root):
        m = _TEMPORARY.match(entry)
        step = _step(entry)
        if step is None and m and m[2] == "old":
            step = _step(m[1])
        if step is not None and _complete(os.path.join(root, entry)) and \
                (step not in candidates or entry.startswith("step_")):
            candidates[step] = entry
    upto = [s for s in candidates if bound is None or s <= bound]
    return os.path.join(root, candidates[max(upto or candidates)]) if candidates else None


_TRAINER_KEYS = ("step", "optimizer_groups", "optimizer_scalars")
# What each key of trainer.json holds (a hand-edited one had given tracebacks deep in loading):
# a predicate and the words for it.
_NUMBER = (int, float)
_TRAINER_TYPES = {
    "step": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "optimizer_groups": (lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v), "a list of objects"),
    "optimizer_scalars": (lambda v: isinstance(v, dict) and all(isinstance(x, _NUMBER) for x in v.values()),
                          "an object of numbers"),
    "rng": (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                  and 0 <= x < 2**64 for x in v),
            "[seed, offset], two integers in [0, 2^64)"),
    "best_val": (lambda v: v is None or isinstance(v, _NUMBER), "a number or null"),
    "best_ckpt": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "run_config": (lambda v: isinstance(v, dict), "an object"),
    "parameter_names": (lambda v: isinstance(v, list) and all(isinstance(g, list) and all(isinstance(n, str) for n in g)
                                                              for g in v), "a list of lists of names"),
}


def _parameter_names(model, optimizer, order=None) -> list:
    """The names of the optimizer's parameters, group by group: the order its state_dict numbers
    them in, saved so that a load finds each parameter's state by name. A parameter the model
    does not hold is named by its place ("<group g, k>"). order: a key that reorders each group."""
    names = {p._impl_id(): n for n, p in model.named_parameters()}
    return [[names.get(p._impl_id(), f"<group {g}, {k}>")
             for k, p in enumerate(sorted(group["params"], key=order) if order else group["params"])]
            for g, group in enumerate(optimizer.param_groups)]


def _breadth_first_parameter_names(model, optimizer) -> list:
    """_parameter_names of a checkpoint saved before they were recorded, by an llmscratch whose
    named_parameters walked the modules breadth first: the trainer built its groups in that order,
    so each group holds today's parameters in the order that walk first reached them."""
    rank, seen, queue = {}, set(), [model]
    while queue:
        m = queue.pop(0)
        if id(m) in seen:
            continue
        seen.add(id(m))
        for p in m._parameters.values():
            if p is not None:
                rank.setdefault(p._impl_id(), len(rank))
        queue += [c for c in m._modules.values() if c is not None]
    return _parameter_names(model, optimizer, order=lambda p: rank.get(p._impl_id(), len(rank)))


def _state_by_position(folder, meta, model, optimizer, opt_state: dict) -> tuple:
    """The saved optimizer state renumbered to the optimizer's parameters now, by name, and the
    groups' parameter numbers to match."""
    saved = meta.get("parameter_names") or _breadth_first_parameter_names(model, optimizer)
    now = _parameter_names(model, optimizer)
    if [sorted(g) for g in saved] != [sorted(g) for g in now]:
        raise ValueError(f"checkpoint {folder}: its optimizer state is for other parameters than the model's")
    position = {n: i for i, n in enumerate(n for g in now for n in g)}
    renumbered = {position[n]: opt_state[j] for j, n in enumerate(n for g in saved for n in g) if j in opt_state}
    return renumbered, [[position[n] for n in g] for g in now]


def read_trainer_state(folder: str, required: tuple = ()) -> dict:
    """trainer.json of a checkpoint folder, with the keys loading needs and those `required`; a
    clear error when it is missing or damaged."""
    path = os.path.join(folder, "trainer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: trainer.json is missing")
    meta = read_json(path, f"checkpoint {folder}: trainer.json is corrupt")
    keys = _TRAINER_KEYS + tuple(required)
    missing = [k for k in keys if k not in meta] if isinstance(meta, dict) else list(keys)
    if missing:
        raise ValueError(f"checkpoint {folder}: trainer.json lacks {', '.join(missing)}")
    for key in list(keys) + [k for k in _TRAINER_TYPES if k in meta and k not in keys]:  # optional ones too
        valid, what = _TRAINER_TYPES.get(key, (lambda v: True, ""))
        if not valid(meta[key]):
            raise ValueError(f"checkpoint {folder}: trainer.json's {key} must be {what}, got {meta[key]!r:.60}")
    return meta


def _read_tensors(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: {name} is missing")
    try:
        return load_file(path)
    except SafetensorError as e:
        raise ValueError(f"checkpoint {folder}: {name} is corrupt or incomplete ({e})") from e


def load_checkpoint(folder: str, model, optimizer=None) -> dict:
    """Restore the model (and optimizer) in place; returns the trainer state."""
    meta = read_trainer_state(folder)
    state = {k: from_numpy(v) for k, v in _read_tensors(folder, "model.safetensors").items()}
    own = model.state_dict()
    for key, t in state.items():  # load_state_dict casts, as torch's: a changed dtype is damage here
        if key in own and t.dtype != _stored_dtype(own[key].dtype):
            raise ValueError(f"checkpoint {folder}: model.safetensors holds {key} as {t.dtype}, not the "
                             f"{_stored_dtype(own[key].dtype)} the model saves")
    model.load_state_dict(state)
    if optimizer is not None:
        opt_state = {}
        for key, arr in _read_tensors(folder, "optimizer.safetensors").items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = from_numpy(arr)
        for key, v in meta["optimizer_scalars"].items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        opt_state, numbers = _state_by_position(folder, meta, model, optimizer, opt_state)
        groups = [dict(g, params=ids, **({"betas": tuple(g["betas"])} if "betas" in g else {}))
                  for g, ids in zip(meta["optimizer_groups"], numbers)]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    return meta
