"""Where the model runs and in what precision: the device helpers every model module shares."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where this process sees a GPU, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; fp32 (no autocast) on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
