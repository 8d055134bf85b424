"""Per-epoch checkpoints without pickle: trainable weights and AdamW state as safetensors, the rest JSON.

A checkpoint folder holds ``trainable.safetensors`` (DoRA + head parameters by name),
``optimizer.safetensors`` (each parameter's AdamW moments and step, by parameter index),
``state.json`` (epoch, scheduler state, metrics history, best epoch) and, when the best epoch is an earlier
one, ``best.safetensors`` (that epoch's trainable weights): a checkpoint alone restores the whole run, in
any folder, as a retried Tune trial does. Loading never unpickles anything.

A checkpoint taken mid-epoch (a trial whose node is being preempted) also holds ``position.safetensors``: the
random state and the epoch's partial loss at that step; its ``state.json`` names the last whole epoch as
``epoch`` and the step reached in the next as ``in_epoch``, and it always keeps the best epoch's weights in
``best.safetensors`` (its ``trainable.safetensors`` are the weights at that step).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genre_sweep.errors import GenreSweepError, one_line
from genre_sweep.store import write_atomic

TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
BEST = "best.safetensors"
POSITION = "position.safetensors"


class CheckpointError(GenreSweepError, ValueError):
    """A checkpoint is missing, incomplete or doesn't fit the model it's loaded into."""


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    best: Path | None = None,
    position: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder; ``state.json`` last, so a folder with it is complete. ``best``: the best
    epoch's ``trainable.safetensors`` when that epoch is not this one, kept in the folder as ``best.safetensors``.
    ``position``: a mid-epoch checkpoint's random state and partial sums, kept as ``position.safetensors``."""
    path.mkdir(parents=True, exist_ok=True)
    if best is not None:
        shutil.copyfile(best, path / BEST)
    if position is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in position.items()}, str(path / POSITION))
    save_file(
        {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
        str(path / TRAINABLE),
    )
    tensors = {}
    for index, per_param in optimizer.state_dict()["state"].items():
        for key, value in per_param.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(path / OPTIMIZER))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    # each group's current hyperparameters (lr above all): a fresh optimizer would start from the initial ones
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    write_atomic(
        path / STATE, json.dumps({**state, "scheduler": sched, "param_groups": groups}, indent=2, sort_keys=True)
    )
    return path


def load_trainable(path: Path, model: nn.Module) -> None:
    """Load a checkpoint's trainable weights; every trainable parameter must be there with its shape."""
    file = Path(path) / TRAINABLE
    if not file.exists():
        raise CheckpointError(f"{path}: no {TRAINABLE}")
    saved = _tensors(file)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or extra:
        raise CheckpointError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(saved[name].shape)}, model {tuple(p.shape)}")
            p.copy_(saved[name])


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; one that is missing or cut off (a full disk, a killed write) is one line."""
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read it ({one_line(e)}); the checkpoint is damaged") from e


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint folder's ``state.json``; one that is not valid JSON is one line."""
    try:
        return json.loads((Path(path) / STATE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{Path(path) / STATE} is not valid JSON ({e}); the checkpoint is damaged") from e


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer and scheduler from ``path``; returns its ``state.json``."""
    path = Path(path)
    if not (path / STATE).exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE})")
    load_trainable(path, model)
    state = read_state(path)
    tensors = _tensors(path / OPTIMIZER)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()["param_groups"]
    saved_groups = state.pop("param_groups")
    if len(saved_groups) != len(current):
        raise CheckpointError(f"{path}: {len(saved_groups)} parameter groups, the optimizer has {len(current)}")
    groups = [{**saved, "params": now["params"]} for saved, now in zip(saved_groups, current, strict=True)]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    sched = scheduler.state_dict()
    sched.update(state.pop("scheduler"))
    scheduler.load_state_dict(sched)
    return state


def load_position(path: Path) -> dict[str, torch.Tensor]:
    """A mid-epoch checkpoint's random state and partial sums (``position.safetensors``)."""
    file = Path(path) / POSITION
    if not file.exists():
        raise CheckpointError(f"{path}: a mid-epoch checkpoint without its {POSITION}; the checkpoint is damaged")
    return _tensors(file)


def restore_best(path: Path, state: dict[str, Any], best_dir: Path) -> None:
    """Put the best epoch's trainable weights, as of checkpoint ``path`` (with its ``state``), in ``best_dir``."""
    path = Path(path)
    if state["best"] is None:  # stopped within the first epoch: no epoch is done yet
        return
    whole = state["best"]["epoch"] == state["epoch"] and "in_epoch" not in state
    source = path / (TRAINABLE if whole else BEST)
    if not source.exists():
        raise CheckpointError(f"{path}: its best epoch ({state['best']['epoch']}) has no weights there ({BEST})")
    best_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, best_dir / TRAINABLE)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete epoch checkpoint of a run, or None."""
    done = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob(f"epoch-*/{STATE}"))
    return done[-1] if done else None
