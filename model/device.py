"""Where the model runs and in what precision: the device helpers every model module shares.

A process that Ray gave a GPU never falls back to the CPU silently: ``resolve_device`` fails at once,
naming the node, the NVIDIA driver and torch's CUDA, unless the CPU was asked for explicitly.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from genre_sweep.errors import GenreSweepError


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
