"""Export and load a trained classifier: one self-contained folder, safetensors only, no download.

The folder is a Hugging Face model folder as the Hub has them, as well as ours, and names nothing of the
machine that wrote it (``push_to_hub`` needs nothing else):

- ``README.md``: the model card (``model.card``): metadata for the Hub, labels, results with their split,
  seeds and interval, the training data and its fingerprint, the limits, and how to use it;
- ``config.json``: the AST config with ``id2label`` (the genres), the head's size, windows per song, an
  ``auto_map`` naming ``modeling_genre_sweep.py`` (a copy of ``model/hf_modeling.py``), so that
  ``AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)`` builds our classifier,
  and ``custom_pipelines`` naming ``pipeline_genre_sweep.py`` (a copy of ``model/hf_pipeline.py``), so that
  ``pipeline("audio-classification", model=folder, trust_remote_code=True)`` votes over a whole song's
  windows as ``predict`` does;
- ``model.safetensors``: the backbone with DoRA merged into its weights, the head's LayerNorm and MLP;
- ``preprocessor_config.json``: ``ASTFeatureExtractor``'s settings for our features (16 kHz, the mel bins,
  the window length, AudioSet's mean and std);
- ``genre_sweep.json``: genres, feature settings, head size and adapter settings, for ``load_exported``;
- ``adapter/``: the DoRA adapter, unmerged, as peft saves a ``PeftModel`` of our Hugging Face class: its
  ``adapter_config.json`` names the base as the user named it (a Hub id, or a name such as ``small``; a
  local folder by its name alone) and lists the head (``head_norm``, ``head``) in ``modules_to_save``, so
  ``PeftModel.from_pretrained(base, folder, subfolder="adapter")`` over the base checkpoint is the whole
  classifier.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

from genre_sweep.data.features import AST_MEAN, AST_STD, SAMPLE_RATE
from genre_sweep.errors import one_line
from genre_sweep.model.card import CardFacts, model_card
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import NAMED_CONFIGS, SHIPPED, GenreClassifier, ModelError, dora_config, merge_adapters
from genre_sweep.model.hf_modeling import GenreSweepASTConfig, GenreSweepASTForAudioClassification
from genre_sweep.model.hf_pipeline import SONG_WINDOWS, SongGenrePipeline

WEIGHTS = "model.safetensors"
INFO = "genre_sweep.json"
MODELING = "modeling_genre_sweep.py"
PIPELINE = "pipeline_genre_sweep.py"
ADAPTER = "adapter_model.safetensors"
FORMAT = 2
BACKBONE = "audio_spectrogram_transformer."  # the backbone's prefix in the Hugging Face model
HEAD = ("head_norm", "head")  # the classifier's modules outside the backbone: peft's modules_to_save
PEFT_PREFIX = "base_model.model."  # where peft's saved keys start
OURS = ("classifier_hidden_layer_size", "song_windows", "custom_pipelines")  # config.json's keys beyond AST's


def hf_config(model: GenreClassifier, genres: list[str]) -> GenreSweepASTConfig:
    """The Hugging Face config of ``model``: its backbone's, plus the head, the labels and the folder's code."""
    values = model.backbone.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "id2label", "label2id", "transformers_version", *OURS):
        values.pop(key, None)
    values.pop("_name_or_path", None)  # where the base was read from: a path of this machine
    stem = MODELING.removesuffix(".py")
    return GenreSweepASTConfig(
        **values,
        classifier_hidden_layer_size=model.adapters.hidden,
        song_windows=SONG_WINDOWS,
        id2label=dict(enumerate(genres)),
        label2id={g: i for i, g in enumerate(genres)},
        architectures=[GenreSweepASTForAudioClassification.__name__],
        auto_map={
            "AutoConfig": f"{stem}.{GenreSweepASTConfig.__name__}",
            "AutoModelForAudioClassification": f"{stem}.{GenreSweepASTForAudioClassification.__name__}",
        },
        custom_pipelines={
            "audio-classification": {
                "impl": f"{PIPELINE.removesuffix('.py')}.{SongGenrePipeline.__name__}",
                "pt": ["AutoModelForAudioClassification"],
                "tf": [],
                "type": "audio",
            }
        },
    )


def save_feature_extractor(out: Path, frames: int, mel_bins: int) -> None:
    """``preprocessor_config.json``: ``ASTFeatureExtractor`` set to our features (16 kHz, ``mel_bins``, windows of
    ``frames``, AudioSet's mean and std), so a pipeline computes exactly what ``prepare`` stores."""
    ASTFeatureExtractor(
        sampling_rate=SAMPLE_RATE, num_mel_bins=mel_bins, max_length=frames, mean=AST_MEAN, std=AST_STD
    ).save_pretrained(out)


def portable_base(base: str | None) -> str | None:
    """How the adapter names its base: a Hub id or one of genre-sweep's names as given; a local folder by its
    name alone (its path is this machine's)."""
    if base is None or base in SHIPPED or base in NAMED_CONFIGS or not Path(base).exists():
        return base
    return Path(base).resolve().name


def save_adapter(model: GenreClassifier, out: Path, base: str | None) -> None:
    """The DoRA adapter of ``model``'s backbone and its head, as peft saves a PeftModel of our Hugging Face class
    with ``modules_to_save`` = the head (``base``: the checkpoint the model was trained on)."""
    out.mkdir(parents=True, exist_ok=True)
    config = dora_config(model.adapters, model.n_layers)
    config.base_model_name_or_path = portable_base(base)
    config.modules_to_save = list(HEAD)
    config.task_type = "SEQ_CLS"  # peft's type for a classifier: PeftModel.from_pretrained gives its class for one
    config.save_pretrained(str(out))
    state = get_peft_model_state_dict(model.backbone)  # keys as in the backbone: "encoder.layers.10..."
    adapter = {PEFT_PREFIX + BACKBONE + k: v for k, v in state.items()}
    head = {PEFT_PREFIX + k: v for k, v in model.state_dict().items() if k.startswith(tuple(m + "." for m in HEAD))}
    save_file({k: v.detach().cpu().contiguous() for k, v in {**adapter, **head}.items()}, str(out / ADAPTER))


def export_model(
    model: GenreClassifier,
    out: Path,
    genres: tuple[str, ...] | list[str],
    frames: int,
    mel_bins: int,
    base: str | None = None,
    card: CardFacts | None = None,
) -> Path:
    """Write ``model`` (adapters merged, on a copy) to ``out``, with its adapter apart under ``out/adapter``
    (``base``: the checkpoint it was trained on) and its model card (``card``: what it says beyond the folder's
    files); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genres = list(genres)
    if hasattr(model.backbone, "peft_config"):  # not for a model loaded from an export: its adapters are merged
        save_adapter(model, out / "adapter", base)
    merged = merge_adapters(copy.deepcopy(model).cpu().eval())
    hf_config(model, genres).save_pretrained(out)
    weights = {
        (BACKBONE + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v.contiguous()
        for k, v in merged.state_dict().items()
    }
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(Path(__file__).with_name("hf_modeling.py"), out / MODELING)
    shutil.copyfile(Path(__file__).with_name("hf_pipeline.py"), out / PIPELINE)
    save_feature_extractor(out, frames, mel_bins)
    info = {
        "format": FORMAT,
        "genres": genres,
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
    card_text = model_card(card or CardFacts(), base, genres, frames, SONG_WINDOWS, portable_base(base))
    (out / "README.md").write_text(card_text)
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[GenreClassifier, dict[str, Any]]:
    """The exported classifier in eval mode, and its ``genre_sweep.json``; reads only that folder.

    A folder that is not whole or not consistent (a file missing, cut off or not ours; labels that disagree with
    each other or with the head; weights of another shape) is refused in one line naming the file: ``predict``
    and the Hugging Face pipeline must never name different genres for one output."""
    path = Path(path)
    for name in ("config.json", WEIGHTS, INFO):
        if not (path / name).exists():
            raise ModelError(f"{path} is not an exported genre-sweep model: no {name}")
    info, values = _read_json(path / INFO), _read_json(path / "config.json")
    if info.get("format") not in (1, FORMAT):
        raise ModelError(f"{path}: export format {info.get('format')} is not one of the supported 1, {FORMAT}")
    try:
        genres = info["genres"]
        if not isinstance(genres, list) or len(genres) < 2 or len(set(genres)) != len(genres):
            raise ValueError(f"genres must be two or more distinct names, got {genres!r}")
        settings = AdapterSettings(
            min_layer=info["trained_with"]["encoder_min_layer_to_update"], hidden=info["classifier_hidden_layer_size"]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path / INFO}: not an export's settings ({type(e).__name__}: {one_line(e)})") from e
    labels = values.get("id2label")
    if not isinstance(labels, dict) or {str(k): v for k, v in labels.items()} != {
        str(i): g for i, g in enumerate(genres)
    }:
        raise ModelError(
            f"{path / 'config.json'}: its id2label {labels} disagrees with the genres of {INFO} {genres}; "
            "the export was altered, and predict and the Hugging Face pipeline would name different genres"
        )
    for key in ("model_type", "architectures", "auto_map", "transformers_version", *OURS):
        values.pop(key, None)
    try:
        cfg = ASTConfig(**values, attn_implementation="sdpa")
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path / 'config.json'}: not an AST config ({one_line(e)})") from e
    head_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    model = GenreClassifier(ASTModel(cfg), len(genres), settings, head_norm)
    try:
        stored = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path / WEIGHTS}: cannot read the weights ({one_line(e)}); the file is damaged") from e
    weights = {("backbone." + k.removeprefix(BACKBONE) if k.startswith(BACKBONE) else k): v for k, v in stored.items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"{path / WEIGHTS} does not fit the model its config.json and {INFO} describe ({len(genres)} genres): "
            f"{' '.join(str(e).split()).removeprefix('Error(s) in loading state_dict for GenreClassifier: ')[:300]}"
        ) from e
    return model.to(device).eval(), info


def _read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{file}: not valid JSON ({one_line(e)}); the export is damaged") from e
    if not isinstance(value, dict):
        raise ModelError(f"{file}: expected a JSON object, got {type(value).__name__}; the export is damaged")
    return value
