"""The DoRA-adapted AST genre classifier: a frozen AST, DoRA on the top layers' FFN output, an MLP head.

DoRA comes from peft (``use_dora=True``, adapter dropout 0) on ``layers.{i}.mlp.fc2`` for every
encoder layer ``i >= min_layer``. The original recipe's update was ``W + alpha * A B``; peft scales by
``lora_alpha / r``, so ``lora_alpha = alpha * r`` gives the same scale (peft normalises per output
row, the DoRA paper's form).

The frozen prefix (patch embedding and layers below ``start``) and the rest are separable:
``prefix(x, start)`` gives the hidden states after layer ``start``'s (frozen) attention, entering its FFN
where its adapter is, and ``forward_from(h, start)`` finishes the forward from there, so those states can
be cached (all trials share them).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import ASTConfig, ASTModel

from genre_sweep.config import ConfigError
from genre_sweep.errors import GenreSweepError
from genre_sweep.model.ast_layers import attention_half, ffn_half, last_layer_tokens
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.hf_modeling import mlp_head, pooled

log = logging.getLogger(__name__)

# Named configs that are built, randomly initialised, without any download.
NAMED_CONFIGS: dict[str, dict] = {
    # 12 layers like AST-base (so the method's layer ranges apply, docs/method.md), but narrow: tests, demo,
    # CPU benches.
    "tiny": {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 2, "intermediate_size": 64},
    # AST-base's shape with random weights: GPU benchmarks without a download.
    "base-random": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}


# Checkpoints shipped inside the package, by name. ``small``, the embedded default, is genre-sweep's own AST
# (12 layers x 64 wide, 1,024 frames x 128 mel bins) pretrained on generated sounds' attributes, not genre, by
# ``genre-sweep pretrain`` (model/pretrain.py); its pretraining.json says how and what it learnt.
SHIPPED: dict[str, Path] = {"small": Path(__file__).parent / "pretrained" / "small-ast"}


def checkpoint_source(pretrained: str) -> str:
    """Where ``pretrained``'s weights are: a shipped name's folder, else ``pretrained`` itself (hub id or folder)."""
    return str(SHIPPED[pretrained]) if pretrained in SHIPPED else pretrained


class ModelError(GenreSweepError, ValueError):
    """The model can't be built as asked; the message names the setting and the fix."""


class ModelSettingError(ModelError, ConfigError):
    """A training setting this model cannot take (an adapter layer it does not have): the same setting fails again
    however often it is tried, so a sweep's trial does not retry it."""


def fresh_config(frames: int, mel_bins: int, **shape) -> ASTConfig:
    """The config of an AST built here rather than loaded (a named random config, or ``pretrain``'s model):
    ``shape`` (widths, depth, strides) over windows of ``frames`` x ``mel_bins``, without dropout, SDPA attention."""
    return ASTConfig(
        **shape,
        max_length=frames,
        num_mel_bins=mel_bins,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


def backbone_config(pretrained: str, frames: int, mel_bins: int) -> tuple[ASTConfig, str | None]:
    """(config, where to load weights from or None for random init)."""
    if pretrained in NAMED_CONFIGS:
        return fresh_config(frames, mel_bins, **NAMED_CONFIGS[pretrained]), None
    pretrained = checkpoint_source(pretrained)
    if Path(pretrained).exists() and not (Path(pretrained) / "config.json").is_file():
        # transformers 5 returns a default config for such a folder instead of failing
        raise ModelError(f"--pretrained: {pretrained} is a local path but has no AST config.json")
    try:
        if not Path(pretrained).exists() and os.environ.get("HF_HUB_OFFLINE") != "1" and not _hub_reachable():
            raise OSError("the hub is unreachable")  # fail now, not after the hub client's retries
        cfg = ASTConfig.from_pretrained(
            pretrained, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1", attn_implementation="sdpa"
        )
    except OSError as e:
        local = Path(pretrained).exists()
        hint = (
            f"{pretrained} is a local path but has no AST config.json"
            if local
            else f"could not fetch {pretrained!r} from the Hugging Face hub (offline?). Download it once where "
            "there is network: `ASTForAudioClassification.from_pretrained(ID).save_pretrained(DIR)`, copy DIR "
            "here and pass --pretrained DIR"
        )
        raise ModelError(f"--pretrained: {hint}") from e
    if (cfg.max_length, cfg.num_mel_bins) != (frames, mel_bins):
        raise ModelError(
            f"--pretrained {pretrained} expects {cfg.max_length} frames x {cfg.num_mel_bins} mel bins, but the shards "
            f"hold {frames} x {mel_bins}; prepare the data with --frames {cfg.max_length} --mel-bins {cfg.num_mel_bins}"
        )
    return cfg, pretrained


def sequence_length(cfg: ASTConfig) -> int:
    """Tokens per window through the encoder: the patches of the (frames x mel) grid plus CLS and distillation."""
    freq = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
    time = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
    return freq * time + 2


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_backbone(cfg: ASTConfig, source: str | None) -> tuple[ASTModel, nn.LayerNorm]:
    """The backbone and the classifier's LayerNorm: pretrained from ``source``, or random for a named config."""
    head_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    if source is None:
        torch.manual_seed(0)  # a named config is the same random network every time
        return ASTModel(cfg), head_norm
    from transformers import ASTForAudioClassification

    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(source).exists()
    full = ASTForAudioClassification.from_pretrained(source, config=cfg, local_files_only=offline)
    head_norm.load_state_dict(full.classifier.layernorm.state_dict())
    return full.audio_spectrogram_transformer, head_norm


# The last backbone this process loaded, untouched: a Tune actor reused for the next trial (and a retrain seed
# after another) copies it from memory instead of loading the checkpoint again. One entry: a process trains one.
_kept: tuple[tuple[tuple, int], ASTModel, nn.LayerNorm] | None = None
_loads = 0  # checkpoints this process loaded: with the stamp, which load a model's frozen weights were copied from


def _checkpoint_stamp(cfg: ASTConfig, source: str | None) -> tuple:
    """What identifies a backbone's weights: its config, its source and, for a local folder, its files' sizes and
    modification times (a checkpoint rewritten in place, say by ``pretrain --overwrite``, is loaded again)."""
    folder = Path(source) if source is not None else None
    files = (
        tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
        if folder is not None and folder.is_dir()
        else ()
    )
    return cfg.to_json_string(), source, files


def kept_backbone(cfg: ASTConfig, source: str | None) -> tuple[ASTModel, nn.LayerNorm, bool, tuple]:
    """A fresh copy of the backbone and head LayerNorm ``_load_backbone`` gives, whether it came from this
    process's memory (the checkpoint already loaded here) rather than from disk, and the stamp of the checkpoint it
    was loaded from with the load's number (``_checkpoint_stamp``, taken before the load, and ``_loads``): models with
    the same are copies of one load's weights, even where a checkpoint changed upstream under the same stamp."""
    global _kept, _loads
    stamp = _checkpoint_stamp(cfg, source)
    reused = _kept is not None and _kept[0][0] == stamp
    if not reused:
        _kept = None  # free the previous one first
        _loads += 1
        _kept = ((stamp, _loads), *_load_backbone(cfg, source))
    assert _kept is not None
    return copy.deepcopy(_kept[1]), copy.deepcopy(_kept[2]), reused, _kept[0]


class GenreClassifier(nn.Module):
    """AST backbone + DoRA + MLP head; logits (B, n_classes) from fbank windows (B, frames, mel)."""

    def __init__(self, backbone: ASTModel, n_classes: int, adapters: AdapterSettings, head_norm: nn.LayerNorm):
        super().__init__()
        n_layers = backbone.config.num_hidden_layers
        if not 0 <= adapters.min_layer < n_layers:
            raise ModelSettingError(f"encoder_min_layer_to_update {adapters.min_layer} must be in [0, {n_layers - 1}]")
        self.backbone = backbone
        self.adapters = adapters
        self.head_norm = head_norm  # the pretrained classifier's LayerNorm, frozen
        d = backbone.config.hidden_size
        self.head = mlp_head(d, adapters.hidden, n_classes)
        self.backbone_reused = False  # build_model: the backbone was copied from this process's memory
        self.prefix_digests: dict[tuple, str] = {}  # prefix_cache.prefix_weights_digest's, by the weights' versions
        # build_model's: the checkpoint load the frozen weights were copied from, and each frozen tensor's (version,
        # dtype) then
        self.weights_stamp: tuple | None = None
        self.built_versions: dict[str, tuple[int, torch.dtype]] = {}

    @property
    def n_layers(self) -> int:
        return len(self.backbone.layers)

    def prefix(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Hidden states (B, N, D) after the attention half of layer ``start`` (default: the lowest adapted layer),
        i.e. entering its FFN, where its adapter is: everything up to here is frozen."""
        start = self.adapters.min_layer if start is None else start
        h = self.backbone.embeddings(x)  # (B, 2 + patches, D)
        for layer in self.backbone.layers[:start]:
            h = layer(h, None)
        return attention_half(self.backbone.layers[start], h)

    def forward_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the states ``prefix(x, start)`` gives. The last layer computes only the two tokens the head
        reads (``ast_layers.last_layer_tokens``): the same logits, a fraction of that layer's work."""
        last = self.n_layers - 1
        if start == last:
            h = ffn_half(self.backbone.layers[last], h[:, :2])
        else:
            h = ffn_half(self.backbone.layers[start], h)
            for layer in self.backbone.layers[start + 1 : last]:
                h = layer(h, None)
            h = last_layer_tokens(self.backbone.layers[last], h)
        return self.pooled_logits(self.backbone.layernorm(h))

    def pooled_logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the final LayerNorm's output (at least its first two tokens)."""
        return self.head(self.head_norm(pooled(last_hidden)))

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every token through every layer, as the original recipe ran it: the reference that benchmarks
        measure against (``forward`` gives the same logits with less work)."""
        return self.pooled_logits(self.backbone(x).last_hidden_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = self.adapters.min_layer
        with torch.no_grad():  # nothing below the lowest adapter trains
            h = self.prefix(x, start)
        return self.forward_from(h, start)


def dora_config(adapters: AdapterSettings, n_layers: int) -> LoraConfig:
    return LoraConfig(
        r=adapters.rank,
        lora_alpha=adapters.alpha * adapters.rank,
        target_modules=[f"layers.{i}.mlp.fc2" for i in range(adapters.min_layer, n_layers)],
        use_dora=True,
        lora_dropout=0.0,
    )


def build_model(
    pretrained: str, n_classes: int, adapters: AdapterSettings, frames: int, mel_bins: int, seed: int = 0
) -> GenreClassifier:
    """Build the classifier: frozen AST (pretrained or a named random config), DoRA, a fresh MLP head.

    Only the DoRA parameters and the head's linear layers require grad; ``seed`` initialises the head. A process
    loads a checkpoint once (``kept_backbone``): later builds copy it from memory.
    """
    if adapters.rank < 1:
        raise ModelSettingError(f"encoder_update_rank must be >= 1, got {adapters.rank}")
    cfg, source = backbone_config(pretrained, frames, mel_bins)
    backbone, head_norm, reused, stamp = kept_backbone(cfg, source)
    torch.manual_seed(seed)
    model = GenreClassifier(backbone, n_classes, adapters, head_norm)
    model.backbone_reused = reused
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(dora_config(adapters, model.n_layers), model.backbone)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head.") or "lora_" in name)
    model.weights_stamp = stamp
    model.built_versions = {n: (t._version, t.dtype) for n, t in frozen_tensors(model)}
    return model


def frozen_tensors(model: GenreClassifier) -> list[tuple[str, torch.Tensor]]:
    """The backbone's tensors that never train (every one but the adapters'), by name."""
    named = [*model.backbone.named_parameters(), *model.backbone.named_buffers()]
    return [(n, t) for n, t in named if not t.requires_grad]


def untouched(model: GenreClassifier) -> bool:
    """Whether ``model``'s frozen weights are still the checkpoint's that ``build_model`` copied: every frozen tensor
    is there, in its dtype then, and unchanged in place since (torch bumps a tensor's ``_version`` at every in-place
    change, ``copy_`` and ``load_state_dict`` included; moving to another device copies the values exactly). Writes
    through ``.data`` are not seen: the project makes none to frozen weights."""
    if model.weights_stamp is None:
        return False
    now = {n: (t._version, t.dtype) for n, t in frozen_tensors(model)}
    return now == model.built_versions


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (DoRA and head), by name: what a checkpoint holds."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def merge_adapters(model: GenreClassifier) -> GenreClassifier:
    """Fold every DoRA adapter into its base linear layer, in place; the model then has no peft layers."""
    for name, module in list(model.backbone.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(model.backbone.get_submodule(parent_name), child, module.get_base_layer())
    return model
