"""The frozen-prefix cache: hidden states entering the lowest adapter, computed once, shared by trials.

Every weight below the lowest DoRA adapter (``fc2`` of layer ``start``) is frozen and AST has no dropout,
so the hidden states after layer ``start``'s attention, entering its FFN, are a pure function of (frozen
weights, features). They are computed once per
(dataset, checkpoint, frames, start), kept in bf16 (as raw uint16 bits in numpy, so that a node maps
them from its disk: ``model.node_store.node_prefix``), and each step's forward then starts at layer
``start``'s FFN.

The key hashes the features' dataset identity, the exact prefix weights, and the kind of device and the
precision the states were computed in (bf16 on CUDA, fp32 on the CPU), so states from another checkpoint,
dataset or kind of device are refused, never silently reused. It does not name the splits: a split's states
are the same whichever other splits were loaded, so the retrain reuses the trials' and adds the test's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import numpy as np
import torch

from genre_sweep.errors import GenreSweepError
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.data import SplitArrays, TrainData, as_tensor
from genre_sweep.model.device import autocast, compute_dtype, halving, input_dtype, resolve_device
from genre_sweep.model.dora_ast import GenreClassifier, build_model, sequence_length, untouched

log = logging.getLogger(__name__)


class CacheMismatch(GenreSweepError, ValueError):
    """The cache was built from other weights, another dataset, or for a higher layer."""


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    start: int  # hidden states enter encoder layer ``start``
    key: str
    states: dict[str, np.ndarray]  # split -> (N, tokens, hidden) uint16: bf16 bits

    def split(self, name: str) -> torch.Tensor:
        """A zero-copy bf16 tensor view of one split's states."""
        return as_tensor(self.states[name]).view(torch.bfloat16)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.states.values())


def _prefix_tensors(model: GenreClassifier, start: int) -> list[tuple[str, torch.Tensor]]:
    """Every tensor the prefix up to layer ``start``'s attention uses (embeddings, the layers below it, and that
    layer's first LayerNorm and attention), by name."""
    layer = model.backbone.layers[start]
    parts = (
        [("embeddings", model.backbone.embeddings)]
        + [(f"layers.{i}", layer) for i, layer in enumerate(model.backbone.layers[:start])]
        + [(f"layers.{start}.layernorm_before", layer.layernorm_before), (f"layers.{start}.attention", layer.attention)]
    )
    return [(f"{prefix}.{name}", t) for prefix, module in parts for name, t in sorted(module.state_dict().items())]


# prefix_weights_digest's of untouched models (``dora_ast.untouched``), by (checkpoint load, start): a reused trial
# process builds a new model from the same loaded checkpoint for each trial (``dora_ast.kept_backbone``), and hashes
# its prefix (~300 MB for AST-base) once. Safe: every model of one load holds a copy of that load's very weights
# while untouched (no in-place change, the same dtype), a new load (even of a checkpoint under the same stamp) is
# another key, and a model changed in place, or built otherwise, is hashed as before. A process sees a load or two.
_untouched_digests: dict[tuple, str] = {}
hashes = 0  # how many times this process hashed prefix weights (tests count them)


def prefix_weights_digest(model: GenreClassifier, start: int) -> str:
    """blake2b of every tensor the prefix up to layer ``start``'s attention uses. Computed once per model and weights
    however often it is asked for (a trial asks for its node store's folder, then ``train`` checks): the model keeps
    it with each tensor's address and version, and torch bumps a tensor's ``_version`` at every in-place change, so
    a weight changed since is hashed again (tests/model/test_prefix_cache.py changes some). And once per process for
    the models ``build_model`` builds from one checkpoint, as long as their frozen weights are untouched
    (``_untouched_digests``)."""
    global hashes
    shared = (model.weights_stamp, start) if untouched(model) else None
    if shared is not None and shared in _untouched_digests:
        return _untouched_digests[shared]
    tensors = _prefix_tensors(model, start)
    stamp = (start, tuple((t.data_ptr(), t._version) for _, t in tensors))
    if stamp not in model.prefix_digests:
        hashes += 1
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{type(model.backbone).__name__}:{start}:after-attention".encode())
        for name, t in tensors:
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        model.prefix_digests.clear()  # one set of weights at a time
        model.prefix_digests[stamp] = h.hexdigest()
    if shared is not None:
        _untouched_digests[shared] = model.prefix_digests[stamp]
    return model.prefix_digests[stamp]


def cache_key(
    model: GenreClassifier, data: TrainData, start: int, device: torch.device, dtype: torch.dtype | None = None
) -> str:
    """What the states depend on: the dataset's identity, its window shape, the prefix weights, and where and in what
    precision they are computed (``device``'s type; ``dtype``, by default ``device``'s: bf16 autocast on CUDA, fp32
    on the CPU), whose states differ in their last bits: a store built on the CPU is not used on a GPU, nor back."""
    dtype = compute_dtype(device) if dtype is None else dtype
    ident = f"{data.fingerprint}|{data.frames}x{data.mel_bins}|{start}|{device.type}|{dtype}"
    return hashlib.sha256(f"{ident}|{prefix_weights_digest(model, start)}".encode()).hexdigest()


def state_shape(model: GenreClassifier) -> tuple[int, int]:
    """(tokens, hidden) of one window's states."""
    cfg = model.backbone.config
    return sequence_length(cfg), cfg.hidden_size


@torch.no_grad()
def compute_states(
    model: GenreClassifier,
    split: SplitArrays,
    start: int,
    batch_size: int,
    device: torch.device,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(N, tokens, hidden) bf16 bits (uint16) of the states entering layer ``start``'s FFN for every window, written
    into ``out`` (for example a memory-mapped file) when given, one batch at a time; ``batch_size`` halved on a CUDA
    out-of-memory error (``halving``), from the failed batch on."""
    if len(split) == 0:
        raise CacheMismatch("cannot cache an empty split")
    if out is None:
        out = np.empty((len(split), *state_shape(model)), np.uint16)
    model.eval()
    feats = as_tensor(split.features)
    done = 0  # windows written

    def batches(size: int) -> None:
        nonlocal done
        for i in range(done, len(split), size):
            # a plain copy: non_blocking from pageable (unpinned, maybe memory-mapped) memory gains nothing
            x = feats[i : i + size].to(device).to(input_dtype(device, cached=False))
            with autocast(device):
                h = model.prefix(x, start)
            out[i : i + len(h)] = h.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
            done = i + len(h)

    halving(batches, batch_size, device, "the prefix cache build")
    return out


def build_cache(model: GenreClassifier, data: TrainData, start: int, device: torch.device, batch_size: int = 32):
    """States entering layer ``start``'s FFN for every loaded split of ``data``, with their key."""
    if not 0 <= start <= model.adapters.min_layer:
        raise CacheMismatch(f"cache start {start} must be in [0, {model.adapters.min_layer}] (the lowest adapter)")
    began = time.perf_counter()
    model = model.to(device)
    states = {name: compute_states(model, split, start, batch_size, device) for name, split in data.splits.items()}
    cache = PrefixCache(start, cache_key(model, data, start, device), states)
    n = sum(len(s) for s in data.splits.values())
    log.info(
        "prefix cache: %d windows entering layer %d's FFN, %.2f GB bf16, built in %.1f s on %s",
        n,
        start,
        cache.nbytes / 1e9,
        time.perf_counter() - began,
        device,
    )
    return cache


def build_for(pretrained: str, data: TrainData, start: int, device: str = "auto") -> PrefixCache:
    """The cache of ``data`` under ``pretrained``'s frozen weights (adapters from layer ``start`` on)."""
    model = build_model(pretrained, len(data.genres), AdapterSettings(min_layer=start), data.frames, data.mel_bins)
    return build_cache(model, data, start, resolve_device(device))


def check_cache(cache: PrefixCache, model: GenreClassifier, data: TrainData, device: torch.device) -> None:
    """Refuse a cache that isn't exactly this dataset's states under this model's frozen prefix, computed on a
    ``device`` of this type and precision (the one about to train on it)."""
    if cache.start > model.adapters.min_layer:
        raise CacheMismatch(
            f"the cache holds states entering layer {cache.start}'s FFN, above this model's lowest adapter "
            f"{model.adapters.min_layer}"
        )
    if cache.key != cache_key(model, data, cache.start, device):
        raise CacheMismatch(
            "the prefix cache was built from other weights or another dataset, or on another kind of device or "
            f"precision than {device.type}'s (its key differs); rebuild it"
        )
    for name, split in data.splits.items():
        if len(split) and (name not in cache.states or len(cache.states[name]) != len(split)):
            raise CacheMismatch(f"the prefix cache holds no states for all {len(split)} windows of split {name!r}")
