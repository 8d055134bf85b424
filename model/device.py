"""Where the model runs and in what precision: the device helpers every model module shares.

A process that Ray gave a GPU never falls back to the CPU silently: ``resolve_device`` fails at once,
naming the node, the NVIDIA driver and torch's CUDA, unless the CPU was asked for explicitly.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch

from genre_sweep.errors import GenreSweepError

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeviceError(GenreSweepError, RuntimeError):
    """The device asked for (or the GPU Ray reserved) cannot be used; the message names the node and versions."""


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray reserved for this process: empty outside a Ray task or actor, or without a GPU reservation."""
    ray = sys.modules.get("ray")  # a process Ray started has imported it; anything else got no GPU from Ray
    if ray is None or not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_gpu_ids()]


def driver_version() -> str | None:
    """The NVIDIA driver's version on this machine, or None where there is none."""
    version_file = Path("/proc/driver/nvidia/version")
    if version_file.exists():
        for word in version_file.read_text().split():
            if word[:1].isdigit() and "." in word:
                return word
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _no_cuda(asked: str, gpus: list[str]) -> DeviceError:
    reserved = f"Ray reserved GPU {','.join(gpus)} for it" if gpus else f"--device {asked} asks for it"
    return DeviceError(
        f"node {platform.node()} cannot use CUDA although {reserved}: NVIDIA driver "
        f"{driver_version() or 'not found'}, torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'} "
        "(torch 2.11 needs a driver for CUDA 13); fix the node's driver or image, or pass --device cpu "
        "to run on CPUs on purpose"
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where this process sees a GPU, else the CPU; ``cpu`` and ``cuda[:N]`` as torch names them.

    Raises DeviceError where CUDA is asked for, or where Ray reserved a GPU for this process, but torch
    cannot use CUDA: such a run would hold the GPU and train about 100x slower on the CPU.
    """
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    gpus = ray_gpu_ids()
    if name != "auto" or gpus:
        raise _no_cuda(name, gpus)
    return torch.device("cpu")


def describe(device: torch.device) -> dict[str, Any]:
    """Where a run ran: the device, and on CUDA the GPU's name and the CUDA and driver versions."""
    facts: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        facts |= {
            "gpu_name": torch.cuda.get_device_name(device),
            "cuda_version": torch.version.cuda,
            "driver_version": driver_version(),
        }
    return facts


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; fp32 (no autocast) on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def input_dtype(device: torch.device, cached: bool) -> torch.dtype:
    """What a batch enters the model as. On CUDA, features in bf16: autocast casts them to bf16 for the patch
    embedding anyway, so the values are the same, without an fp32 copy; cached states in fp32, as they enter the
    residual stream, which stays fp32 as in the uncached forward. On the CPU (no autocast), fp32."""
    return torch.bfloat16 if device.type == "cuda" and not cached else torch.float32


def compute_dtype(device: torch.device) -> torch.dtype:
    """The precision the model computes in on ``device`` (``autocast``): bf16 on CUDA, fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def gpu_fraction() -> float:
    """The share of a GPU Ray gave this process (a trial's ``--gpus-per-trial``, say 0.5); 1.0 outside Ray's tasks
    and actors, or where Ray says nothing (a whole GPU, or more, counts as one: the memory check is per device)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 1.0
    try:
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU") or 0.0)
    except Exception:  # the driver, or an API change: assume the whole GPU, as outside Ray
        return 1.0
    return min(share, 1.0) if share > 0 else 1.0


def halving(run: Callable[[int], T], batch: int, device: torch.device, what: str) -> T:
    """``run(batch)``, and on a CUDA out-of-memory error ``run`` again with half the batch, down to one; one warning
    line says so once it succeeds. ``run`` may keep its progress between calls (redo only the failed batch onwards).
    On any other device the error is raised, as ``train.Stepper`` does: the CPU's memory is not the GPU's to share."""
    first = batch
    while True:
        try:
            result = run(batch)
            break
        except torch.OutOfMemoryError:
            if device.type != "cuda" or batch <= 1:
                raise
        # here, not in the except clause: the failed batch's tensors are released with the exception
        torch.cuda.empty_cache()
        batch //= 2
    if batch != first:
        log.warning("out of GPU memory in %s: redone with batches of %d (from %d)", what, batch, first)
    return result


def released_task(fn: Callable[..., Any], num_cpus: float, num_gpus: float) -> Any:
    """``fn`` as a Ray task with these resources whose worker process ends after each call (``max_calls=1``), so its
    CUDA context and cached GPU memory go with it: a device check or a retrain never keeps a share of a GPU that
    trials then start on."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_calls=1)(fn)  # .options() refuses max_calls
