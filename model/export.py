"""Export and load a trained classifier: one self-contained folder, safetensors only, no download.

The folder holds ``config.json`` (the AST config), ``model.safetensors`` (backbone with DoRA merged
into its weights, the head's LayerNorm and MLP) and ``genre_sweep.json`` (genres, feature settings,
head size); ``load_exported(folder)`` rebuilds the model from them alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ASTConfig, ASTModel

from genre_sweep.data.features import AST_MEAN, AST_STD, SAMPLE_RATE
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import GenreClassifier, ModelError, merge_adapters

WEIGHTS = "model.safetensors"
INFO = "genre_sweep.json"
FORMAT = 1


def export_model(
    model: GenreClassifier, out: Path, genres: tuple[str, ...] | list[str], frames: int, mel_bins: int
) -> Path:
    """Write ``model`` (adapters merged, on a copy) to ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged = merge_adapters(copy.deepcopy(model).cpu().eval())
    merged.backbone.config.to_json_file(str(out / "config.json"))
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(out / WEIGHTS))
    info = {
        "format": FORMAT,
        "genres": list(genres),
        "classifier_hidden_layer_size": model.adapters.hidden,
        "features": {
            "frames": frames,
            "mel_bins": mel_bins,
            "sample_rate": SAMPLE_RATE,
            "mean": AST_MEAN,
            "std": AST_STD,
        },
        "trained_with": {
            "encoder_min_layer_to_update": model.adapters.min_layer,
            "encoder_update_rank": model.adapters.rank,
            "encoder_update_alpha": model.adapters.alpha,
        },
    }
    (out / INFO).write_text(json.dumps(info, indent=2))
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[GenreClassifier, dict[str, Any]]:
    """The exported classifier in eval mode, and its ``genre_sweep.json``; reads only that folder."""
    path = Path(path)
    for name in ("config.json", WEIGHTS, INFO):
        if not (path / name).exists():
            raise ModelError(f"{path} is not an exported genre-sweep model: no {name}")
    info = json.loads((path / INFO).read_text())
    if info.get("format") != FORMAT:
        raise ModelError(f"{path}: export format {info.get('format')} != supported {FORMAT}")
    cfg = ASTConfig.from_pretrained(str(path), attn_implementation="sdpa", local_files_only=True)
    settings = AdapterSettings(
        min_layer=info["trained_with"]["encoder_min_layer_to_update"], hidden=info["classifier_hidden_layer_size"]
    )
    head_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    model = GenreClassifier(ASTModel(cfg), len(info["genres"]), settings, head_norm)
    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    return model.to(device).eval(), info
